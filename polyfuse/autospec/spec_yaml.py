"""What `polyfuse init` prints: the inferred spec as block YAML, with the header and a comment beside
each choice saying why (:mod:`polyfuse.autospec.infer` makes the choices). Loads with ``yaml.safe_load``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from polyfuse.autospec.infer import Inferred, infer


def _scalar(value: Any) -> str:
    """One value in YAML flow style (lists stay on one line)."""
    text = yaml.safe_dump(value, default_flow_style=True, allow_unicode=True, width=1 << 20)
    return text[: -len("\n...\n")] if text.endswith("\n...\n") else text.strip()


def _comment(text: str) -> str:
    return text.replace("\r", " ").replace("\n", " ")


def _render(node: dict, inferred: Inferred, path: tuple, indent: int) -> list[str]:
    pad = " " * indent
    lines = [f"{pad}# {_comment(note)}" for note in inferred.notes.get(path, [])]
    for key, value in node.items():
        here = path + (key,)
        note = inferred.comments.get(here)
        if isinstance(value, dict) and value:
            text = f"{pad}{_scalar(key)}:"
            lines.append(f"{text}  # {_comment(note)}" if note else text)
            lines += _render(value, inferred, here, indent + 2)
        else:
            text = f"{pad}{_scalar(key)}: {_scalar(value)}"
            lines.append(f"{text:<36}  # {_comment(note)}" if note else text)
    return lines


def to_yaml(inferred: Inferred) -> str:
    """The spec as block YAML with the header and a comment beside each choice; loads with safe_load."""
    head = [f"# {_comment(line)}" if line.strip() else "#" for line in inferred.header]
    return "\n".join(head + _render(inferred.spec, inferred, (), 0)) + "\n"


def init_yaml(table_path: str | Path, target: str | None = None, metric: str = "accuracy",
              preset: str = "medium") -> str:
    """What `polyfuse init TABLE [--target COL] [--metric M] [--preset P]` prints."""
    return to_yaml(infer(table_path, target, metric=metric, preset=preset))

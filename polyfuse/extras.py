"""The optional parts of polyfuse and the pip extra that installs each.

The base install is the torch-free runtime; training, serving, pretrained backbones, encryption and
table files are extras. Entry points call :func:`require` first, so a missing extra is named with
the line that installs it instead of surfacing as a bare ModuleNotFoundError deep inside a call.
"""
from __future__ import annotations

import importlib.util
from typing import Iterable

from polyfuse.errors import MissingExtra

# extra -> (its name in messages, the modules whose absence means it is not installed). Only the
# modules every use of the extra needs: export adds onnx, LoRA adds peft, each where it is used.
EXTRAS: dict[str, tuple[str, tuple[str, ...]]] = {
    "train": ("the training extra", ("torch", "safetensors", "pandas", "pyarrow", "sklearn", "matplotlib", "tqdm")),
    "serve": ("the serving extra", ("fastapi", "uvicorn", "prometheus_client")),
    "hf": ("the pretrained-models extra", ("transformers", "huggingface_hub")),
    "crypto": ("the encryption extra", ("cryptography",)),
    "tables": ("the tables extra", ("pandas", "pyarrow", "tqdm")),
    "jieba": ("the jieba extra", ("jieba",)),
    "ray": ("the Ray extra", ("ray",)),
    "video": ("the video extra", ("av",)),
    "edge": ("the edge extra", ("torch", "torch_pruning")),
    "experiments": ("the experiments extra", ("optuna", "mlflow")),
}


def missing(modules: Iterable[str]) -> list[str]:
    """The modules of ``modules`` that are not installed (found without importing them)."""
    return [m for m in modules if importlib.util.find_spec(m) is None]


def require(extra: str, what: str, modules: Iterable[str] | None = None, hint: str = "") -> None:
    """Raise :class:`MissingExtra` when ``what`` (a command or function, as the user called it) cannot
    run because a module of ``extra`` is absent; ``modules`` replaces the extra's default list."""
    label, default = EXTRAS[extra]
    absent = missing(default if modules is None else modules)
    if absent:
        raise MissingExtra(f"{what} needs {label}: pip install 'polyfuse[{extra}]' (missing: {', '.join(absent)})"
                           + (f"; {hint}" if hint else ""))

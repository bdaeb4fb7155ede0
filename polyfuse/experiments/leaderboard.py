"""`polyfuse leaderboard DIR`: every model directory under DIR in one table — scores, time, size, latency —
ranked by the validation score (the test score is shown, never used to choose), the best marked.

Reads only what each artifact already holds (spec.yaml, metrics.json, exports.json, manifest.json and a
tune trial's tune_trial.json): nothing is loaded or run.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import yaml

from polyfuse.errors import PolyfuseError
from polyfuse.evaluate.metrics import headline

MAX_DEPTH = 3


def artifacts(root: Path) -> list[Path]:
    """Model directories under ``root`` (itself included), at most MAX_DEPTH folders down, hidden ones skipped."""
    found, frontier = [], [root]
    for _ in range(MAX_DEPTH + 1):
        nxt = []
        for folder in frontier:
            if (folder / "manifest.json").is_file() and (folder / "metrics.json").is_file():
                found.append(folder)
                continue
            nxt += [p for p in sorted(folder.iterdir()) if p.is_dir() and not p.name.startswith(".")]
        frontier = nxt
    return found


def row(folder: Path, root: Path) -> dict[str, Any]:
    """One model's line: its first output's headline on valid/test, the baseline's, seconds, MB, ms."""
    metrics = json.loads((folder / "metrics.json").read_text())
    spec = yaml.safe_load((folder / "spec.yaml").read_text()) or {}
    name, out = next(iter(spec.get("outputs", {}).items()), ("", {}))
    metric = headline(SimpleNamespace(type=out.get("type", "category")))

    def score(split: str) -> float | None:
        value = metrics.get(split, {}).get("outputs", {}).get(name, {}).get(metric)
        return round(float(value), 4) if value is not None else None

    base = metrics.get("baseline", {}).get("outputs", {}).get(name, {}).get("all", {})
    files = json.loads((folder / "manifest.json").read_text()).get("files", {})
    weights = sum(v.get("bytes", 0) for k, v in files.items() if k.startswith("weights") and k.endswith(".safetensors"))
    exports = json.loads((folder / "exports.json").read_text()) if (folder / "exports.json").is_file() else {}
    latencies = [e["batch1_ms"] for e in exports.values() if isinstance(e, dict) and "batch1_ms" in e]
    trial = json.loads((folder / "tune_trial.json").read_text()) if (folder / "tune_trial.json").is_file() else {}
    return {"run": str(folder.relative_to(root)) if folder != root else folder.name, "output": name, "metric": metric,
            "valid": score("valid"), "test": score("test"),
            "baseline_valid": round(float(base["valid"][metric]), 4) if metric in base.get("valid", {}) else None,
            "train_seconds": metrics.get("train_seconds"), "weights_mb": round(weights / 2**20, 3),
            "batch1_ms": min(latencies) if latencies else None,
            "params": json.dumps(trial.get("params"), sort_keys=True) if trial.get("params") else ""}


def leaderboard(root: str | Path, sort: str = "valid") -> list[dict[str, Any]]:
    """Rows for every model under ``root``, best first by ``sort`` (a column; scores descend, the rest ascend)."""
    root = Path(root)
    if not root.is_dir():
        raise PolyfuseError(f"{root}: no such folder; give a folder of runs (e.g. runs/ or a `polyfuse tune --out` folder)")
    rows = [row(f, root) for f in artifacts(root)]
    if not rows:
        raise PolyfuseError(f"{root}: no model directories in it (folders with manifest.json and metrics.json, "
                            f"at most {MAX_DEPTH} levels down)")
    if sort not in rows[0]:
        raise PolyfuseError(f"cannot sort by {sort!r}; columns: {', '.join(rows[0])}")
    descending = sort in ("valid", "test", "baseline_valid")
    present = [r for r in rows if r[sort] is not None]
    present.sort(key=lambda r: r[sort], reverse=descending)
    ranked = present + [r for r in rows if r[sort] is None]
    best = max((r["valid"] for r in ranked if r["valid"] is not None), default=None)
    for r in ranked:  # the best by validation score, whatever the sort
        r["best"] = "*" if best is not None and r["valid"] == best else ""
    return ranked


def write_csv(rows: list[dict[str, Any]], path: str | Path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def render(rows: list[dict[str, Any]]) -> str:
    """A Markdown table (the params column last, it can be long)."""
    cols = ["best", "run", "metric", "valid", "test", "baseline_valid", "train_seconds", "weights_mb", "batch1_ms", "params"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join("-" if r[c] is None else str(r[c]) for c in cols) + " |")
    return "\n".join(lines)

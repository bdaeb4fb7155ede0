"""`polyfuse init`: guess a spec from a table's columns (file extensions, dtypes, cardinality)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from polyfuse.io import is_missing, read_table

IMAGE_EXT = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
AUDIO_EXT = {".wav", ".flac", ".ogg", ".mp3"}
TARGET_NAMES = ("label", "target", "y", "class", "outcome")
GROUP_NAMES = ("speaker", "subject", "patient", "user", "group", "session", "participant")
ID_NAMES = ("id", "uid", "row_id", "index")


def _kind(values: list, n_rows: int) -> str:
    sample = [v for v in values if not is_missing(v)][:200]
    if not sample:
        return "empty"
    if all(isinstance(v, str) for v in sample):
        ext = {Path(v).suffix.lower() for v in sample}
        if ext <= IMAGE_EXT:
            return "image"
        if ext <= AUDIO_EXT:
            return "audio"
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in sample):
        distinct = len(set(values))
        return "category" if distinct <= 20 and all(float(v).is_integer() for v in sample) and distinct < n_rows / 5 else "number"
    distinct = len({str(v) for v in values if not is_missing(v)})
    mean_words = sum(len(str(v).split()) for v in sample) / len(sample)
    return "category" if distinct <= max(20, n_rows // 20) and mean_words <= 2 else "text"


def guess_spec(table_path: str | Path) -> dict[str, Any]:
    """A spec dict for the table: inputs by column kind, the target by name (else the last column)."""
    table = read_table(table_path)
    columns = list(table.columns)
    target = next((c for c in columns if c.lower() in TARGET_NAMES), columns[-1])
    group = next((c for c in columns if c.lower() in GROUP_NAMES), None)
    inputs: dict[str, Any] = {}
    for col in columns:
        if col in (target, group) or col.lower() in ID_NAMES:
            continue
        values = table.columns[col]
        kind = _kind(values, len(table))
        name = col if col.isidentifier() else "".join(ch if ch.isalnum() else "_" for ch in col).strip("_") or "input"
        entry: dict[str, Any] = {"type": kind}
        if kind == "empty":
            continue
        if name != col:
            entry["column"] = col
        if kind == "image":
            from PIL import Image

            first = next(v for v in values if not is_missing(v))
            with Image.open(table.folder / first) as img:
                w, h = img.size
                entry.update(size=[min(h, 224), min(w, 224)], channels=1 if img.mode in ("L", "1", "I;16") else 3)
            entry["encoder"] = "cnn"
        elif kind == "audio":
            entry.update(sample_rate=16000, features="mfcc", n_mfcc=40, max_seconds=1.0, encoder="cnn")
        elif kind == "text":
            entry.update(tokenizer="word", max_length=64, encoder="bigru")
        inputs[name] = entry
    target_kind = _kind(table.columns[target], len(table))
    n_classes = len({str(v) for v in table.columns[target] if not is_missing(v)})
    out_type = "number" if target_kind == "number" else ("binary" if n_classes == 2 else "category")
    split: dict[str, Any] = {"valid": 0.1, "seed": 0}
    if group:
        split["group_by"] = group
    return {
        "data": {"train": str(table_path), "split": split},
        "inputs": inputs,
        "fusion": {"method": "concat"},
        "outputs": {target: {"type": out_type}},
        "train": {"epochs": 20, "batch_size": 64, "lr": 1.0e-3, "early_stopping": 5, "seed": 0},
    }

"""Number and category inputs: impute + standardise, and a vocabulary with an unknown bucket."""
from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from polyfuse.errors import BadInputError

UNKNOWN = "<unk>"
# float32 holds up to 3.4e38; beyond it a number becomes inf inside the network and the answer NaN
LARGEST = float(np.finfo(np.float32).max)
# standardised values are clipped here so that an extreme outlier cannot overflow a layer into inf
CLIP_STD = 1e4


def _shape(value: Any) -> str:
    """A cell described without its content: type and length."""
    if isinstance(value, str):
        return f"text of {len(value)} characters"
    return f"a value of type {type(value).__name__}"


def decode_number(value: Any, cfg: Any, folder: Path, budget: Any = None) -> float:
    """Parse one numeric cell; text that is not a number is a bad value."""
    if isinstance(value, bool):
        return float(value)
    try:
        number = float(value)
    except (TypeError, ValueError):
        # the cell's content is not echoed: it may be personal data, and bad-row lists reach logs and metrics.json
        raise BadInputError(f"expected a number, got {_shape(value)}; fix the cell or leave it empty") from None
    if math.isinf(number):
        raise BadInputError("expected a finite number, got infinity")
    if abs(number) > LARGEST:
        raise BadInputError(f"number out of range: its magnitude exceeds {LARGEST:.3g}, the largest float32; "
                            "rescale the column (e.g. another unit) or leave the cell empty")
    return number


def fit_number(values: list[float | None], cfg: Any) -> dict:
    """Mean/std for standardising, and the imputation value for missing cells."""
    arr = np.asarray([v for v in values if v is not None and not math.isnan(v)], dtype=np.float64)
    if arr.size == 0:
        return {"mean": 0.0, "std": 1.0, "impute": 0.0}
    impute = {"mean": arr.mean(), "median": np.median(arr), "zero": 0.0}[cfg.impute]
    return {"mean": float(arr.mean()), "std": float(arr.std()) or 1.0, "impute": float(impute)}


def collate_number(values: list[float | None], cfg: Any, state: dict, train: bool, rng: Any) -> dict[str, np.ndarray]:
    present = np.asarray([v is not None and not math.isnan(v) for v in values], dtype=bool)
    raw = np.asarray([v if p else state["impute"] for v, p in zip(values, present)], dtype=np.float32)
    x = np.clip((raw.astype(np.float64) - state["mean"]) / state["std"], -CLIP_STD, CLIP_STD).astype(np.float32)
    aug = getattr(cfg, "augment", None)
    if train and rng is not None and aug is not None:  # training only: learn to cope with absent/noisy values
        if aug.noise:
            x = x + rng.normal(0.0, aug.noise, x.shape).astype(np.float32)
        if aug.drop:
            present = present & (rng.random(len(values)) >= aug.drop)
            x = np.where(present, x, np.float32((state["impute"] - state["mean"]) / state["std"]))
    return {"": x.astype(np.float32)[:, None], "present": present}


def decode_category(value: Any, cfg: Any, folder: Path, budget: Any = None) -> str:
    """Categories are compared as strings, so 3 and "3" are the same level."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).strip()


def fit_category(values: list[str | None], cfg: Any) -> dict:
    counts = Counter(v for v in values if v is not None)
    kept = sorted((v for v, c in counts.items() if c >= cfg.min_count), key=lambda v: (-counts[v], v))
    return {"vocab": [UNKNOWN] + kept[: max(0, cfg.max_vocab - 1)]}


def collate_category(values: list[str | None], cfg: Any, state: dict, train: bool, rng: Any) -> dict[str, np.ndarray]:
    index = state.get("_index")
    if index is None:
        index = state["_index"] = {v: i for i, v in enumerate(state["vocab"])}
    x = np.asarray([index.get(v, 0) if v is not None else 0 for v in values], dtype=np.int64)
    return {"": x, "present": np.asarray([v is not None for v in values], dtype=bool)}


def never_augments(cfg: Any) -> bool:
    return False


def number_augments(cfg: Any) -> bool:
    return bool(cfg.augment.drop or cfg.augment.noise)

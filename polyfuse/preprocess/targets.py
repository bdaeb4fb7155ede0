"""Output columns: class lists for category/binary/multilabel, standardisation for numbers."""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from polyfuse.data.io import is_missing
from polyfuse.errors import BadInputError
from polyfuse.preprocess.tabular import decode_category, decode_number

MODALITY_WEIGHTS = "_modality_weights"  # gated fusion's extra graph output: per-record input weights

_POSITIVE = {"1", "true", "yes", "y", "positive", "pos"}


def _natural(values: set[str]) -> list[str]:
    """Sort numerically when every class looks like a number, else alphabetically."""
    try:
        return sorted(values, key=float)
    except ValueError:
        return sorted(values)


def decode(value: Any, cfg: Any) -> Any:
    """Parse one target cell; raises BadInputError when it is missing or malformed."""
    if is_missing(value):
        raise BadInputError("the target value is missing; fill it in or drop the row")
    if cfg.type == "number":
        return decode_number(value, cfg, None)
    if cfg.type == "multilabel":
        if isinstance(value, (list, tuple, np.ndarray)):
            return sorted({decode_category(v, cfg, None) for v in value})
        return sorted({p.strip() for p in str(value).split(cfg.separator) if p.strip()})
    return decode_category(value, cfg, None)


def fit(values: list[Any], cfg: Any) -> dict:
    """Fitted state of one output from its training values."""
    if cfg.type == "number":
        arr = np.asarray(values, dtype=np.float64)
        return {"mean": float(arr.mean()), "std": float(arr.std()) or 1.0}
    if cfg.type == "multilabel":
        return {"classes": _natural({c for v in values for c in v})}
    classes = _natural(set(values))
    if cfg.type == "binary":
        if len(classes) > 2:
            raise BadInputError(f"a binary output needs at most 2 distinct values, found {len(classes)}: {classes[:5]}")
        positive = [c for c in classes if c.lower() in _POSITIVE]
        if positive:
            classes = [c for c in classes if c != positive[0]] + positive[:1]
    return {"classes": classes}


def encode(values: list[Any], cfg: Any, state: dict) -> np.ndarray:
    """Training targets: class ids (category), 0/1 (binary), multi-hot, or standardised numbers."""
    if cfg.type == "number":
        return ((np.asarray(values, dtype=np.float64) - state["mean"]) / state["std"]).astype(np.float32)
    index = {c: i for i, c in enumerate(state["classes"])}
    if cfg.type == "multilabel":
        out = np.zeros((len(values), len(index)), dtype=np.float32)
        for i, labels in enumerate(values):
            for c in labels:
                if c in index:
                    out[i, index[c]] = 1.0
        return out
    unknown = [v for v in values if v not in index]
    if unknown:
        raise BadInputError(f"label {unknown[0]!r} was not seen in training (known: {state['classes'][:10]})")
    ids = np.asarray([index[v] for v in values], dtype=np.int64)
    return ids.astype(np.float32) if cfg.type == "binary" else ids


def check_value(value: Any, cfg: Any, state: dict) -> Any:
    """Decode and check one target for evaluation (unknown classes are bad values)."""
    decoded = decode(value, cfg)
    if cfg.type in ("category", "binary") and decoded not in state["classes"]:
        raise BadInputError(f"label {decoded!r} was not seen in training (known: {state['classes'][:10]})")
    if cfg.type == "number" and math.isnan(decoded):
        raise BadInputError("the target value is missing; fill it in or drop the row")
    return decoded


def decode_outputs(spec: Any, state: dict, probs: dict[str, np.ndarray]) -> dict[str, list]:
    """Head outputs -> labels (category/binary), 'a|b' label sets (multilabel) or numbers."""
    out: dict[str, list] = {}
    for name, cfg in spec.outputs.items():
        s, p = state[name], probs[name]
        if cfg.type == "number":
            out[name] = (p * s["std"] + s["mean"]).tolist()
        elif cfg.type == "multilabel":
            out[name] = [cfg.separator.join(c for c, on in zip(s["classes"], row) if on) for row in p >= 0.5]
        else:
            labels = [s["classes"][i] for i in p.argmax(-1)]
            if cfg.abstain_below is not None:  # better no answer than a confident-looking guess
                labels = [None if top < cfg.abstain_below else label for label, top in zip(labels, p.max(-1))]
            out[name] = labels
    return out

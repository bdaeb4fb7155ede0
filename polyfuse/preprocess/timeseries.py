"""Sensor time series: decode (file or inline array), resample, window, standardise, gap masks.

numpy only (Parquet files need pyarrow, imported when one is read): the torch-free runtime
imports this. A decoded value is float32 [steps, channels] at the output rate, NaN where the
data has a gap. ``collate`` turns gaps into the channel mean (0 after standardising) and marks
them in a per-step ``mask``; the encoders pool over unmasked steps only.
"""
from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import numpy as np

from polyfuse.errors import BadInputError
from polyfuse.preprocess.budget import UNLIMITED, DecodeBudget

FILE_SUFFIXES = (".csv", ".npy", ".parquet", ".pq")


# ----------------------------------------------------------------------------- reading
def _cell(text: str, label: str, line: int) -> float:
    text = text.strip()
    if not text or text.lower() in ("nan", "na", "null", "none"):
        return np.nan
    try:
        return float(text)
    except ValueError:
        raise BadInputError(f"{label} has a non-numeric value {text[:30]!r} on line {line}; "
                            "expected numbers (empty cells are gaps)") from None


def _read_csv(data: str, cfg: Any, label: str) -> np.ndarray:
    """Rows = steps; a first row that is not numeric is a header (needed when channels are named)."""
    rows = list(csv.reader(io.StringIO(data)))
    rows = [r for r in rows if any(c.strip() for c in r)]
    if not rows:
        raise BadInputError(f"{label} is empty; expected rows of readings")
    header = None
    try:
        [float(c) for c in rows[0] if c.strip()]
    except ValueError:
        header, rows = [c.strip() for c in rows[0]], rows[1:]
    if len(rows) > cfg.max_steps:
        raise BadInputError(f"{label} has {len(rows)} steps, over the limit of {cfg.max_steps} (max_steps)")
    cols = None
    if isinstance(cfg.channels, list):
        if header is None:
            raise BadInputError(f"{label} has no header row, but channels name columns {cfg.channels}")
        missing = [c for c in cfg.channels if c not in header]
        if missing:
            raise BadInputError(f"{label} lacks the columns {missing} (it has {header})")
        cols = [header.index(c) for c in cfg.channels]
    out = []
    width = len(header) if header is not None else len(rows[0]) if rows else 0
    for i, r in enumerate(rows):
        if len(r) < width:
            r = r + [""] * (width - len(r))
        picked = [r[j] for j in cols] if cols is not None else r[:width]
        out.append([_cell(c, label, i + 1 + (header is not None)) for c in picked])
    return np.asarray(out, dtype=np.float32).reshape(len(out), -1)


def _read_parquet(source: Path | bytes, cfg: Any, label: str) -> np.ndarray:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(io.BytesIO(source) if isinstance(source, bytes) else source)
    except Exception as e:  # pyarrow raises several types for a file that is not parquet
        raise BadInputError(f"{label} could not be read as Parquet ({type(e).__name__}: {e})") from None
    if pf.metadata.num_rows > cfg.max_steps:
        raise BadInputError(f"{label} has {pf.metadata.num_rows} steps, over the limit of {cfg.max_steps} (max_steps)")
    names = pf.schema_arrow.names
    if isinstance(cfg.channels, list):
        missing = [c for c in cfg.channels if c not in names]
        if missing:
            raise BadInputError(f"{label} lacks the columns {missing} (it has {names})")
        names = list(cfg.channels)
    table = pf.read(columns=names)
    try:
        cols = [np.asarray(table.column(n).to_numpy(zero_copy_only=False), dtype=np.float32) for n in names]
    except (ValueError, TypeError):
        raise BadInputError(f"{label} has non-numeric columns ({table.schema}); expected numbers") from None
    return np.stack(cols, axis=1) if cols else np.zeros((0, 0), np.float32)


def _read_npy(source: Path | bytes, cfg: Any, label: str) -> np.ndarray:
    try:
        arr = np.load(io.BytesIO(source) if isinstance(source, bytes) else source, mmap_mode=None
                      if isinstance(source, bytes) else "r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise BadInputError(f"{label} could not be read as .npy ({e})") from None
    if arr.ndim >= 1 and arr.shape[0] > cfg.max_steps:
        raise BadInputError(f"{label} has {arr.shape[0]} steps, over the limit of {cfg.max_steps} (max_steps)")
    return _as_array(arr, label)


def _as_array(value: Any, label: str) -> np.ndarray:
    try:
        arr = np.asarray(value, dtype=np.float32)
    except (ValueError, TypeError):
        raise BadInputError(f"{label} is not numeric (or its rows differ in length); expected [steps, channels] "
                            "numbers") from None
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2:
        raise BadInputError(f"{label} has shape {list(arr.shape)}; expected [steps] or [steps, channels]")
    return np.array(arr, dtype=np.float32)


def read_series(value: Any, cfg: Any, folder: Path) -> tuple[np.ndarray, str]:
    """The raw float32 [steps, channels] of a cell, and a label naming it for messages."""
    if isinstance(value, np.ndarray) or isinstance(value, (list, tuple)):
        label = "time series array"
        arr = _as_array(value, label)
        if len(arr) > cfg.max_steps:
            raise BadInputError(f"{label} has {len(arr)} steps, over the limit of {cfg.max_steps} (max_steps)")
        return arr, label
    if isinstance(value, str) and value.lstrip().startswith("["):  # a JSON array in a CSV cell
        import json

        try:
            return read_series(json.loads(value), cfg, folder)
        except json.JSONDecodeError:
            raise BadInputError("time series cell looks like a JSON array but does not parse") from None
    from polyfuse.data.io import resolve_media  # local: keeps this module's import light for the runtime

    source = resolve_media(value, folder)
    if isinstance(source, np.ndarray):
        return read_series(source, cfg, folder)
    if isinstance(source, Path):
        label, suffix = f"time series file '{value}'", source.suffix.lower()
    else:
        label = "time series data (bytes)"
        suffix = ".npy" if source[:6] == b"\x93NUMPY" else ".parquet" if source[:4] == b"PAR1" else ".csv"
    if suffix == ".npy":
        return _read_npy(source, cfg, label), label
    if suffix in (".parquet", ".pq"):
        return _read_parquet(source, cfg, label), label
    if suffix not in (".csv", ".txt", ".tsv") and isinstance(source, Path):
        raise BadInputError(f"{label} has an unsupported suffix {suffix!r}; expected .csv, .npy or .parquet")
    raw = source.read_bytes() if isinstance(source, Path) else source
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BadInputError(f"{label} is not a text CSV (not UTF-8); expected .csv, .npy or .parquet") from None
    return _read_csv(text.replace("\t", ","), cfg, label), label


# ----------------------------------------------------------------------------- resampling
def resample(x: np.ndarray, rate: float, to: float) -> np.ndarray:
    """Linear interpolation of [steps, channels] from ``rate`` to ``to`` Hz; a step next to a gap
    (NaN) on the input grid stays a gap."""
    if rate == to or len(x) < 2:
        return x
    n = max(1, int(round((len(x) - 1) * to / rate)) + 1)
    t = np.arange(n) * (rate / to)
    out = np.empty((n, x.shape[1]), dtype=np.float32)
    for c in range(x.shape[1]):
        out[:, c] = np.interp(t, np.arange(len(x)), x[:, c])  # NaN neighbours give NaN
    return out


def decode(value: Any, cfg: Any, folder: Path, budget: DecodeBudget = UNLIMITED) -> np.ndarray:
    """One cell -> float32 [steps, channels] at the output rate, NaN for gaps. Raises BadInputError
    naming the file or array and the reason (empty, non-numeric, wrong channels, too many steps)."""
    arr, label = read_series(value, cfg, folder)
    want = cfg.n_channels
    if arr.shape[0] == 0:
        raise BadInputError(f"{label} is empty (no steps); expected [steps, {want}] readings")
    if arr.shape[1] != want:
        if arr.shape[0] == want and arr.shape[1] > want and not isinstance(value, (str, Path)):
            arr = arr.T  # [channels, steps] given inline
        else:
            raise BadInputError(f"{label} has {arr.shape[1]} channels, expected {want} "
                                f"(shape {list(arr.shape)}; rows are time steps)")
    arr[~np.isfinite(arr)] = np.nan  # infinities are broken readings: gaps
    if np.isnan(arr).all():
        raise BadInputError(f"{label} holds no readings (every value is empty or NaN)")
    budget.charge(arr.nbytes, label)
    return resample(arr, cfg.sample_rate, cfg.resample_to or cfg.sample_rate)


# ----------------------------------------------------------------------------- fitted state, batches
def fit(values: list[np.ndarray | None], cfg: Any) -> dict:
    """Per-channel mean/std over the training series' readings, ignoring gaps."""
    c = cfg.n_channels
    total, total_sq, count = np.zeros(c), np.zeros(c), np.zeros(c)
    for v in values:
        if v is None:
            continue
        x = np.asarray(v, dtype=np.float64)
        ok = ~np.isnan(x)
        total += np.where(ok, x, 0).sum(0)
        total_sq += np.where(ok, x * x, 0).sum(0)
        count += ok.sum(0)
    mean = total / np.maximum(count, 1)
    std = np.sqrt(np.maximum(total_sq / np.maximum(count, 1) - mean**2, 0))
    std[std < 1e-6] = 1.0
    return {"mean": mean.round(6).tolist(), "std": std.round(6).tolist()}


def _window(x: np.ndarray, length: int, where: str, rng: np.random.Generator | None, crop: bool) -> np.ndarray:
    """``length`` steps of x (or fewer): a random window when cropping in training, else head/tail/center."""
    n = len(x)
    if n > length:
        if crop and rng is not None:
            start = int(rng.integers(0, n - length + 1))
        else:
            start = {"head": 0, "tail": n - length, "center": (n - length) // 2}[where]
        return x[start:start + length]
    return x


def collate(values: list[np.ndarray | None], cfg: Any, state: dict, train: bool,
            rng: np.random.Generator | None) -> dict[str, np.ndarray]:
    """``name`` [B, length, C] standardised (gaps and padding 0), ``name__mask`` [B, length] (1 = a
    real step with at least one reading), ``name__length`` (real steps) and ``name__present``."""
    L, C = cfg.length, cfg.n_channels
    mean = np.asarray(state["mean"], dtype=np.float32)
    std = np.asarray(state["std"], dtype=np.float32)
    x = np.zeros((len(values), L, C), dtype=np.float32)
    mask = np.zeros((len(values), L), dtype=np.float32)
    present = np.asarray([v is not None for v in values], dtype=bool)
    aug = cfg.augment if train and rng is not None else None
    for i, v in enumerate(values):
        if v is None:
            continue
        w = (np.asarray(v, dtype=np.float32) - mean) / std
        w = _window(w, L, cfg.window, rng, bool(aug and aug.random_crop))
        shift = 0
        if aug is not None:
            if aug.random_crop and len(w) < L:
                shift = int(rng.integers(0, min(L - len(w), max(1, L // 10)) + 1))
            if aug.scale:
                w = w * np.float32(rng.uniform(1 - aug.scale, 1 + aug.scale))
            if aug.jitter:
                w = w + (aug.jitter * rng.standard_normal(w.shape)).astype(np.float32)
        gaps = np.isnan(w)
        x[i, shift:shift + len(w)] = np.where(gaps, 0.0, w)
        mask[i, shift:shift + len(w)] = ~gaps.all(axis=1)
    length = mask.sum(1).astype(np.int64)
    present &= length > 0
    return {"": x, "mask": mask, "length": length, "present": present}


def augments(cfg: Any) -> bool:
    a = cfg.augment
    return bool(a.jitter or a.random_crop or a.scale)

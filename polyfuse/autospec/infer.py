"""`polyfuse init`: read a table, profile a bounded sample of each column, write a commented spec.

polyfuse.autospec.profile measures (kinds, scripts, lengths, image sizes, audio durations); this module
chooses the spec from what was measured and says why beside each choice. The choices are general
rules, not fitted to any data set: see the comments in ``_text``, ``_image`` and ``_target``.
"""
from __future__ import annotations

import math
import time
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from polyfuse.autospec.profile import (
    GREY_MODES,
    MAX_FILES,
    MAX_VALUES,
    FileStats,
    Kind,
    classify,
    file_stats,
    percentile,
    sample,
    scripts,
)
from polyfuse.autospec import pretrained
from polyfuse.autospec.target import level, pick_target, sibling_table, target_entry
from polyfuse.data.io import Table, is_missing, read_table
from polyfuse.errors import SpecError

GROUP_NAMES = ("speaker", "subject", "patient", "user", "group", "session", "participant")
IMAGE_CAP = 64  # longest side for a from-scratch CNN: ImageCNN trains at ~500 rows/s on 2 cores at 64x64
LONG_TEXT = 300  # p95 tokens above which the CNN may replace the n-gram bag...
# ...when each class has this many rows to learn convolutions from scratch: on 1.5k rows of long Chinese
# news in 10 classes (~150 a class) the CNN lost to TF-IDF + a linear model by 10 points, the n-gram bag
# (what the linear model reads) did not
CNN_MIN_ROWS_PER_CLASS = 1000
MAX_TEXT_LENGTH = 512
TRAIN = {"epochs": 30, "batch_size": 64, "lr": 1.0e-3, "early_stopping": 5, "seed": 0}
# --preset: what the train section adds, and the comment that says why
PRESETS: dict[str, tuple[dict, str]] = {
    "fast": ({"ensemble": "off"}, "preset fast: the network alone (medium mixes in linear models on validation)"),
    "medium": ({"ensemble": "auto"}, "preset medium: the network mixed with linear models on all inputs and on each "
               "alone, weights chosen on the validation rows (never worse there, in log-loss, than the best of them)"),
    "best": ({"ensemble": "auto", "networks": 3, "time_limit": 3600},
             "preset best: three networks (other seeds) and the linear models, mixed on the validation rows; "
             "time_limit bounds the whole run (a network that does not fit is left out)"),
}


@dataclass
class Inferred:
    """A spec dict, a comment per field path (tuple of keys), and the header's lines."""

    spec: dict[str, Any]
    comments: dict[tuple, str] = field(default_factory=dict)
    notes: dict[tuple, list[str]] = field(default_factory=dict)  # comment lines opening a mapping
    header: list[str] = field(default_factory=list)


def nice_ceil(x: float, floor: int, cap: int) -> int:
    """Round up to a multiple of 8 (to 64), 16 (to 256), 64 (to 1024) or 256, within [floor, cap]."""
    step = 8 if x <= 64 else 16 if x <= 256 else 64 if x <= 1024 else 256
    return int(min(cap, max(floor, step * math.ceil(x / step))))


def _input_name(column: str, taken: set[str]) -> str:
    name = "".join(ch if ch.isalnum() or ch == "_" else "_" for ch in column).strip("_") or "input"
    if not name.isidentifier():
        name = "c_" + name
    base, k = name, 2
    while name in taken:
        name, k = f"{base}_{k}", k + 1
    return name


# ----------------------------------------------------------------------------- per kind
def _text(kind: Kind, seed: int, per_class: float) -> tuple[dict, dict[str, str], str, dict[str, Any]]:
    from polyfuse.preprocess.text import tokenize

    cells = [str(v) for v in sample(kind.present, MAX_VALUES, seed)]
    seen = scripts(cells)
    # Scripts without spaces between words (Han, kana, Thai, Lao, Khmer, Myanmar...) get characters
    # as tokens: no segmenter is needed and token bigrams then are character bigrams.
    char = seen.unsegmented_texts >= 0.5
    tokenizer = "char" if char else "word"
    lengths = [len(tokenize(t, tokenizer)) for t in cells]
    p50, p95, top = percentile(lengths, 50), percentile(lengths, 95), max(lengths)
    long = p95 > LONG_TEXT
    cnn = long and per_class >= CNN_MIN_ROWS_PER_CLASS
    max_length = nice_ceil(p95, 8, MAX_TEXT_LENGTH)
    entry: dict[str, Any] = {"type": "text", "tokenizer": tokenizer, "max_length": max_length,
                             "encoder": "cnn" if cnn else "ngram"}
    why = {
        "tokenizer": (f"{seen.language()} in {100 * seen.unsegmented_texts:.0f}% of {len(cells)} sampled texts "
                      f"(letters: {seen.shares()}): no spaces between words, so characters are the tokens"
                      + ("; jieba (Chinese word segmentation) is the alternative" if "Chinese" in seen.language()
                         else "")) if char else
                     f"letters: {seen.shares()}; space-delimited, so words are the tokens",
        "max_length": f"{tokenizer} tokens per text: median {p50:.0f}, p95 {p95:.0f}, max {top}"
                      + (f" (cut at {MAX_TEXT_LENGTH})" if p95 > MAX_TEXT_LENGTH else ""),
        "encoder": (f"p95 {p95:.0f} > {LONG_TEXT} tokens and {per_class:.0f} rows per class: long text, "
                    "convolutions over token embeddings" if cnn else
                    f"p95 {p95:.0f} > {LONG_TEXT} tokens but {per_class:.0f} rows per class (< "
                    f"{CNN_MIN_ROWS_PER_CLASS}): too little to learn convolutions from scratch, the hashed n-gram "
                    "bag reads long text well" if long else
                    f"p95 {p95:.0f} <= {LONG_TEXT} tokens: short/medium text, the hashed n-gram bag "
                    "is strong and fast"),
    }
    if not cnn:
        chars = None if char else (1, 4)
        counts = [ngram_count(tokenize(t, tokenizer)[:max_length], 2, chars) for t in cells]
        p95_ngrams = percentile(counts, 95)
        entry.update(word_ngrams=2, char_ngrams=list(chars) if chars else None,
                     max_ngrams=nice_ceil(p95_ngrams, 64, 8192))
        why["word_ngrams"] = "token 1-2-grams over characters = char 1-2-grams" if char else "word 1-2-grams"
        why["char_ngrams"] = ("tokens are single characters: nothing inside them" if char else
                              "char 1-4-grams inside each word: spelling variants and rare words")
        why["max_ngrams"] = (f"n-grams per text: median {percentile(counts, 50):.0f}, p95 {p95_ngrams:.0f}, "
                             f"max {max(counts)}")
    summary = f"{seen.shares()}; {tokenizer} tokens p50 {p50:.0f} p95 {p95:.0f} max {top}"
    latin = seen.letters.get("LATIN", 0) >= 0.9 * max(1, sum(seen.letters.values()))
    return entry, why, summary, {"p50": p50, "p95": p95, "latin": latin}


def ngram_count(tokens: list[str], word_ngrams: int, char_ngrams: tuple[int, int] | None) -> int:
    """How many n-grams polyfuse.preprocess.ngrams makes of these tokens: token n-grams of order
    1..word_ngrams, then each token's char n-grams within boundary marks (``<tok>``) less the bare
    marks and the whole marked token."""
    total = sum(max(0, len(tokens) - n + 1) for n in range(1, word_ngrams + 1))
    if char_ngrams:
        lo, hi = char_ngrams
        for token in tokens:
            marked = len(token) + 2
            total += sum(max(0, marked - n + 1) for n in range(lo, hi + 1))
            total -= (2 if lo == 1 else 0) + (1 if lo <= marked <= hi else 0)
    return total


def _image(name: str, kind: Kind, folder: Path, seed: int) -> tuple[dict, dict[str, str], str]:
    stats = file_stats(name, "image", kind.present, folder, seed)
    heights = [h for h, _ in stats.sizes]
    widths = [w for _, w in stats.sizes]
    h, w = float(np.median(heights)), float(np.median(widths))
    # A from-scratch CNN's cost grows with pixels: cap the longest side, keep a square-ish aspect.
    scale = min(1.0, IMAGE_CAP / max(h, w))
    aspect = min(2.0, max(0.5, h / w))
    side = max(h, w) * scale
    size = [side, side / aspect] if aspect >= 1 else [side * aspect, side]
    size = [max(8, 4 * round(s / 4)) for s in size]
    grey = all(mode in GREY_MODES for mode in stats.modes)
    modes = ", ".join(f"{m} {n}" for m, n in stats.modes.most_common())
    distinct = len(set(stats.sizes))
    sizes = (f"{heights[0]}x{widths[0]} (h x w)" if distinct == 1 else
             f"median {h:.0f}x{w:.0f} (h x w), heights {min(heights)}-{max(heights)}, "
             f"widths {min(widths)}-{max(widths)}, {distinct} distinct sizes")
    seen = f"{stats.opened} sampled files: " + ("all " if distinct == 1 else "") + sizes
    why = {
        "size": seen + (f"; longest side capped at {IMAGE_CAP} px so the from-scratch CNN trains fast on CPU "
                        "(use encoder: resnet or a larger size with a GPU)" if scale < 1 else ""),
        "channels": f"modes in the sample: {modes}" + (" (all greyscale)" if grey else
                                                        " (converted to RGB)" if len(stats.modes) > 1 else ""),
    }
    summary = f"{seen}; modes {modes}"
    if stats.n_failed:
        why["type"] = _unreadable(stats)
    return {"type": "image", "size": size, "channels": 1 if grey else 3, "encoder": "cnn"}, why, summary


def _audio(name: str, kind: Kind, folder: Path, seed: int) -> tuple[dict, dict[str, str], str]:
    stats = file_stats(name, "audio", kind.present, folder, seed)
    p50, p95, top = percentile(stats.seconds, 50), percentile(stats.seconds, 95), max(stats.seconds)
    step = 0.1 if p95 <= 2 else 0.5 if p95 <= 10 else 1.0
    seconds = round(min(30.0, max(0.1, step * math.ceil(p95 / step - 1e-9))), 1)
    # always 16 kHz: the MFCC defaults (64 mel bands over 25 ms windows) are laid out for it; at 8 kHz the
    # lowest bands are narrower than one FFT bin and stay empty (avdigits via init: 0.970 at 8 kHz)
    rate = 16000
    rates = ", ".join(f"{r} Hz x{n}" for r, n in stats.rates.most_common())
    why = {
        "sample_rate": f"sampled files: {rates}; resampled to 16 kHz, the rate the MFCC settings are laid out for"
                       + ("; multi-channel files are mixed to mono" if max(stats.channels) > 1 else ""),
        "augment": "speed perturbation and random crops in training: the usual guard against overfitting small "
                   "audio sets (each epoch recomputes the features)",
        "max_seconds": f"durations of {stats.opened} sampled files: median {p50:.2f} s, p95 {p95:.2f} s, "
                       f"max {top:.2f} s" + ("; longer clips are cut at 30 s" if p95 > 30 else ""),
    }
    if stats.n_failed:
        why["type"] = _unreadable(stats)
    entry = {"type": "audio", "sample_rate": rate, "features": "mfcc", "n_mfcc": 40, "max_seconds": seconds,
             "augment": {"speed": [0.9, 1.1], "random_crop": True}, "encoder": "cnn"}
    return entry, why, f"{stats.opened} files opened: {rates}; seconds p50 {p50:.2f} p95 {p95:.2f}"


def _video(kind: Kind) -> tuple[dict, dict[str, str], str]:
    """Video files: the defaults (4 frames a second, at most 16, 64x64), which suit clips of a few seconds."""
    why = {"fps": "4 frames a second by timestamp, at most max_frames (16) spread evenly over a longer clip",
           "size": "frames resized and center-cropped to 64x64: small enough to train a CNN per frame on a CPU"}
    return ({"type": "video", "fps": 4, "max_frames": 16, "size": 64, "encoder": "cnn_pool"}, why,
            f"{len(kind.present)} video files")


def _timeseries(kind: Kind, folder: Path, seed: int) -> tuple[dict, dict[str, str], str]:
    """Channels and length from a few sampled series (read whole: series files are small)."""
    from types import SimpleNamespace

    from polyfuse.errors import BadInputError
    from polyfuse.preprocess.timeseries import read_series

    probe = SimpleNamespace(channels=1, max_steps=10_000_000)
    shapes, failed = [], []
    for cell in sample(kind.present, 50, seed):
        try:
            shapes.append(read_series(cell, probe, folder)[0].shape)
        except BadInputError as e:
            failed.append(e.reason)
    if not shapes:
        raise SpecError(f"no sampled time series could be read (e.g. {failed[0] if failed else 'no cells'})")
    channels = Counter(c for _, c in shapes).most_common(1)[0][0]
    steps = [s for s, _ in shapes]
    length = nice_ceil(percentile(steps, 95), 8, 4096)
    why = {"channels": f"{channels} columns in the sampled series" + (
               f" ({sum(c != channels for _, c in shapes)} differ and will be bad rows)"
               if any(c != channels for _, c in shapes) else ""),
           "sample_rate": "unknown from the data: set the true rate (Hz) to resample series recorded at others",
           "length": f"steps of {len(steps)} sampled series: median {percentile(steps, 50):.0f}, p95 "
                     f"{percentile(steps, 95):.0f}, max {max(steps)}; longer series are cut, shorter padded"}
    if failed:
        why["type"] = f"{len(failed)} of {len(failed) + len(shapes)} sampled series unreadable (e.g. {failed[0]})"
    entry = {"type": "timeseries", "channels": int(channels), "sample_rate": 1.0, "length": length,
             "encoder": "cnn1d"}
    return entry, why, f"{len(shapes)} series read: {channels} channels, steps p95 {percentile(steps, 95):.0f}"


def _unreadable(stats: FileStats) -> str:
    return (f"{stats.n_failed} of {stats.opened + stats.n_failed} sampled files could not be opened "
            f"(e.g. {stats.failed[0]}); their rows will be skipped as bad rows")


def _tabular(kind: Kind) -> tuple[dict, dict[str, str], str]:
    if kind.kind == "category":
        top = Counter(level(v) for v in kind.present).most_common(3)
        levels = ", ".join(f"{v[:20]!r} {n}" for v, n in top)
        return {"type": "category"}, {"type": f"{kind.reason}; most common: {levels}"}, f"top: {levels}"
    return {"type": "number"}, {"type": kind.reason}, kind.reason


# ----------------------------------------------------------------------------- the spec
def infer(table_path: str | Path, target: str | None = None, seed: int = 0, metric: str = "accuracy",
          preset: str = "medium") -> Inferred:
    """Profile the table at ``table_path`` and choose a spec, with a comment on each choice."""
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UnicodeWarning)
        table = read_table(table_path)
    columns = list(table.columns)
    if not columns or not len(table):
        raise SpecError(f"table {str(table_path)!r} has no rows or no columns")
    out_col, how = pick_target(columns, target)
    group = next((c for c in columns if c.lower() in GROUP_NAMES and c != out_col), None)
    inferred = Inferred({})
    lines: list[str] = []
    inputs = _inputs(table, out_col, group, seed, inferred, lines, _rows_per_class(table.columns[out_col]), preset)
    if not inputs:
        raise SpecError(f"table {str(table_path)!r}: no usable input column besides the target {out_col!r}:\n  "
                        + "\n  ".join(lines))
    out_entry, out_why, out_summary = target_entry(out_col, table.columns[out_col], how, target is not None, metric)
    out_name = _input_name(out_col, set())
    if out_name != out_col:
        out_entry["column"] = out_col
    inferred.comments.update({("outputs", out_name, key): text for key, text in out_why.items()})
    chosen, why = PRESETS[preset]
    inferred.comments[("train", "ensemble")] = why
    lines.insert(0, f"{out_col}: target; {out_summary}")
    inferred.spec = {"data": _data(table_path, table, group, inferred), "inputs": inputs,
                     "fusion": {"method": "concat"}, "outputs": {out_name: out_entry}, "train": {**TRAIN, **chosen}}
    encoding = [str(w.message) for w in caught if issubclass(w.category, UnicodeWarning)]
    inferred.header = [
        f"polyfuse init {table_path}",
        f"{len(table)} rows x {len(columns)} columns, profiled in {time.perf_counter() - start:.1f} s from a seeded "
        f"sample of <= {MAX_VALUES} cells and <= {MAX_FILES} files (headers only) per column",
        *(f"encoding: {m}" for m in encoding),
        "columns:",
        *(f"  {line}" for line in lines),
        "Check each choice; `polyfuse schema` lists every field and its default.",
    ]
    return inferred


def _rows_per_class(values: list) -> float:
    """Labelled rows per class of a classification target (all labelled rows for a regression one)."""
    present = [level(v) for v in values if not is_missing(v)]
    classes = len(set(present))
    return len(present) / classes if 1 < classes <= 50 else float(len(present))


def _inputs(table: Table, out_col: str, group: str | None, seed: int, inferred: Inferred,
            lines: list[str], per_class: float, preset: str = "medium") -> dict[str, Any]:
    """One input entry per usable column (comments into ``inferred``, one summary line per column)."""
    inputs: dict[str, Any] = {}
    taken = {_input_name(out_col, set())}
    embed_s = 0.0  # the zoo encoders' estimated embedding time so far (medium's allowance is for all)
    for col in table.columns:
        if col == out_col:
            continue
        kind = classify(col, table.columns[col], table.folder, seed)
        info = f"{kind.kind}, {kind.missing} missing, {kind.distinct} distinct"
        if col == group:
            lines.append(f"{col}: {info}; grouping column for the split")
            continue
        if kind.kind in ("empty", "constant", "id", "timestamp", "unsupported"):
            lines.append(f"{col}: {info}; dropped: {kind.reason}")
            inferred.notes.setdefault(("inputs",), []).append(f"{col!r} dropped: {kind.reason}")
            continue
        text_stats = None
        if kind.kind == "text":
            entry, why, summary, text_stats = _text(kind, seed, per_class)
        else:
            entry, why, summary = _input_entry(col, kind, table.folder, seed, per_class)
        name = _input_name(col, taken)
        taken.add(name)
        if name != col:
            entry = {"type": entry["type"], "column": col, **{k: v for k, v in entry.items() if k != "type"}}
        why.setdefault("type", kind.reason)
        inputs[name] = entry
        inferred.comments.update({("inputs", name, key): text for key, text in why.items()})
        lines.append(f"{col}: {info}; {summary}")
        rows = len(kind.present)
        if text_stats is not None:
            found = pretrained.proposal(col, entry["tokenizer"], text_stats["p50"], text_stats["p95"], rows, preset,
                                        text_stats["latin"], embed_s)
        elif kind.kind == "image" and entry["type"] == "image":
            found = pretrained.image_proposal(col, rows, max(entry["size"]), preset, embed_s)
        else:
            continue
        embed_s += found[2]
        _pretrained(name, *found[:2], inputs, taken, inferred)
    return inputs


def _pretrained(name: str, entry: dict | None, why: str, inputs: dict, taken: set[str], inferred: Inferred) -> None:
    """A zoo encoder's input over the same column where the preset and the table allow one (or why not)."""
    if entry is None:
        if why:
            inferred.notes.setdefault(("inputs", name), []).append(why)
        return
    zoo_name = _input_name(f"{name}_pretrained", taken)
    taken.add(zoo_name)
    inputs[zoo_name] = entry
    inferred.comments[("inputs", zoo_name, "encoder")] = why


def _input_entry(col: str, kind: Kind, folder: Path, seed: int, per_class: float) -> tuple[dict, dict, str]:
    if kind.kind == "timeseries":
        return _timeseries(kind, folder, seed)
    if kind.kind == "video":
        return _video(kind)
    if kind.kind in ("image", "audio"):
        return (_image if kind.kind == "image" else _audio)(col, kind, folder, seed)
    return _tabular(kind)


def _data(table_path: str | Path, table: Table, group: str | None, inferred: Inferred) -> dict[str, Any]:
    """The data section: the table, validation and test tables found beside it, and a split grouped when it can be."""
    split: dict[str, Any] = {"valid": 0.1, "seed": 0}
    data: dict[str, Any] = {"train": str(table_path)}
    for split_name in ("valid", "test"):
        found = sibling_table(table_path, split_name)
        if found:
            data[split_name] = found
            inferred.comments[("data", split_name)] = "found beside the training table"
    if "valid" in data:
        del split["valid"]  # the given validation table replaces the random share of train
    if group:
        groups = len({level(v) for v in table.columns[group] if not is_missing(v)})
        if groups >= 2:
            split["group_by"] = group
            inferred.comments[("data", "split", "group_by")] = (
                f"{groups} distinct {group!r} values: rows of one {group} never straddle train and validation")
    data["split"] = split
    inferred.comments[("data", "train")] = "relative to the spec's folder: adjust if you write the spec elsewhere"
    return data


def guess_spec(table_path: str | Path, target: str | None = None) -> dict[str, Any]:
    """The spec dict that `polyfuse init` writes (without its comments)."""
    return infer(table_path, target).spec

"""Training data: decode each table once (bad rows listed), split train/valid/test as the spec
says, and cut epochs into mini-batches built in a background thread."""
from __future__ import annotations

import os
import queue
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from polyfuse.data.io import Table, read_table
from polyfuse.errors import BadInputError, SpecError
from polyfuse.preprocess.pipeline import BadRow, Decoded, decode_table
from polyfuse.spec.inputs import hf_encoder
from polyfuse.spec.schema import Spec


def log(msg: str) -> None:
    """One line to stderr; under torchrun only rank 0 speaks (the others would repeat it)."""
    if os.environ.get("RANK", "0") == "0":
        print(msg, file=sys.stderr, flush=True)


@dataclass
class Splits:
    """The decoded train/valid/test rows, the bad rows skipped on the way, and where the
    validation rows came from (so that export can verify itself on them later)."""

    train: Decoded
    valid: Decoded | None
    test: Decoded | None
    bad_rows: list[BadRow] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "valid": len(self.valid or []), "test": len(self.test or [])}


def read_splits(spec: Spec, base: Path, data: Any, show: bool, train_only: np.ndarray | None = None) -> Splits:
    """Read and decode every table once; split what the spec did not give as separate tables.
    ``train_only``: per row of the training table, whether it may only train (see :func:`split_decoded`)."""
    on_bad = spec.data.on_bad_row
    source = data if data is not None else spec.data.train
    if source is None:
        raise SpecError("data.train: no training table given (set data.train in the spec or pass data=)")
    train_table = read_table(source, base)
    full = decode_table_for(spec, train_table, base, "train", on_bad, show)
    bad_rows = list(full.bad)
    given: dict[str, Decoded | None] = {"valid": None, "test": None}
    for part in given:
        if getattr(spec.data, part):
            given[part] = decode_table_for(spec, read_table(getattr(spec.data, part), base), base, part, on_bad, show)
            bad_rows += given[part].bad
    train, va, te = split_decoded(spec, train_table, full, valid=given["valid"] is None, test=given["test"] is None,
                                  train_only=train_only)
    valid, test = given["valid"] or va, given["test"] or te
    info = {"base": str(Path(base).resolve()), "train": None if data is not None else spec.data.train,
            "valid": spec.data.valid, "valid_rows": None if spec.data.valid or not valid else valid.rows}
    return Splits(train, valid, test, bad_rows, info)


def decoded_bytes_per_row(spec: Spec) -> int:
    """About how many bytes one decoded row takes in memory (images as uint8: packed, or a pretrained
    processor's pixels; audio as float32 samples)."""
    total = 0
    for cfg in spec.inputs.values():
        if cfg.type == "image":
            total += cfg.channels * cfg.size[0] * cfg.size[1]
        elif cfg.type == "audio":
            total += int(4 * cfg.sample_rate * cfg.max_seconds)
        elif cfg.type == "timeseries":
            total += 4 * cfg.length * cfg.n_channels
        elif cfg.type == "video":  # uint8 frames; a pretrained backbone's at its processor's size
            proc = getattr(hf_encoder(cfg), "_processor", None) or {}
            h, w = proc.get("output_size") or (cfg.size, cfg.size)
            total += cfg.max_frames * h * w * 3
        else:
            total += 256
    return total


def decode_table_for(spec: Spec, table: Table, base: Path, what: str, on_bad_row: str, show: bool) -> Decoded:
    """Decode a table in memory, or into disk shards when ``data.storage`` says so (auto: when the
    decoded rows would take more than half the memory budget)."""
    storage = spec.data.storage
    if storage == "auto":
        need = len(table) * decoded_bytes_per_row(spec)
        storage = "disk" if need > spec.data.memory_budget_mb * 2**20 / 2 else "memory"
    if storage == "memory":
        return decode_with_progress(spec, table, what, on_bad_row, show)
    from tqdm import tqdm

    from polyfuse.threads import usable_cpus
    from polyfuse.training.shards import cache_root, decode_to_shards

    with tqdm(total=len(table), desc=f"shards {what}", unit="row", disable=not show, leave=False) as bar:
        decoded, report = decode_to_shards(spec, table, cache_root(spec, base) / "shards", on_bad_row=on_bad_row,
                                           workers=spec.data.workers or usable_cpus(), progress=bar.update)
    log(f"{what}: {len(decoded)} rows on disk in {report['shards']} shards ({report['built']} built, "
        f"{report['reused']} reused, {report['rebuilt']} rebuilt after a failed checksum; {report['mb']} MB in "
        f"{report['root']})")
    _log_bad(decoded, table, what)
    if len(decoded) == 0:
        raise BadInputError(f"{what}: no usable rows in {table.name} ({len(decoded.bad)} bad)")
    return decoded


def _log_bad(decoded: Decoded, table: Table, what: str) -> None:
    if decoded.bad:
        log(f"{what}: skipped {len(decoded.bad)} bad row(s) of {len(table)} in {table.name}:")
        for bad in decoded.bad[:20]:
            log(f"  {bad}")
        if len(decoded.bad) > 20:
            log(f"  ... and {len(decoded.bad) - 20} more (all are listed in metrics.json)")


def decode_with_progress(spec: Spec, table: Table, what: str, on_bad_row: str, show: bool) -> Decoded:
    from tqdm import tqdm

    from polyfuse.training.packed import decode_packed

    total = len(table) * (len(spec.inputs) + len(spec.outputs))
    packed = any(c.type == "image" and hf_encoder(c) is None for c in spec.inputs.values())
    with tqdm(total=total, desc=f"decode {what}", unit="cell", disable=not show, leave=False) as bar:
        decoded = (decode_packed(spec, table, on_bad_row, bar.update) if packed else
                   decode_table(spec, table, with_targets=True, on_bad_row=on_bad_row, progress=bar.update))
    _log_bad(decoded, table, what)
    if len(decoded) == 0:
        raise BadInputError(f"{what}: no usable rows in {table.name} ({len(decoded.bad)} bad)")
    return decoded


def split_rows(n: int, groups: list | None, valid: float, test: float, seed: int) -> tuple[list[int], list[int], list[int]]:
    """Random (or grouped: a group never straddles two parts) train/valid/test positions."""
    rng = np.random.default_rng(seed)
    if groups is None:
        order = rng.permutation(n)
        n_valid, n_test = int(round(n * valid)), int(round(n * test))
        if valid > 0:
            n_valid = max(1, n_valid)
        return sorted(order[n_valid + n_test :]), sorted(order[:n_valid]), sorted(order[n_valid : n_valid + n_test])
    keys = sorted({str(g) for g in groups})
    rng.shuffle(keys)
    by_key: dict[str, list[int]] = {}
    for i, g in enumerate(groups):
        by_key.setdefault(str(g), []).append(i)
    parts: list[list[int]] = [[], [], []]
    quota = [n * valid, n * test]
    for key in keys:  # fill valid, then test, with whole groups; the rest trains
        for p in (0, 1):
            if quota[p] > 0 and len(parts[p]) < quota[p] and len(keys) > 1:
                parts[p].extend(by_key[key])
                break
        else:
            parts[2].extend(by_key[key])
    if not parts[2]:
        raise SpecError(f"data.split.group_by: only {len(keys)} group(s); cannot keep any for training")
    return sorted(parts[2]), sorted(parts[0]), sorted(parts[1])


def split_decoded(spec: Spec, table: Table, full: Decoded, *, valid: bool, test: bool,
                  train_only: np.ndarray | None = None) -> tuple[Decoded, Decoded | None, Decoded | None]:
    """Train/valid/test parts of the decoded training table as ``data.split`` says (deterministic).

    Rows marked in ``train_only`` (by table position: a distilled student's rows that only its teacher
    labelled) always train, and the split is drawn over the others alone, so validation and test score
    real labels and are the same rows they would be without the marked ones."""
    split = spec.data.split
    position = {row: i for i, row in enumerate(table.rows)}
    pinned = np.zeros(len(full), bool)
    if train_only is not None:
        pinned = np.asarray(train_only, bool)[[position[row] for row in full.rows]]
    free = np.flatnonzero(~pinned)
    groups = None
    if split.group_by:
        if split.group_by not in table.columns:
            raise SpecError(f"data.split.group_by: column {split.group_by!r} not in {table.name} "
                            f"(columns: {list(table.columns)})")
        groups = [table.columns[split.group_by][position[full.rows[i]]] for i in free]
    tr, va, te = split_rows(len(free), groups, split.valid if valid else 0.0, split.test if test else 0.0, split.seed)
    if groups is not None and va:
        log(f"split by {split.group_by!r}: valid holds {len(va)} rows ({len(va) / len(free):.0%}; asked "
            f"{split.valid:.0%}) from {len({str(groups[i]) for i in va})} group(s)")
    tr, va, te = (sorted(int(free[i]) for i in part) for part in (tr, va, te))
    tr = sorted(tr + np.flatnonzero(pinned).tolist())
    return full.subset(tr), full.subset(va) if va else None, full.subset(te) if te else None


def batches_of(order: np.ndarray, size: int) -> list[np.ndarray]:
    """Mini-batches; a last batch of one row joins the previous one (batch norm needs two)."""
    out = [order[i : i + size] for i in range(0, len(order), size)]
    if len(out) > 1 and len(out[-1]) < 2:
        out[-2] = np.concatenate([out[-2], out.pop()])
    return out


def prefetch(items: list, make: Callable[[Any], Any], depth: int = 3) -> Iterator[Any]:
    """Build batches in a background thread while the model trains on the previous one."""
    q: queue.Queue = queue.Queue(maxsize=depth)

    def work() -> None:
        try:
            for item in items:
                q.put(make(item))
        except BaseException as e:  # hand any failure to the consumer instead of hanging it
            q.put(e)
        q.put(StopIteration)

    threading.Thread(target=work, daemon=True).start()
    while (got := q.get()) is not StopIteration:
        if isinstance(got, BaseException):
            raise got
        yield got


def slice_batch(batch: dict[str, np.ndarray], idx: np.ndarray) -> dict[str, np.ndarray]:
    return {k: v[idx] for k, v in batch.items()}


def check_rows(spec: Spec, splits: Splits) -> list[str]:
    """Refuse training rows a model cannot learn from, and warn about ones it will learn little from:
    a class output with one class (an error), a class with a single row, an input missing in every
    training row. Returns the warnings (also logged)."""
    from collections import Counter

    warnings = []
    for name, cfg in spec.outputs.items():
        if cfg.type not in ("category", "binary"):
            continue
        counts = Counter(splits.train.targets[name])
        if len(counts) < 2:
            raise SpecError(f"outputs.{name}: every training row has the class {next(iter(counts))!r} (column "
                            f"'{spec.column(name)}'); a classifier needs at least two classes")
        single = sorted(str(c) for c, k in counts.items() if k == 1)
        if single:
            warnings.append(f"outputs.{name}: {len(single)} class(es) have a single training row ({', '.join(single[:5])}"
                            f"{'...' if len(single) > 5 else ''}); the model can hardly learn them and they cannot be "
                            "validated: add rows or merge them into another class")
    for name in spec.inputs:
        if len(spec.inputs) > 1 and all(v is None for v in splits.train.inputs[name]):
            warnings.append(f"inputs.{name}: column '{spec.column(name)}' is empty in every training row, so this "
                            "input contributes nothing; fill it or drop it from the spec")
    for w in warnings:
        log(f"WARNING: {w}")
    return warnings

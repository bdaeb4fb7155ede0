"""Decoded records on disk: memory-mapped shards for tables larger than memory.

The table is cut into chunks of rows; a process pool decodes each chunk (the same ``decode_table``
as in memory) and writes it as one shard: fixed-shape arrays stacked in ``.npy`` files (images as
uint8, a quarter of float32), variable-length waveforms concatenated with offsets, text and
targets as JSON. A shard's folder is named by the sha256 of its cells (file paths with their size
and modification time) and of the spec's decoding settings, so it is reused by later runs and
rebuilt when the data or the decoding changes; each file's sha256 is checked on opening, and a
corrupt or truncated shard is rebuilt. Columns open as lazy sequences that read rows with
``pread``, so an epoch streams its batches with bounded memory.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from polyfuse.artifact import sha256
from polyfuse.data.cache import cache_home
from polyfuse.data.io import Table
from polyfuse.preprocess.pipeline import BadRow, Decoded, decode_table
from polyfuse.spec.inputs import hf_encoder
from polyfuse.spec.schema import Spec

FORMAT = "polyfuse.training.shards/2"  # 2: images decoded upright (EXIF orientation applied)
ROWS_PER_SHARD = 2048
# fields that change only the network, never what a cell decodes to
_NOT_DECODING = {"augment", "encoder", "dim", "modality_dropout", "wide", "pooling", "buckets", "max_ngrams",
                 "word_ngrams", "char_ngrams", "min_count", "max_vocab", "mean", "std", "weight", "class_weights",
                 "head", "abstain_below"}


# ----------------------------------------------------------------------------- keys
def cache_root(spec: Spec, base: Path) -> Path:
    """``data.cache_dir`` (relative to the spec's folder), else $POLYFUSE_CACHE, else ~/.cache/polyfuse."""
    if spec.data.cache_dir:
        path = Path(spec.data.cache_dir).expanduser()
        return path if path.is_absolute() else base / path
    return cache_home()


def decoding_settings(spec: Spec) -> str:
    """The spec's settings that change decoded values (not the network's), as canonical JSON."""
    parts: dict[str, Any] = {}
    for group in ("inputs", "outputs"):
        for name, cfg in getattr(spec, group).items():
            entry = {k: v for k, v in cfg.model_dump(mode="json").items() if k not in _NOT_DECODING}
            enc = hf_encoder(cfg)
            if enc is not None:  # a pretrained model's own processor decides the decoding
                entry["processor"] = hashlib.sha256(json.dumps(enc._processor, sort_keys=True).encode()).hexdigest()
            parts[f"{group}.{name}"] = entry
    return json.dumps({"format": FORMAT, **parts}, sort_keys=True)


def _cell_token(value: Any, folder: Path) -> str:
    """A cell's identity: its value, and for a file path also the file's size and modification time."""
    if isinstance(value, bytes):
        return hashlib.sha256(value).hexdigest()
    if isinstance(value, str) and len(value) < 4096:
        path = Path(value) if Path(value).is_absolute() else folder / value
        try:
            st = path.stat()
            return f"{value}|{st.st_size}|{st.st_mtime_ns}"
        except (OSError, ValueError):
            pass
    return repr(value)


def chunk_key(settings: str, table: Table, start: int, stop: int) -> str:
    h = hashlib.sha256(settings.encode())
    for column in sorted(table.columns):
        h.update(column.encode())
        for value in table.columns[column][start:stop]:
            h.update(_cell_token(value, table.folder).encode())
            h.update(b"\0")
    h.update(json.dumps([str(r) for r in table.rows[start:stop]]).encode())
    return h.hexdigest()[:32]


# ----------------------------------------------------------------------------- writing
def _kind(values: list) -> str:
    """How a column is stored: stacked arrays, ragged 1-D arrays, or JSON."""
    arrays = [v for v in values if v is not None]
    if arrays and all(isinstance(v, np.ndarray) for v in arrays):
        if len({v.shape for v in arrays}) == 1:
            return "stack"
        if all(v.ndim == 1 for v in arrays):
            return "ragged"
    return "json"


def _write_column(folder: Path, name: str, values: list, image: bool) -> dict[str, Any]:
    kind, present = _kind(values), np.asarray([v is not None for v in values])
    np.save(folder / f"{name}.present.npy", present)
    if kind == "stack":
        first = next(v for v in values if v is not None)
        as_uint8 = image and first.dtype == np.float32  # decoded pixels are k/255 exactly: no loss
        dtype = np.uint8 if as_uint8 else first.dtype
        out = np.zeros((len(values), *first.shape), dtype=dtype)
        for i, v in enumerate(values):
            if v is not None:
                out[i] = np.rint(v * 255.0) if as_uint8 else v
        np.save(folder / f"{name}.npy", out)
        return {"kind": kind, "scale": 255.0 if as_uint8 else None}
    if kind == "ragged":
        arrays = [v if v is not None else np.zeros(0, dtype=np.float32) for v in values]
        np.save(folder / f"{name}.npy", np.concatenate(arrays) if arrays else np.zeros(0, np.float32))
        np.save(folder / f"{name}.offsets.npy", np.cumsum([0] + [len(a) for a in arrays]).astype(np.int64))
        return {"kind": kind}
    (folder / f"{name}.json").write_text(json.dumps([_jsonable(v) for v in values]))
    return {"kind": kind}


def _jsonable(v: Any) -> Any:
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, (np.integer, np.floating)):
        return v.item()
    return v


def build_shard(spec: Spec, table: Table, start: int, stop: int, folder: Path, on_bad_row: str) -> Path:
    """Decode rows [start, stop) of ``table`` and write them as one shard (atomically)."""
    part = table.slice(start, stop)
    decoded = decode_table(spec, part, with_targets=True, on_bad_row=on_bad_row, workers=1)
    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    columns = {}
    for name, values in decoded.inputs.items():
        columns[f"in.{name}"] = _write_column(tmp, f"in.{name}", values, spec.inputs[name].type == "image")
    for name, values in decoded.targets.items():
        columns[f"out.{name}"] = _write_column(tmp, f"out.{name}", values, False)
    (tmp / "rows.json").write_text(json.dumps({"rows": [_jsonable(r) for r in decoded.rows],
                                               "bad": [[_jsonable(b.row), b.column, b.message] for b in decoded.bad]}))
    files = {p.name: sha256(p) for p in sorted(tmp.iterdir())}
    (tmp / "meta.json").write_text(json.dumps({"format": FORMAT, "n": len(decoded), "columns": columns, "files": files}))
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)
    return folder


def intact(folder: Path) -> bool:
    """Whether a shard is complete and every file matches its recorded checksum."""
    try:
        meta = json.loads((folder / "meta.json").read_text())
        return meta.get("format") == FORMAT and all(sha256(folder / f) == s for f, s in meta["files"].items())
    except (OSError, ValueError, KeyError):
        return False


# ----------------------------------------------------------------------------- reading
class RowFile:
    """Rows of a ``.npy`` file read with ``pread``: unlike a memory map, pages read once are not kept
    in this process's resident set (an epoch over a memory map grows RSS to the whole file)."""

    def __init__(self, path: Path):
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _, dtype = read_header(f)
            self.offset = f.tell()
        self.shape, self.dtype = shape, np.dtype(dtype)
        self.row_items = int(np.prod(shape[1:])) if len(shape) > 1 else 1
        self.fd = os.open(path, os.O_RDONLY)

    def items(self, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) along the first axis (for a 1-D file: items)."""
        size = self.dtype.itemsize * self.row_items
        data = os.pread(self.fd, (stop - start) * size, self.offset + start * size)
        return np.frombuffer(data, dtype=self.dtype).reshape((stop - start, *self.shape[1:])).copy()

    def __del__(self) -> None:
        try:
            os.close(self.fd)
        except (OSError, AttributeError):
            pass


@dataclass
class ShardColumn(Sequence):
    """One input (or target) over every shard, read lazily row by row; ``take`` gives a view."""

    parts: list[tuple[dict, Path, str]]  # (column meta, shard folder, column file stem)
    index: np.ndarray  # global row -> (shard, local row), as a [n, 2] array

    def __post_init__(self) -> None:
        self._open: dict[int, Any] = {}

    def __len__(self) -> int:
        return len(self.index)

    def _load(self, s: int) -> Any:
        if s not in self._open:
            meta, folder, stem = self.parts[s]
            present = np.load(folder / f"{stem}.present.npy")
            if meta["kind"] == "json":
                data: Any = json.loads((folder / f"{stem}.json").read_text())
            else:
                data = RowFile(folder / f"{stem}.npy")
            offsets = np.load(folder / f"{stem}.offsets.npy") if meta["kind"] == "ragged" else None
            self._open[s] = (meta, present, data, offsets)
        return self._open[s]

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        s, j = self.index[i]
        meta, present, data, offsets = self._load(int(s))
        if not present[j]:
            return None
        if meta["kind"] == "json":
            return data[j]
        if meta["kind"] == "ragged":
            return data.items(int(offsets[j]), int(offsets[j + 1]))
        value = data.items(int(j), int(j) + 1)[0]
        return value.astype(np.float32) / meta["scale"] if meta.get("scale") else value

    def __iter__(self) -> Iterator[Any]:
        return (self[i] for i in range(len(self)))

    def take(self, idx: Sequence[int]) -> "ShardColumn":
        view = ShardColumn(self.parts, self.index[np.asarray(idx, dtype=np.int64)])
        view._open = self._open  # the open files are shared, not reopened
        return view


def open_shards(spec: Spec, folders: list[Path]) -> Decoded:
    """The rows of ``folders`` as one Decoded whose columns stay on disk."""
    metas = [json.loads((f / "meta.json").read_text()) for f in folders]
    rows_info = [json.loads((f / "rows.json").read_text()) for f in folders]
    index = np.asarray([(s, j) for s, m in enumerate(metas) for j in range(m["n"])], dtype=np.int64).reshape(-1, 2)

    def column(stem: str) -> ShardColumn:
        return ShardColumn([(m["columns"][stem], f, stem) for m, f in zip(metas, folders)], index)

    rows = [r for info in rows_info for r in info["rows"]]
    bad = [BadRow(*b) for info in rows_info for b in info["bad"]]
    targets = {n: list(column(f"out.{n}")) for n in spec.outputs}  # small: kept in memory
    return Decoded({n: column(f"in.{n}") for n in spec.inputs}, targets, rows, bad)


def decode_to_shards(spec: Spec, table: Table, root: Path, *, on_bad_row: str, workers: int,
                     rows_per_shard: int = ROWS_PER_SHARD, progress: Any = None) -> tuple[Decoded, dict]:
    """Decode ``table`` into shards under ``root`` with a process pool, reusing intact shards;
    returns the lazy Decoded and what was built / reused / rebuilt."""
    settings = decoding_settings(spec)
    ranges = [(s, min(s + rows_per_shard, len(table))) for s in range(0, len(table), rows_per_shard)]
    folders = [root / f"shard-{chunk_key(settings, table, a, b)}" for a, b in ranges]
    report = {"shards": len(folders), "built": 0, "reused": 0, "rebuilt": 0, "root": str(root)}
    todo = []
    for (a, b), folder in zip(ranges, folders):
        if intact(folder):
            report["reused"] += 1
            if progress:
                progress(b - a)
            continue
        report["rebuilt" if folder.exists() else "built"] += 1
        todo.append((a, b, folder))
    if todo:
        with ProcessPoolExecutor(max_workers=max(1, min(workers, len(todo)))) as pool:
            futures = [(b - a, pool.submit(build_shard, spec, table, a, b, folder, on_bad_row)) for a, b, folder in todo]
            for n, future in futures:
                future.result()  # a bad row with on_bad_row=error raises here, naming row and column
                if progress:
                    progress(n)
    report["mb"] = round(sum(p.stat().st_size for f in folders for p in f.iterdir()) / 2**20, 1)
    return open_shards(spec, folders), report

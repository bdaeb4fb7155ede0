"""Decoded images kept in memory as one uint8 array, a quarter of their float32 size.

Decoded pixels are k / 255 exactly (Pillow's 8-bit values divided by 255), so the bytes lose nothing;
a row read back is the same float32 image the decoder made. A 35k-row table of 64x48 photos held 1.29
GB of float32 images in lists and its run peaked at 5.2 GB; packed, the decoded images take 0.32 GB.
Disk shards (:mod:`polyfuse.training.shards`) store images the same way.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np


@dataclass
class PackedColumn(Sequence):
    """One image input's decoded values: ``data[index[i]]`` is row i (None where ``present`` is False)."""

    data: np.ndarray  # uint8 [rows, C, H, W], every decoded row including those since dropped
    present: np.ndarray  # bool [rows]
    index: np.ndarray  # int64 positions into data: the rows this view holds, in order

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        j = self.index[i]
        return self.data[j].astype(np.float32) / np.float32(255.0) if self.present[j] else None

    def __iter__(self) -> Iterator[Any]:
        return (self[i] for i in range(len(self)))

    def take(self, idx: Sequence[int]) -> "PackedColumn":
        """Rows ``idx`` as a view over the same array (nothing copied but the index)."""
        return PackedColumn(self.data, self.present, self.index[np.asarray(idx, dtype=np.int64)])


def pack(values: list) -> PackedColumn | None:
    """``values`` (float32 images in [0, 1] or None) packed as uint8; None when they cannot be exactly
    (other shapes or dtypes, or pixels that are not multiples of 1/255, e.g. a pretrained processor's)."""
    shown = next((v for v in values if v is not None), None)
    if shown is None or not isinstance(shown, np.ndarray) or shown.dtype != np.float32:
        return None
    data = np.zeros((len(values), *shown.shape), dtype=np.uint8)
    present = np.zeros(len(values), dtype=bool)
    for i, v in enumerate(values):
        if v is None:
            continue
        if not isinstance(v, np.ndarray) or v.shape != shown.shape:
            return None
        scaled = v * np.float32(255.0)
        data[i] = np.rint(scaled)
        if np.abs(scaled - data[i]).max(initial=0.0) > 1e-3:
            return None
        present[i] = True
    return PackedColumn(data, present, np.arange(len(values), dtype=np.int64))


def concat(parts: list[PackedColumn]) -> PackedColumn:
    """Packed chunks of one column as one (each part's own rows, in order)."""
    data = np.concatenate([p.data[p.index] for p in parts])
    present = np.concatenate([p.present[p.index] for p in parts])
    return PackedColumn(data, present, np.arange(len(data), dtype=np.int64))


CHUNK_ROWS = 2048  # rows decoded as float32 at once before their images are packed


def decode_packed(spec: Any, table: Any, on_bad_row: str, progress: Any = None) -> Any:
    """``decode_table`` in chunks of rows, each chunk's images packed before the next is decoded, so the
    float32 images of the whole table never exist at once. Other inputs and the targets stay lists."""
    from polyfuse.preprocess.pipeline import Decoded, decode_table

    images = [n for n, c in spec.inputs.items() if c.type == "image"]
    parts: dict[str, list] = {n: [] for n in images}  # PackedColumn chunks, or lists once one cannot be packed
    out = Decoded({n: [] for n in spec.inputs if n not in images}, {n: [] for n in spec.outputs}, [], [])
    for start in range(0, len(table), CHUNK_ROWS):
        chunk = decode_table(spec, table.slice(start, start + CHUNK_ROWS), with_targets=True, on_bad_row=on_bad_row,
                             progress=progress)
        for name, values in chunk.inputs.items():
            if name not in parts:
                out.inputs[name].extend(values)
                continue
            packed = pack(values) if all(isinstance(p, PackedColumn) for p in parts[name]) else None
            if packed is None:  # this column stays (or goes back to) float32 lists
                parts[name] = [list(p) if isinstance(p, PackedColumn) else p for p in parts[name]] + [list(values)]
            else:
                parts[name].append(packed)
        for name, values in chunk.targets.items():
            out.targets[name].extend(values)
        out.rows.extend(chunk.rows)
        out.bad.extend(chunk.bad)
    for name, chunks in parts.items():
        if chunks and all(isinstance(p, PackedColumn) for p in chunks):
            out.inputs[name] = concat(chunks)
        else:
            out.inputs[name] = [v for p in chunks for v in p]
    return out

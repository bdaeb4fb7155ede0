"""The on-disk cache of frozen pretrained backbones' outputs.

A frozen backbone (``freeze: true``, no ``train_last``, no LoRA) is a fixed function of its input,
so its output for a record is computed once, in batches, and stored. An entry's key is the sha256
of the record's model-ready arrays (token ids, pixels, samples or features: the content after every
preprocessing setting), inside a folder keyed by the backbone's weight digest and its pooling. Later
epochs, and later runs with other fusion or head settings, read it back; an interrupted run keeps
every part already written (parts are written whole, then renamed).
"""
from __future__ import annotations

import hashlib
import itertools
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from polyfuse.preprocess.pipeline import Decoded, Preprocessor, modality_of
from polyfuse.spec.inputs import hf_encoder
from polyfuse.spec.schema import Spec
from polyfuse.training.trainset import log

FORMAT = "polyfuse.embeddings/2"
PART_ROWS = 512  # rows per part file: what an interrupted run can lose at most


def row_keys(arrays: dict[str, np.ndarray]) -> list[bytes]:
    """A 16-byte key per row from its model-ready arrays (sequences cut to their length)."""
    x, length = arrays[""], arrays.get("length")
    keys = []
    for i in range(len(x)):
        row = x[i] if length is None or x.ndim != 2 else x[i, : int(length[i])]
        keys.append(hashlib.sha256(str(row.dtype).encode() + str(row.shape).encode() + row.tobytes()).digest()[:16])
    return keys


@dataclass
class Store:
    """One backbone's cached outputs: parts of (keys, values) files in one folder."""

    folder: Path
    meta: dict[str, Any]

    def __post_init__(self) -> None:
        self.entries: dict[bytes, np.ndarray] = {}
        self.pending: dict[bytes, np.ndarray] = {}
        self.folder.mkdir(parents=True, exist_ok=True)
        meta_path = self.folder / "meta.json"
        if meta_path.exists() and json.loads(meta_path.read_text()) != self.meta:
            log(f"WARNING: embedding cache {self.folder} was written by another model or preprocessing; "
                "ignoring it and recomputing")
            for part in self.folder.glob("part-*.npz"):
                part.unlink()
        meta_path.write_text(json.dumps(self.meta, indent=1))
        for part in sorted(self.folder.glob("part-*.npz")):
            self._read(part)

    def _read(self, part: Path) -> None:
        try:
            with np.load(part, allow_pickle=False) as data:
                if str(data["digest"]) != self.meta["model_digest"]:
                    log(f"WARNING: {part} holds another model's outputs; skipped")
                    return
                keys, offsets, values = data["keys"], data["offsets"], data["values"]
        except (OSError, ValueError, KeyError) as e:  # a torn or foreign file: recompute its rows
            log(f"WARNING: unreadable cache part {part} ({type(e).__name__}); its rows are recomputed")
            return
        sequence = self.meta["sequence"]
        for i, key in enumerate(keys):
            self.entries[key.tobytes()] = values[offsets[i] : offsets[i + 1]] if sequence else values[i]

    def put(self, key: bytes, value: np.ndarray) -> None:
        self.entries[key] = self.pending[key] = value
        if len(self.pending) >= PART_ROWS:
            self.flush()

    def flush(self) -> None:
        """Write the pending entries as one part, atomically."""
        if not self.pending:
            return
        keys = list(self.pending)
        values = [self.pending[k] for k in keys]
        if self.meta["sequence"]:
            offsets = np.cumsum([0] + [len(v) for v in values])
            stacked = np.concatenate(values).astype(np.float32)
        else:
            offsets, stacked = np.arange(len(keys) + 1), np.stack(values).astype(np.float32)
        name = f"part-{time.time_ns():x}-{os.getpid()}.npz"
        tmp = self.folder / f".{name}.tmp.npz"
        # keys as raw uint8 rows: numpy's fixed-width bytes type would drop a key's trailing zero bytes
        np.savez(tmp, keys=np.frombuffer(b"".join(keys), dtype=np.uint8).reshape(-1, 16), offsets=offsets, values=stacked,
                 digest=np.asarray(self.meta["model_digest"]))
        os.replace(tmp, self.folder / name)
        self.pending.clear()

    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.folder.glob("part-*.npz"))


def store_for(encoder: Any, weights: str, root: Path, engine: str = "torch") -> Store:
    """The store of ``encoder``'s outputs; ``weights`` is its backbone's digest (hashing e5's weights takes
    seconds, so the caller computes it once)."""
    # the preprocessing settings need no place here: a row's key hashes its model-ready arrays, so rows
    # that another max_length or size leaves unchanged are reused and the others get new keys
    meta = {"format": FORMAT, "model_digest": weights, "pooling": encoder.pooling,
            "sequence": encoder.caches_sequence}
    if engine != "torch":  # int8 outputs differ a little: their own folder (fp32 caches keep their keys)
        meta["engine"] = engine
    key = hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()[:24]
    return Store(root / "embeddings" / key, meta)


def _size(value: Any) -> int:
    """A row's length before collation (characters of a text, samples of a wave, frames of a video)."""
    return len(value) if isinstance(value, (str, np.ndarray, list)) else 0


@torch.inference_mode()
def fill(store: Store, features: Any, cfg: Any, pre: Preprocessor, name: str, decoded: Decoded,
         batch_size: int, bar: Any) -> tuple[list, int]:
    """Each row's cached output (None where the input is missing); computes the ones not cached yet.
    Rows go through the backbone shortest first, so a batch pads to lengths alike rather than to the
    longest of a random 32 (a row's output and key do not depend on its batch's padding)."""
    values, computed = decoded.inputs[name], 0
    out: list = [None] * len(values)
    order = sorted(range(len(values)), key=lambda i: _size(values[i]))
    collate = modality_of(cfg).collate
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        chunk = [values[i] for i in rows]
        arrays = collate(chunk, cfg, pre.state[name], False, None)
        keys = row_keys(arrays)
        todo, seen = [], set()
        for i, (k, v) in enumerate(zip(keys, chunk)):
            if v is not None and k not in store.entries and k not in seen:  # duplicates run once
                todo.append(i)
                seen.add(k)
        if todo:
            x = torch.from_numpy(arrays[""][todo])
            length = torch.from_numpy(arrays["length"][todo]) if "length" in arrays else None
            feats, lengths = features(x, length)
            for j, i in enumerate(todo):
                row = feats[j] if lengths is None else feats[j, : int(lengths[j])]
                store.put(keys[i], row.float().numpy().copy())
            computed += len(todo)
        for i, k, v in zip(rows, keys, chunk):
            out[i] = store.entries[k] if v is not None else None
        bar.update(len(chunk))
    return out, computed


@dataclass
class Progress:
    """A line every ``every_s`` seconds while a backbone's outputs are computed (logs have no bar): rows done,
    rows per second and the time left at that rate. 10,000 texts through e5 took 6.6 minutes in silence."""

    name: str
    total: int
    every_s: float = 30.0
    done: int = 0
    started: float = field(default_factory=time.perf_counter)
    said: float = field(default_factory=time.perf_counter)

    def update(self, n: int) -> None:
        self.done += n
        now = time.perf_counter()
        if now - self.said >= self.every_s and self.done < self.total:
            rate = self.done / max(now - self.started, 1e-9)
            log(f"{self.name}: backbone outputs {self.done}/{self.total} rows, {rate:.0f} rows/s, "
                f"~{(self.total - self.done) / max(rate, 1e-9) / 60:.1f} min left")
            self.said = now


def _int8(encoder: Any, cfg: Any, pre: Preprocessor, name: str, parts: list[Decoded], to_compute: int,
          weights: str, root: Path) -> Any:
    """The int8 ONNX pass for the missing rows where asked for (or worth it) and its gate passes on the
    table's first rows; None: the torch backbone computes them."""
    from polyfuse.training import int8_pass

    engine = int8_pass.engine(cfg.encoder.embed_with, encoder, to_compute, image=cfg.type == "image")
    if engine is None:
        return None
    present = (v for d in parts for v in d.inputs[name] if v is not None)
    rows = list(itertools.islice(present, int8_pass.SAMPLE_ROWS))
    if len(rows) < 2:
        return None
    sample = modality_of(cfg).collate(rows, cfg, pre.state[name], False, None)
    return int8_pass.build(encoder, weights, sample, root, torch.get_num_threads(), engine)


def precompute(spec: Spec, pre: Preprocessor, net: Any, parts: list[Decoded], root: Path, show: bool,
               batch_size: int = 32) -> dict[str, dict]:
    """Attach every frozen backbone's outputs to ``parts`` (train/valid/test rows) from the cache,
    computing what is missing; returns per input what was computed, reused, and the cache's size."""
    from tqdm import tqdm

    from polyfuse.nn.hf import digest

    report = {}
    for name, cfg in spec.inputs.items():
        enc = hf_encoder(cfg)
        if enc is None or not enc.cached or not enc.cache:
            continue
        if modality_of(cfg).augments(cfg):
            log(f"{name}: training augmentation changes its inputs every epoch, so its backbone runs every "
                "epoch (no cache)")
            continue
        encoder = net.encoders[name]
        if not encoder.cacheable:
            log(f"{name}: its learned pooling reads every position of every frame, which the cache does not hold, "
                "so its backbone runs every epoch (no cache)")
            continue
        encoder.eval()
        weights = digest(encoder.backbone)
        store = store_for(encoder, weights, root)
        total, computed, started = sum(len(d) for d in parts), 0, time.perf_counter()
        int8 = _int8(encoder, cfg, pre, name, parts, total - len(store.entries), weights, root)
        if int8 is not None and int8.engine == "onnx-int8":  # the fp32 graph's rows are torch's, to rounding
            store = store_for(encoder, weights, root, engine="onnx-int8")
        features = int8 or encoder.features
        with tqdm(total=total, desc=f"{name} backbone", unit="row", disable=not show, leave=False) as shown:
            bar = shown if show else Progress(name, total)
            for decoded in parts:
                decoded.features[name], n = fill(store, features, cfg, pre, name, decoded, batch_size, bar)
                computed += n
        store.flush()
        sample = next((v for d in parts for v in d.features[name] if v is not None), None)
        if sample is None:  # no row has this input: nothing to cache
            for decoded in parts:
                del decoded.features[name]
            continue
        pre.state[name]["_feature_shape"] = [-1, sample.shape[-1]] if store.meta["sequence"] else list(sample.shape)
        report[name] = {"rows": total, "computed": computed, "reused": total - computed,
                        "seconds": round(time.perf_counter() - started, 2), "cache": str(store.folder),
                        "cache_mb": round(store.size_bytes() / 2**20, 2), "engine": int8.engine if int8 else "torch"}
        if int8 is not None:
            report[name]["int8_parity" if int8.engine == "onnx-int8" else "onnx_parity"] = int8.parity
        log(f"{name}: backbone outputs for {total} rows: {computed} computed, {total - computed} read from the "
            f"cache in {report[name]['seconds']} s ({store.folder}, {report[name]['cache_mb']} MB)")
    return report

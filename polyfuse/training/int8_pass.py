"""The embedding pass in ONNX Runtime: a frozen backbone exported once to ONNX (fp32, or with its weights
quantized to int8 by ONNX Runtime's dynamic quantization), used to fill the embedding cache when its
outputs stay close to the torch backbone's on the table's own rows.

Why: a frozen backbone's pass over the table is most of a pretrained run's time (e5-small: 35-60
short texts/s here). The fp32 graph gives the same vectors (cosine 1.0000) faster than torch eager:
EfficientNet-Lite0 over 595 mvsa photos took 15.5 s against 34.9 s, export and decoding included. int8
weights make it ~1.4x faster again on matrix products (benchmarks/zoo_presets.py) at a small cost in
accuracy, so `auto` asks for int8 only when a pass has very many rows to compute (MIN_ROWS) and for the
fp32 graph from ONNX_FP32_MIN_IMAGES images (the export, ~5-35 s once per backbone, is kept beside the cache). The
gate compares pooled vectors, not logits: the head is trained on these vectors, so what matters is that
they keep their direction.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from polyfuse.spec.inputs import ONNX_FP32_MIN_IMAGES
from polyfuse.training.trainset import log

# `auto` takes int8 only for passes this long (~8 min of e5-small here): on zhtext (10,000 rows, init's medium
# spec) int8 made training 1.43x faster and cost 0.7 points of test accuracy in one run (benchmarks/int8_pass.py),
# a price worth asking for only where the pass dominates; below it `embed_with: onnx-int8` asks explicitly
MIN_ROWS = 20000
# auto takes the fp32 graph for image backbones from ONNX_FP32_MIN_IMAGES rows (polyfuse.spec.inputs): it pays for
# its export within a few hundred photos (EfficientNet-Lite0, above). Not for text: e5-small over 1,469 mvsa tweets
# took 33.6 s with its export against torch's 28.5 s
MEAN_COS, MIN_COS = 0.995, 0.98  # the int8 gate: every sample row's vector within ~11 degrees, on average ~6
FP32_COS = 0.9999  # the fp32 graph's gate, mean and each row: the same vectors up to rounding (its rows share torch's cache)
SAMPLE_ROWS = 64


class _Features(torch.nn.Module):
    """The backbone's pooled vector as one graph (the part the cache holds)."""

    def __init__(self, encoder: Any, takes_length: bool):
        super().__init__()
        self.encoder, self.takes_length = encoder, takes_length

    def forward(self, x: torch.Tensor, length: torch.Tensor | None = None) -> torch.Tensor:
        return self.encoder.features(x, length if self.takes_length else None)[0]


@dataclass
class Int8Pass:
    """An ONNX Runtime session over the int8 backbone, called like ``encoder.features``."""

    session: Any
    takes_length: bool
    parity: dict[str, float]
    engine: str = "onnx-int8"

    def __call__(self, x: torch.Tensor, length: torch.Tensor | None) -> tuple[torch.Tensor, None]:
        feeds = {"x": x.numpy()}
        if self.takes_length:
            feeds["length"] = length.numpy().astype(np.int64)
        return torch.from_numpy(self.session.run(None, feeds)[0]), None


def engine(mode: str, encoder: Any, to_compute: int, image: bool = False) -> str | None:
    """Which ONNX Runtime pass to try ('onnx-int8', 'onnx': the fp32 graph), or None (torch): the one asked
    for, or (auto) by how many rows are to be computed and, for the fp32 graph, whether they are images."""
    if mode == "torch" or encoder.caches_sequence:  # attention pooling caches whole sequences: not gated here
        return None
    if mode != "auto":
        return mode
    if to_compute >= MIN_ROWS:
        return "onnx-int8"
    return "onnx" if image and to_compute >= ONNX_FP32_MIN_IMAGES else None


def _export(encoder: Any, x: torch.Tensor, length: torch.Tensor | None, path: Path, int8: bool) -> None:
    """fp32 ONNX of the pooled features (dynamic batch, and steps for token ids and waveforms), then int8 if asked."""
    from polyfuse.nn.onnx_int8 import quantize_dynamic

    takes_length = length is not None
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    shapes: list[dict] = [{0: batch, 1: torch.export.Dim("steps", min=2, max=1 << 20)} if x.dim() == 2 else {0: batch}]
    args: tuple = (x,)
    if takes_length:
        shapes.append({0: batch})
        args = (x, length)
    fp32 = path.with_name(path.stem + f".fp32-{os.getpid()}.onnx")
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with warnings.catch_warnings(), open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):
            warnings.simplefilter("ignore")
            program = torch.onnx.export(_Features(encoder, takes_length).eval(), args, dynamo=True,
                                        dynamic_shapes=tuple(shapes), input_names=["x", "length"][: len(args)],
                                        output_names=["features"], external_data=False, optimize=True, verbose=False)
            program.save(str(fp32))
            if int8:
                quantize_dynamic(fp32, tmp)
        os.replace(tmp if int8 else fp32, path)
    finally:
        fp32.unlink(missing_ok=True)
        tmp.unlink(missing_ok=True)


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)


def build(encoder: Any, digest: str, sample: dict[str, np.ndarray], root: Path, threads: int,
          engine: str = "onnx-int8") -> Int8Pass | None:
    """The ONNX Runtime pass (``engine``: 'onnx-int8' or 'onnx') for ``encoder`` if it exports and passes the gate
    on ``sample`` (collated rows); else None (and why, in the log). The file is kept under ``root`` by the
    backbone's digest, pooling and engine."""
    import onnxruntime as ort

    int8 = engine == "onnx-int8"
    what = "int8 embedding pass" if int8 else "ONNX Runtime embedding pass (fp32)"
    x = torch.from_numpy(sample[""][:SAMPLE_ROWS])
    length = torch.from_numpy(sample["length"][:SAMPLE_ROWS]) if "length" in sample else None
    key = hashlib.sha256(f"{digest}|{encoder.pooling}|{x.dim()}|{length is not None}".encode()).hexdigest()[:24]
    path = root / "embeddings" / ("int8" if int8 else "fp32") / f"{key}.onnx"
    try:
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            log(f"{what}: exporting the backbone to ONNX{' and quantizing it' if int8 else ''} (once per backbone)")
            _export(encoder, x, length, path, int8)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = max(1, threads), 1
        run = Int8Pass(ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"]), length is not None,
                       {}, engine)
        with torch.inference_mode():
            ref = encoder.features(x, length)[0].float().numpy()
        got = run(x, length)[0].numpy()
    except Exception as e:  # an architecture the exporter or quantizer cannot take: the torch pass still works
        log(f"{what} unavailable ({type(e).__name__}: {str(e).splitlines()[0][:200]}); using torch fp32")
        return None
    cos = _cosines(ref, got)
    run.parity = {"rows": len(cos), "mean_cos": round(float(cos.mean()), 5), "min_cos": round(float(cos.min()), 5)}
    mean_needed, min_needed = (MEAN_COS, MIN_COS) if int8 else (FP32_COS, FP32_COS)
    if cos.mean() < mean_needed or cos.min() < min_needed:
        log(f"{what} rejected: its vectors' cosine to torch's on {len(cos)} rows is mean "
            f"{cos.mean():.5f}, min {cos.min():.5f} (needs {mean_needed}, {min_needed}); using torch fp32")
        return None
    log(f"{what}: cosine to torch's on {len(cos)} rows mean {cos.mean():.5f}, min {cos.min():.5f}")
    return run

"""The embedding pass in int8: a frozen backbone exported once to ONNX with its weights quantized to
int8 (ONNX Runtime's dynamic quantization), used to fill the embedding cache when its outputs stay
close to the fp32 backbone's on the table's own rows.

Why: a frozen backbone's pass over the table is most of a pretrained run's time (e5-small: 35-60
short texts/s here); int8 weights make it ~1.4x faster on this CPU (benchmarks/zoo_presets.py). The
export and quantization cost ~35 s once per backbone (the file is kept beside the cache); `auto`
uses it only when a pass has very many rows to compute (see MIN_ROWS). The gate compares pooled vectors, not logits:
the head is trained on these vectors, so what matters is that they keep their direction.
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

from polyfuse.training.trainset import log

# `auto` takes int8 only for passes this long (~8 min of e5-small here): on zhtext (10,000 rows, init's medium
# spec) int8 made training 1.43x faster and cost 0.7 points of test accuracy in one run (benchmarks/int8_pass.py),
# a price worth asking for only where the pass dominates; below it `embed_with: onnx-int8` asks explicitly
MIN_ROWS = 20000
MEAN_COS, MIN_COS = 0.995, 0.98  # the gate: every sample row's vector within ~11 degrees, on average ~6
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

    def __call__(self, x: torch.Tensor, length: torch.Tensor | None) -> tuple[torch.Tensor, None]:
        feeds = {"x": x.numpy()}
        if self.takes_length:
            feeds["length"] = length.numpy().astype(np.int64)
        return torch.from_numpy(self.session.run(None, feeds)[0]), None


def wanted(mode: str, encoder: Any, to_compute: int) -> bool:
    """Whether to try the int8 pass: asked for, or (auto) enough rows to pay for the export."""
    if mode == "torch" or encoder.caches_sequence:  # attention pooling caches whole sequences: not gated here
        return False
    return mode == "onnx-int8" or to_compute >= MIN_ROWS


def _export(encoder: Any, x: torch.Tensor, length: torch.Tensor | None, path: Path) -> None:
    """fp32 ONNX of the pooled features (dynamic batch, and steps for token ids and waveforms), then int8."""
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
            quantize_dynamic(fp32, tmp)
        os.replace(tmp, path)
    finally:
        fp32.unlink(missing_ok=True)
        tmp.unlink(missing_ok=True)


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)


def build(encoder: Any, digest: str, sample: dict[str, np.ndarray], root: Path, threads: int) -> Int8Pass | None:
    """The int8 pass for ``encoder`` if it exports and passes the gate on ``sample`` (collated rows); else None
    (and why, in the log). The int8 file is kept under ``root`` by the backbone's digest and pooling."""
    import onnxruntime as ort

    x = torch.from_numpy(sample[""][:SAMPLE_ROWS])
    length = torch.from_numpy(sample["length"][:SAMPLE_ROWS]) if "length" in sample else None
    key = hashlib.sha256(f"{digest}|{encoder.pooling}|{x.dim()}|{length is not None}".encode()).hexdigest()[:24]
    path = root / "embeddings" / "int8" / f"{key}.onnx"
    try:
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            log("int8 embedding pass: exporting the backbone to ONNX and quantizing it (once per backbone)")
            _export(encoder, x, length, path)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = max(1, threads), 1
        run = Int8Pass(ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"]), length is not None, {})
        with torch.inference_mode():
            ref = encoder.features(x, length)[0].float().numpy()
        got = run(x, length)[0].numpy()
    except Exception as e:  # an architecture the exporter or quantizer cannot take: the fp32 pass still works
        log(f"int8 embedding pass unavailable ({type(e).__name__}: {str(e).splitlines()[0][:200]}); using torch fp32")
        return None
    cos = _cosines(ref, got)
    run.parity = {"rows": len(cos), "mean_cos": round(float(cos.mean()), 5), "min_cos": round(float(cos.min()), 5)}
    if cos.mean() < MEAN_COS or cos.min() < MIN_COS:
        log(f"int8 embedding pass rejected: its vectors' cosine to fp32 on {len(cos)} rows is mean "
            f"{cos.mean():.4f}, min {cos.min():.4f} (needs {MEAN_COS}, {MIN_COS}); using torch fp32")
        return None
    log(f"int8 embedding pass: cosine to fp32 on {len(cos)} rows mean {cos.mean():.4f}, min {cos.min():.4f}")
    return run

"""ONNX export of the whole fused model as one graph, verified end to end before it is written.

Graph inputs are exactly the preprocessor's arrays (each input's tensor, ``name__present`` and,
for sequences, ``name__length``) with a dynamic batch axis; graph outputs are probabilities.
Export runs the validation rows from raw records through the shared preprocessing into both
torch and ONNX Runtime and refuses to write a model that does not reproduce torch.
"""
from __future__ import annotations

import json
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from polyfuse.artifact import sha256
from polyfuse.errors import PolyfuseError
from polyfuse.nn.heads import probabilities
from polyfuse.preprocess.pipeline import Decoded
from polyfuse.preprocess.targets import MODALITY_WEIGHTS
from polyfuse.version import __version__

OPSET = 18
FP32_TOLERANCE = 1e-4
INT8_MIN_AGREEMENT = 0.99
INT8_MAX_ACCURACY_DROP = 0.01
CLEAR_MARGIN = 0.1  # fp32 top-1 minus top-2 probability: a decision int8 rounding must not flip


class ExportError(PolyfuseError):
    """The exported model failed its verification gate (or could not be exported)."""


class ProbabilityModel(torch.nn.Module):
    """The fusion model with its heads' activations, taking the flat batch as one dict."""

    def __init__(self, net: torch.nn.Module, spec: Any):
        super().__init__()
        self.net, self.spec = net, spec

    def forward(self, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
        out = self.net(inputs)
        probs = tuple(probabilities(self.spec.outputs[n], out[n]) for n in self.spec.outputs)
        return probs + ((out[MODALITY_WEIGHTS],) if MODALITY_WEIGHTS in out else ())


def output_names(model: Any) -> list[str]:
    names = list(model.spec.outputs)
    return names + [MODALITY_WEIGHTS] if model.spec.fusion.method == "gated" else names


def example_batch(model: Any, decoded: Decoded, n: int = 4) -> dict[str, torch.Tensor]:
    batch = model.preprocessor.collate(decoded, list(range(min(n, len(decoded)))))
    return {k: torch.from_numpy(v) for k, v in batch.items()}


def metadata(model: Any, artifact_dir: Path) -> dict[str, str]:
    schema = {n: {"type": c.type, "column": model.spec.column(n)} for n, c in model.spec.inputs.items()}
    labels = {n: model.preprocessor.classes(n) for n in model.spec.outputs}
    return {
        "polyfuse_version": __version__,
        "polyfuse_spec_sha256": sha256(artifact_dir / "spec.yaml"),
        "polyfuse_inputs": json.dumps(schema),
        "polyfuse_labels": json.dumps(labels),
        "polyfuse_outputs": json.dumps({n: c.type for n, c in model.spec.outputs.items()}),
    }


def sequence_inputs(model: Any) -> list[str]:
    """Graph inputs whose second axis varies with the batch: pretrained text and waveform inputs."""
    from polyfuse.spec.inputs import hf_encoder

    def varies(proc: dict) -> bool:
        return proc.get("kind") == "text" or proc.get("feature") == "wav2vec2"

    return [n for n, c in model.spec.inputs.items() if hf_encoder(c) is not None and varies(hf_encoder(c)._processor)]


def write_onnx(model: Any, example: dict[str, torch.Tensor], path: Path, meta: dict[str, str]) -> None:
    """Export to one self-contained ONNX file (opset 18, dynamic batch) with polyfuse metadata."""
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    shapes = {k: {0: batch} for k in example}
    for key in sequence_inputs(model):  # token ids and raw waveforms: as long as the batch's longest row
        shapes[key] = {0: batch, 1: torch.export.Dim(f"{key}_steps", min=1, max=1 << 20)}
    write_graph(ProbabilityModel(model.net, model.spec).eval(), example, shapes, output_names(model), path, meta)


def write_graph(wrapper: torch.nn.Module, example: dict[str, torch.Tensor], shapes: dict[str, dict],
                outputs: list[str], path: Path, meta: dict[str, str]) -> None:
    """``wrapper(inputs=example)`` as one ONNX file (opset 18; ``shapes``: each input's dynamic axes), checked."""
    import contextlib

    import onnx

    with warnings.catch_warnings(), open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            wrapper, (), kwargs={"inputs": example}, dynamo=True, external_data=False, opset_version=OPSET,
            dynamic_shapes={"inputs": shapes}, input_names=list(example),
            output_names=outputs, optimize=True, verbose=False)
    proto = program.model_proto
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(proto)
    onnx.save_model(proto, str(path))


def torch_probabilities(model: Any, batch: dict[str, np.ndarray], chunk: int = 256) -> dict[str, np.ndarray]:
    wrapper = ProbabilityModel(model.net, model.spec).eval()
    n = len(next(iter(batch.values())))
    parts: dict[str, list] = {o: [] for o in model.spec.outputs}
    with torch.inference_mode():
        for s in range(0, n, chunk):
            out = wrapper({k: torch.from_numpy(v[s : s + chunk]) for k, v in batch.items()})
            for name, p in zip(model.spec.outputs, out):
                parts[name].append(p.numpy())
    return {k: np.concatenate(v) for k, v in parts.items()}


def onnx_probabilities(session: Any, batch: dict[str, np.ndarray], chunk: int = 256) -> dict[str, np.ndarray]:
    names = [i.name for i in session.get_inputs()]
    outs = [o.name for o in session.get_outputs()]
    n = len(next(iter(batch.values())))
    parts: dict[str, list] = {o: [] for o in outs}
    for s in range(0, n, chunk):
        for name, p in zip(outs, session.run(outs, {k: batch[k][s : s + chunk] for k in names})):
            parts[name].append(p)
    return {k: np.concatenate(v) for k, v in parts.items()}


@dataclass
class Check:
    """The outcome of one verification gate, as stored in the manifest and model card."""

    passed: bool
    figures: dict[str, float]
    message: str

    def as_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, **self.figures}


def batch1_latency(run: Any, batch: dict[str, np.ndarray], repeats: int = 60) -> float:
    """Median seconds of one single-row call (a quick figure for the export log, not the bench)."""
    import time

    one = {k: v[:1] for k, v in batch.items()}
    run(one)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        run(one)
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def check_fp32(ref: dict[str, np.ndarray], got: dict[str, np.ndarray]) -> Check:
    delta = max(float(np.abs(ref[k] - got[k]).max()) for k in ref)
    ok = delta <= FP32_TOLERANCE
    return Check(ok, {"max_abs_diff": delta, "tolerance": FP32_TOLERANCE},
                 f"max |Δ probability| = {delta:.2e} (allowed {FP32_TOLERANCE:.0e})")


def check_int8(model: Any, ref: dict[str, np.ndarray], got: dict[str, np.ndarray], target: dict[str, np.ndarray]) -> Check:
    """Top-1 agreement with torch fp32 and accuracy drop, over every classification output.

    Agreement is judged on the rows fp32 decides clearly (top-1 ahead by >= CLEAR_MARGIN): int8's
    rounding moves probabilities by a few hundredths, which flips near-ties without harming the
    model (on mvsa with MiniLM, every one of 12 flips in 320 rows had a margin under 0.1); a broken
    build flips clear decisions too. The accuracy drop is over all rows.
    """
    agreements, clear, drops = [], [], []
    for name, cfg in model.spec.outputs.items():
        if cfg.type in ("category", "binary"):
            same = ref[name].argmax(-1) == got[name].argmax(-1)
            top2 = np.sort(ref[name], axis=-1)[:, -2:]
            decided = (top2[:, 1] - top2[:, 0]) >= CLEAR_MARGIN
            agreements.append(float(same.mean()))
            clear.append(float(same[decided].mean()) if decided.any() else 1.0)
            truth = target[name].astype(int)
            drops.append(float((ref[name].argmax(-1) == truth).mean() - (got[name].argmax(-1) == truth).mean()))
        else:  # numbers and multilabel: agreement of thresholded/rounded outputs is the nearest analogue
            same = np.isclose(ref[name], got[name], atol=0.05) if cfg.type == "number" else ((ref[name] >= .5) == (got[name] >= .5))
            agreements.append(float(np.mean(same)))
            clear.append(float(np.mean(same)))
    agreement, agreement_clear, drop = min(agreements), min(clear), max(drops, default=0.0)
    # one row's flip is never a drop to refuse a build for: on 12 verification rows it is 8 points
    rows = max(len(next(iter(ref.values()))), 1)
    allowed = max(INT8_MAX_ACCURACY_DROP, 1.0 / rows + 1e-9)
    ok = agreement_clear >= INT8_MIN_AGREEMENT and drop <= allowed
    return Check(ok, {"top1_agreement": agreement, "top1_agreement_clear": agreement_clear, "clear_margin": CLEAR_MARGIN,
                      "accuracy_drop": drop, "min_agreement": INT8_MIN_AGREEMENT,
                      "max_accuracy_drop": allowed},
                 f"top-1 agreement {agreement_clear:.2%} on clearly decided rows (needs ≥ {INT8_MIN_AGREEMENT:.0%}; "
                 f"{agreement:.2%} on all), accuracy drop {100 * drop:.2f} points (allowed ≤ {100 * allowed:.1f}: 1 point or one of "
                 f"{rows} rows)")


def temp_path(folder: Path, name: str) -> Path:
    """A hidden temporary file beside ``name`` with the same extension (loaders check it)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{Path(name).stem}.", suffix=f".tmp{Path(name).suffix}", dir=folder)
    os.close(fd)
    os.chmod(tmp, 0o644)  # mkstemp's 0600 would make the renamed model unreadable to a serving user
    return Path(tmp)

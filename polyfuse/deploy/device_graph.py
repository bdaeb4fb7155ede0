"""The model with its preprocessing inside the graph (`polyfuse export m --to onnx|executorch
--with-preprocessing`): inputs are what a phone has, and the verification runs validation rows from
their raw records both ways.

Per input, the graph takes (B = rows in the call):

- image ``name``: RGB uint8 [B, H, W, 3], upright, any H and W (one size per call) + ``name__present`` bool [B];
- audio ``name``: float32 [B, N] mono at the input's ``sample_rate``, any scale (peak-normalised inside), + ``name__length``
  int64 [B] (samples of each row; the rest is padding) + ``name__present`` bool [B];
- text ``name``: int64 [B, L]: hashed n-gram ids (``ngram`` encoder, L = max_ngrams) or vocabulary ids
  (``cnn``/``bigru``/``bilstm``, L = max_length), 0 = padding, computed as the bundle's text_ids.md says;
- number ``name``: float32 [B], NaN = missing; category ``name``: int64 [B], the level's index in the
  contract's vocabulary (0 = unknown), -1 = missing.

What needs Python at run time is refused with the reason: pretrained backbones' own processors, video
and timeseries inputs, audio deltas/denoising/VAD, jieba segmentation and de-identification.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from polyfuse.deploy.onnx import ExportError, ProbabilityModel
from polyfuse.nn import in_graph
from polyfuse.preprocess import image as image_prep
from polyfuse.preprocess.pipeline import Decoded, modality_of
from polyfuse.spec.inputs import hf_encoder

# the largest picture side and clip an ExecuTorch program plans memory for (ONNX takes any)
MAX_SIDE = 1024
MAX_CLIP_SECONDS = 30
# features must match the numpy preprocessing to this, except resized pixels: Pillow rounds each of its
# two passes to 8 bits in an order the graph does not always reproduce, so those may differ by one step
FEATURE_TOLERANCE = 1e-3


def refusal(name: str, cfg: Any) -> str | None:
    """Why input ``name`` cannot be preprocessed inside a graph, or None."""
    if hf_encoder(cfg) is not None:
        return f"input {name!r} uses a pretrained backbone whose processor runs in Python"
    if cfg.type in ("video", "timeseries"):
        return f"input {name!r} is a {cfg.type} input"
    if cfg.type == "audio":
        extra = [k for k, on in (("deltas", cfg.deltas), ("denoise", cfg.denoise), ("trim: vad", cfg.trim == "vad"),
                                 ("track", getattr(cfg, "track", None))) if on]
        return f"audio input {name!r} uses {', '.join(extra)}" if extra else None
    if cfg.type == "text":
        if cfg.tokenizer == "jieba":
            return f"text input {name!r} is segmented by jieba (use tokenizer: char for a phone)"
        if cfg.deidentify:
            return f"text input {name!r} is de-identified by rules that run in Python"
    return None


def check_supported(model: Any) -> None:
    reasons = [r for n, c in model.spec.inputs.items() if (r := refusal(n, c))]
    if reasons:
        raise ExportError("--with-preprocessing cannot put this model's preprocessing in the graph: "
                          + "; ".join(reasons) + ". Export without --with-preprocessing (the app then feeds "
                          "the preprocessed arrays), or retrain without it")


def _module(cfg: Any, state: dict) -> nn.Module:
    if cfg.type == "image":
        return in_graph.ImagePixels(cfg, state)
    if cfg.type == "audio":
        return in_graph.AudioWave(cfg, state)
    if cfg.type == "text":
        return in_graph.HashedIds() if cfg.encoder == "ngram" else in_graph.VocabIds()
    return in_graph.Number(state) if cfg.type == "number" else in_graph.Category()


class Preprocessing(nn.Module):
    """Device tensors -> the arrays the preprocessor collates, keyed as in a collated batch."""

    def __init__(self, model: Any):
        super().__init__()
        check_supported(model)
        self.types = {n: c.type for n, c in model.spec.inputs.items()}
        self.inputs = nn.ModuleDict({n: _module(c, model.preprocessor.state[n]) for n, c in model.spec.inputs.items()})

    def forward(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        batch = {}
        for name, module in self.inputs.items():
            kind = self.types[name]
            if kind == "image":
                out = module(inputs[name], inputs[f"{name}__present"])
            elif kind == "audio":
                out = module(inputs[name], inputs[f"{name}__length"], inputs[f"{name}__present"])
            else:
                out = module(inputs[name])
            batch.update({f"{name}__{k}" if k else name: v for k, v in out.items()})
        return batch


class DeviceModel(nn.Module):
    """Preprocessing and the fused model with its heads' activations, one graph."""

    def __init__(self, model: Any):
        super().__init__()
        self.preprocessing = Preprocessing(model)
        self.model = ProbabilityModel(model.net, model.spec)

    def forward(self, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
        return self.model(self.preprocessing(inputs))


# ----------------------------------------------------------------------------- device inputs
def device_row(model: Any, decoded: Decoded, i: int, pixels: dict[str, np.ndarray | None]) -> dict[str, np.ndarray]:
    """Row ``i`` as an app would feed it (batch of one): ``pixels`` are its images decoded to RGB uint8
    (:func:`decode_pixels`); the other inputs come from the decoded values."""
    row: dict[str, np.ndarray] = {}
    for name, cfg in model.spec.inputs.items():
        value, state = decoded.inputs[name][i], model.preprocessor.state[name]
        if cfg.type == "image":
            img = pixels[name]
            row[name] = np.zeros((1, 1, 1, 3), np.uint8) if img is None else img[None]
            row[f"{name}__present"] = np.array([img is not None])
        elif cfg.type == "audio":
            wave = np.zeros(1, np.float32) if value is None else np.asarray(value, np.float32)
            row[name], row[f"{name}__length"] = wave[None], np.array([len(wave)], np.int64)
            row[f"{name}__present"] = np.array([value is not None])
        elif cfg.type == "text":
            row[name] = modality_of(cfg).collate([value], cfg, state, False, None)[""]
        elif cfg.type == "number":
            row[name] = np.array([np.nan if value is None else value], np.float32)
        else:
            index = {v: k for k, v in enumerate(state["vocab"])}
            row[name] = np.array([-1 if value is None else index.get(value, 0)], np.int64)
    return row


def decode_pixels(model: Any, table: Any, row: int) -> dict[str, np.ndarray | None]:
    """Each image input's cell in table row ``row`` as decoded RGB uint8 [H, W, 3], upright, at its size."""
    from polyfuse.data.io import is_missing, resolve_media

    out: dict[str, np.ndarray | None] = {}
    for name, cfg in model.spec.inputs.items():
        if cfg.type == "image":
            cell = table.columns[model.spec.column(name)][row]
            out[name] = None if is_missing(cell) else np.asarray(image_prep.load_image(
                resolve_media(cell, table.folder), lambda im: image_prep.to_channels(im, 3)), dtype=np.uint8)
    return out


def fixed_clip_samples(cfg: Any) -> int:
    """Samples in a clip input of a fixed-shape build (LiteRT): ExecuTorch's bound, every clip zero-padded to it."""
    return int(MAX_CLIP_SECONDS * cfg.sample_rate)


def padded_clips(model: Any, row: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A device row (batch of one) with each clip zero-padded, or cut, to :func:`fixed_clip_samples`; its
    ``__length`` keeps the samples that are the clip, so the graph reads the same sound."""
    out = dict(row)
    for name, cfg in model.spec.inputs.items():
        if cfg.type == "audio":
            n = fixed_clip_samples(cfg)
            wave = row[name][:, :n]
            out[name] = np.pad(wave, ((0, 0), (0, n - wave.shape[1])))
            out[f"{name}__length"] = np.minimum(row[f"{name}__length"], n)
    return out


def example(model: Any, batch: int, fixed_clips: bool = False) -> dict[str, torch.Tensor]:
    """Synthetic device inputs to trace with: sizes unlike any the model uses, so no axis is specialised
    (clips at :func:`fixed_clip_samples` with ``fixed_clips``)."""
    ex: dict[str, torch.Tensor] = {}
    for name, cfg in model.spec.inputs.items():
        if cfg.type == "image":
            ex[name] = torch.zeros(batch, 37, 53, 3, dtype=torch.uint8)
            ex[f"{name}__present"] = torch.ones(batch, dtype=torch.bool)
        elif cfg.type == "audio":
            n = fixed_clip_samples(cfg) if fixed_clips else 3001
            ex[name] = torch.zeros(batch, n)
            ex[f"{name}__length"] = torch.full((batch,), n, dtype=torch.int64)
            ex[f"{name}__present"] = torch.ones(batch, dtype=torch.bool)
        elif cfg.type == "text":
            ex[name] = torch.ones(batch, cfg.max_ngrams if cfg.encoder == "ngram" else cfg.max_length, dtype=torch.int64)
        elif cfg.type == "number":
            ex[name] = torch.zeros(batch)
        else:
            ex[name] = torch.zeros(batch, dtype=torch.int64)
    return ex


def dynamic_shapes(model: Any, batch: Any, bounded: bool) -> dict[str, dict]:
    """Each device input's varying axes; ``bounded`` (ExecuTorch) caps pictures and clips for memory planning."""
    shapes: dict[str, dict] = {}
    for name, cfg in model.spec.inputs.items():
        axes = {0: batch} if batch is not None else {}
        if cfg.type == "image":
            side = {"min": 2, "max": MAX_SIDE} if bounded else {"min": 2}
            shapes[name] = {**axes, 1: torch.export.Dim(f"{name}_height", **side),
                            2: torch.export.Dim(f"{name}_width", **side)}
            shapes[f"{name}__present"] = dict(axes)
        elif cfg.type == "audio":
            limit = {"max": int(MAX_CLIP_SECONDS * cfg.sample_rate)} if bounded else {}
            shapes[name] = {**axes, 1: torch.export.Dim(f"{name}_samples", min=2, **limit)}
            shapes[f"{name}__length"] = shapes[f"{name}__present"] = dict(axes)
        else:
            shapes[name] = dict(axes)
    return shapes


def feature_gaps(model: Any, prep: Preprocessing, rows: list[dict[str, np.ndarray]],
                 collated: list[dict[str, np.ndarray]]) -> dict[str, float]:
    """Per collated array, the largest |graph - numpy| over the rows."""
    gaps: dict[str, float] = {}
    with torch.inference_mode():
        for row, ref in zip(rows, collated):
            got = prep({k: torch.from_numpy(v) for k, v in row.items()})
            for key, value in ref.items():
                diff = float(np.abs(got[key].numpy().astype(np.float64) - value.astype(np.float64)).max(initial=0.0))
                gaps[key] = max(gaps.get(key, 0.0), diff)
    return gaps


def allowed_gap(model: Any, key: str) -> float:
    """FEATURE_TOLERANCE, or for an image's pixels one 8-bit step in its normalised units."""
    cfg = model.spec.inputs.get(key)
    if cfg is not None and cfg.type == "image":
        return max(FEATURE_TOLERANCE, 1.0 / 255.0 / min(model.preprocessor.state[key]["std"]) + 1e-6)
    return FEATURE_TOLERANCE

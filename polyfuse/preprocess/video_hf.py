"""Video inputs with a pretrained image backbone (``encoder: {hf: ...}``): every frame gets exactly
the pixels the backbone's image processor gives a picture.

Decoding is :mod:`polyfuse.preprocess.video`'s (PyAV; frames sampled at ``fps`` by timestamp, at most
``max_frames``), except that each sampled frame is taken at the video's own resolution straight to
the processor's resize and crop (:func:`polyfuse.preprocess.hf_image.processor_pixels`), so frames are
stored at the processor's output size (e.g. 224 x 224) and are never resized twice; the spec's
``size``, ``mean`` and ``std`` do not apply. ``collate`` rescales and normalises each frame as an
image input's pixels (:func:`polyfuse.preprocess.hf_image.model_pixels`), pads a shorter clip with zero
frames and marks the real ones in ``mask``. numpy + PyAV + Pillow only (the runtime imports this).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from polyfuse.errors import SpecError
from polyfuse.preprocess.budget import UNLIMITED, DecodeBudget


def decode(source: Any, value: Any, cfg: Any, p: dict, budget: DecodeBudget = UNLIMITED) -> np.ndarray:
    """A resolved cell -> uint8 [frames, H, W, 3] (H, W: the processor's output size); the frame
    layout of built-in video inputs, so the linear baseline reads both alike."""
    from polyfuse.preprocess import hf_image, video

    def to_array(img: Any) -> np.ndarray:
        return hf_image.processor_pixels(img, p, budget).transpose(1, 2, 0)

    return video.decode_source(source, value, cfg, budget, to_array)


def collate(values: list[np.ndarray | None], cfg: Any, p: dict, rng: np.random.Generator | None
            ) -> dict[str, np.ndarray]:
    """``""`` float32 [B, max_frames, 3, H, W] (padding 0), ``mask`` [B, max_frames] (1 = a real
    frame), ``length`` and ``present``. With ``rng`` (training), the spec's augment is drawn once per
    clip and applied alike to every frame, as built-in video inputs do."""
    from polyfuse.preprocess.hf_image import model_pixels
    from polyfuse.preprocess.video import pad_clips

    def frames_of(clip: np.ndarray, seed: int | None) -> np.ndarray:
        # a fresh generator from the clip's seed for each frame: the same crop/flip/noise draw on all
        return np.stack([model_pixels(f.transpose(2, 0, 1), p, cfg.augment,
                                      np.random.default_rng(seed) if seed is not None else None) for f in clip])

    return pad_clips(values, cfg.max_frames, tuple(p["output_size"]), frames_of, rng)


def require_image_model(name: str, model: str, folder: Path) -> None:
    """Refuse a model without an image processor for video input ``name`` (a text or audio model:
    its frames would have no pixels to become), saying what to give instead."""
    conf_path = Path(folder) / "preprocessor_config.json"
    conf = json.loads(conf_path.read_text(encoding="utf-8")) if conf_path.is_file() else {}
    kind = conf.get("image_processor_type") or conf.get("feature_extractor_type") or ""
    if conf.get("image_processor_type") or "ImageProcessor" in kind or (
            kind.endswith("FeatureExtractor") and "size" in conf and "sampling_rate" not in conf):
        return
    what = f"its preprocessor is {kind!r}" if kind else "it has no image processor (preprocessor_config.json)"
    raise SpecError(f"inputs.{name}.encoder: {model!r} is not an image model ({what}); a video input runs an "
                    "image backbone on each frame: give a vision model folder (ViT, DINOv2, CLIP, ConvNeXt...) "
                    "with its image processor, or a built-in encoder: cnn_pool, cnn_gru, cnn3d")

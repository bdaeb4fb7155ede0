"""Image processors of pretrained (Hugging Face) backbones, in numpy + Pillow only: the reference's
resize and center crop (``processor_pixels``), then its rescale and normalisation (``model_pixels``).

Images of ``encoder: {hf: ...}`` inputs and each frame of pretrained video inputs
(:mod:`polyfuse.preprocess.video_hf`) go through the same two steps. The processor dict ``p`` comes
from :func:`polyfuse.preprocess.hf.read_processor`. The torch-free runtime imports this module, so
it must never need torch.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from polyfuse.preprocess import image as image_mod
from polyfuse.preprocess.budget import UNLIMITED, DecodeBudget


def to_rgb(img: Any, composite: bool) -> Any:
    """RGB; with the processor's do_convert_rgb, transparency is laid on white as transformers does."""
    from PIL import Image

    if composite and ("A" in img.getbands() or img.info.get("transparency") is not None):
        rgba = img.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", img.size, (255, 255, 255, 255)), rgba).convert("RGB")
    return image_mod.to_channels(img, 3)


def decode(source: Any, p: dict, where: str, budget: DecodeBudget) -> np.ndarray:
    """uint8 [3, H, W]: the reference's Pillow resize and center crop (rescaling waits for collate)."""
    img = image_mod.load_image(source, lambda im: to_rgb(im, p["do_convert_rgb"]), where, budget)
    return processor_pixels(img, p, budget)


def processor_pixels(img: Any, p: dict, budget: DecodeBudget = UNLIMITED) -> np.ndarray:
    """A decoded RGB picture (Pillow image, or uint8 [H, W, 3]) -> uint8 [3, H, W] as the processor
    ``p`` resizes and crops it: what an image input decodes to, and each frame of a video input."""
    from PIL import Image

    if isinstance(img, np.ndarray):
        img = Image.fromarray(np.ascontiguousarray(img, dtype=np.uint8))
    img = to_rgb(img, p["do_convert_rgb"])
    if p["do_resize"]:
        budget.check()
        h, w = _resize_to(img.height, img.width, p)
        img = img.resize((w, h), resample=p["resample"])
    arr = np.asarray(img, dtype=np.uint8).transpose(2, 0, 1)
    convnext_crop = p["crop_pct"] is not None and p["size"]["shortest_edge"] < 384
    if p["do_resize"] and convnext_crop:  # ConvNext crops inside its own resize
        arr = _center_crop(arr, p["size"]["shortest_edge"], p["size"]["shortest_edge"])
    if p["do_center_crop"]:
        arr = _center_crop(arr, p["crop_size"]["height"], p["crop_size"]["width"])
    return np.ascontiguousarray(arr)


def _resize_to(h: int, w: int, p: dict) -> tuple[int, int]:
    """transformers' output size: fixed (height, width), or the shortest edge kept in proportion."""
    size = p["size"]
    if "shortest_edge" not in size:
        return size["height"], size["width"]
    edge = size["shortest_edge"]
    if p["crop_pct"] is not None:
        if edge >= 384:
            return edge, edge
        edge = int(edge / p["crop_pct"])
    short, long = (w, h) if w <= h else (h, w)
    new_long = int(edge * long / short)
    return (new_long, edge) if w <= h else (edge, new_long)


def _center_crop(arr: np.ndarray, ch: int, cw: int) -> np.ndarray:
    """transformers' center_crop: a crop larger than the image pads it with zeros, centred."""
    _, h, w = arr.shape
    if ch > h or cw > w:
        big = np.zeros((arr.shape[0], max(h, ch), max(w, cw)), dtype=arr.dtype)
        top, left = -(-(big.shape[1] - h) // 2), -(-(big.shape[2] - w) // 2)
        big[:, top:top + h, left:left + w] = arr
        arr, h, w = big, big.shape[1], big.shape[2]
    top, left = (h - ch) // 2, (w - cw) // 2
    return arr[:, top:top + ch, left:left + cw]


def collate(values: list, cfg: Any, p: dict, rng: np.random.Generator | None) -> dict[str, np.ndarray]:
    """float32 [B, 3, H, W] rescaled and normalised as the reference does; zeros where missing."""
    h, w = p["output_size"]
    x = np.zeros((len(values), 3, h, w), dtype=np.float32)
    present = np.array([v is not None for v in values], dtype=bool)
    for i in np.flatnonzero(present):
        x[i] = model_pixels(values[i], p, cfg.augment, rng)
    return {"": x, "present": present}


def model_pixels(img: np.ndarray, p: dict, augment: Any = None, rng: np.random.Generator | None = None
                 ) -> np.ndarray:
    """uint8 [3, H, W] processor pixels -> float32 rescaled and normalised as the reference does; with
    ``rng``, the spec's ``augment`` (flips, noise...) first, on [0, 1] pixels."""
    scale = p["rescale_factor"] if p["do_rescale"] else 1.0
    if rng is not None:
        out = image_mod.augment(img.astype(np.float32) / 255.0, augment, rng)
        out = (out.astype(np.float64) * 255.0 * scale).astype(np.float32)
    else:  # float64 then float32, as transformers' rescale
        out = (img.astype(np.float64) * scale).astype(np.float32)
    if not p["do_normalize"]:
        return out
    mean = np.asarray(p["image_mean"], dtype=np.float32)[:, None, None]
    std = np.asarray(p["image_std"], dtype=np.float32)[:, None, None]
    return (out - mean) / std

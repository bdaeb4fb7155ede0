"""Image inputs: decode, grey/RGB, resize, scale to [0, 1], normalise; crop/flip/noise in training.

numpy + pillow only. ``decode`` is the expensive step (done once, then cached); ``collate``
is the cheap per-batch step that training and serving share.

Metadata never goes past decoding: a file's EXIF orientation is applied first (a phone's portrait
photo is stored sideways with a tag saying so, and every viewer shows it upright, so that is what
the model sees too), then everything else (EXIF with GPS, camera, owner; XMP; ICC; comments) is
dropped and only pixels go on.
"""
from __future__ import annotations

import io
import itertools
import re
import struct
from pathlib import Path
from typing import Any, Callable

import numpy as np

from polyfuse.data.io import resolve_media
from polyfuse.errors import BadInputError, MediaTooLarge
from polyfuse.preprocess.budget import UNLIMITED, DecodeBudget

# Formats a request or a table may hold. Each is opened from its header alone, so its size is known
# before decoding; ICO (and others) are left out: Pillow decodes an ICO's embedded PNG inside open().
FORMATS = ("PNG", "JPEG", "BMP", "GIF", "TIFF", "WEBP")
# 16- and 32-bit greys: Pillow's convert("L") clips them at 255, so their range is scaled instead
_WIDE_GREY = {"I;16": 65535.0, "I;16B": 65535.0, "I;16L": 65535.0, "I;16N": 65535.0, "I": 65535.0}


# what Pillow raises on a malformed file: besides OSError and friends, a TIFF whose tile offsets parse as text
# raised TypeError from its loader (found by tests/test_fuzz.py), and truncated headers raise struct.error
MALFORMED = (OSError, SyntaxError, ValueError, TypeError, struct.error)


def _label(source: Any, where: str) -> str:
    return f"image {where or str(source)!r}" if where or not isinstance(source, bytes) else "the image bytes"


def open_image(source: bytes | Path, where: str = "", budget: DecodeBudget = UNLIMITED) -> Any:
    """Open an image from its header only (nothing decoded yet) and check its size against ``budget``."""
    from PIL import Image

    try:
        img = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source, formats=FORMATS)
    except Image.DecompressionBombError as e:  # Pillow's own guard: over twice its pixel limit
        raise MediaTooLarge(f"{_label(source, where)} is too large ({e}); resize it") from None
    except MALFORMED as e:  # UnidentifiedImageError is an OSError
        raise _undecodable(source, where, e) from None
    budget.check_image(*img.size, _label(source, where))
    return img


def _undecodable(source: Any, where: str, e: Exception) -> BadInputError:
    reason = re.sub(r"\s*<_io\.BytesIO object at 0x[0-9a-f]+>|\s*'[^']*'$", "", str(e)) or type(e).__name__
    return BadInputError(f"{_label(source, where)} could not be decoded ({reason}); re-save it as PNG/JPEG "
                         "or leave the cell empty")


def to_channels(img: Any, channels: int) -> Any:
    """Any Pillow mode -> "L" (channels 1) or "RGB" (3); alpha is dropped, wide greys are rescaled."""
    from PIL import Image

    target = "L" if channels == 1 else "RGB"
    if img.mode in _WIDE_GREY or img.mode == "F":
        arr = np.asarray(img, dtype=np.float32)
        top = _WIDE_GREY.get(img.mode) or (1.0 if arr.max(initial=0.0) <= 1.0 else 255.0)  # F: [0, 1] or 0-255
        img = Image.fromarray((np.clip(arr / top, 0.0, 1.0) * 255).round().astype(np.uint8), "L")
    elif img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")  # what Pillow asks for palette transparency (else it warns)
    if img.mode == target:
        return img
    try:
        return img.convert(target)
    except ValueError:  # no direct path for some modes (LAB -> L): go through RGB
        return img.convert("RGB").convert(target)


def load_image(source: bytes | Path | np.ndarray, convert: Callable[[Any], Any], where: str = "",
               budget: DecodeBudget = UNLIMITED) -> Any:
    """Open (header first, checked against ``budget``), decode and ``convert`` a Pillow image.

    Arrays are taken as pixels in [0, 1] or 0-255, [H, W], [H, W, C] or [C, H, W]. Decoding and
    mode conversion both fail on bad data (a truncated stream, a mode with no conversion): either
    is this value's problem, never the caller's, so both give a BadInputError.
    """
    from PIL import Image

    if isinstance(source, np.ndarray):
        arr = source.astype(np.float32)
        if arr.max(initial=0.0) > 1.0:
            arr = arr / 255.0
        arr = np.clip(arr, 0.0, 1.0)
        if arr.ndim == 3 and arr.shape[0] in (1, 3) and arr.shape[-1] not in (1, 3):
            arr = arr.transpose(1, 2, 0)  # CHW -> HWC
        img = Image.fromarray((arr.squeeze() * 255).round().astype(np.uint8))
    else:
        img = open_image(source, where, budget)
    budget.check()
    try:
        img.load()
        budget.check()
        return pixels_only(convert(upright(img)))
    except MALFORMED as e:
        raise _undecodable(source, where, e) from None


EXIF_ORIENTATION = 0x0112


def orientation(img: Any) -> int:
    """The EXIF orientation (1-8; 1 = as stored), 1 when absent or unreadable."""
    try:
        value = img.getexif().get(EXIF_ORIENTATION, 1)
    except Exception:  # noqa: BLE001 - a malformed EXIF block is metadata we drop anyway, not a bad image
        return 1
    return value if value in range(1, 9) else 1


def upright(img: Any) -> Any:
    """The image turned as its EXIF orientation says (unchanged without one, or with a broken one)."""
    from PIL import ImageOps

    return ImageOps.exif_transpose(img) if orientation(img) != 1 else img


def upright_size(img: Any) -> tuple[int, int]:
    """(width, height) as decoded: orientations 5-8 turn the image a quarter."""
    width, height = img.size
    return (height, width) if orientation(img) >= 5 else (width, height)


def pixels_only(img: Any) -> Any:
    """``img`` with every piece of metadata dropped (Pillow copies ``info`` through convert and resize)."""
    from PIL import ImageFile

    if isinstance(img, ImageFile.ImageFile):  # still the opened file (no conversion was needed): it can
        img = img.copy()                       # re-read EXIF from its TIFF tags; a plain copy holds pixels
    img.info = {}
    img._exif = None  # the parsed EXIF cache getexif() would otherwise still return
    return img


def decode_image(source: bytes | Path | np.ndarray, size: tuple[int, int], channels: int, where: str = "",
                 budget: DecodeBudget = UNLIMITED) -> np.ndarray:
    """Decode to float32 [channels, height, width] in [0, 1], resized to ``size`` = (height, width).

    The size is checked against ``budget`` from the header, before the pixels are decoded; the
    deadline is checked between stages.
    """
    from PIL import Image

    height, width = size
    img = load_image(source, lambda im: to_channels(im, channels), where, budget)
    if img.size != (width, height):
        budget.check()
        img = img.resize((width, height), Image.Resampling.BILINEAR)
    out = np.asarray(img, dtype=np.float32) / 255.0
    return out[None] if channels == 1 else out.transpose(2, 0, 1).copy()


def decode(value: Any, cfg: Any, folder: Path, budget: DecodeBudget = UNLIMITED) -> np.ndarray:
    """Decode one table cell (path, bytes or array) of an image input."""
    source = resolve_media(value, folder)
    return decode_image(source, tuple(cfg.size), cfg.channels, where=str(value) if isinstance(value, str) else "",
                        budget=budget)


def fit(values: list[np.ndarray | None], cfg: Any) -> dict:
    """Per-channel mean/std over the training images (unless the spec fixes them)."""
    if cfg.mean is not None and cfg.std is not None:
        mean, std = np.broadcast_to(cfg.mean, (cfg.channels,)), np.broadcast_to(cfg.std, (cfg.channels,))
    else:
        # sums over chunks: a stack of every training image would not fit in memory on large tables
        total, total_sq, count, chunk = np.zeros(cfg.channels), np.zeros(cfg.channels), 0, []
        for v in itertools.chain(values, [None]):  # None last: flushes the final chunk
            if v is not None:
                chunk.append(v)
            if chunk and (len(chunk) == 256 or v is None):
                stack = np.stack(chunk).astype(np.float64)
                total += stack.sum(axis=(0, 2, 3))
                total_sq += (stack**2).sum(axis=(0, 2, 3))
                count += stack.shape[0] * stack.shape[2] * stack.shape[3]
                chunk = []
        if count:
            mean = total / count
            std = np.sqrt(np.maximum(total_sq / count - mean**2, 0.0))
        else:
            mean, std = np.full(cfg.channels, 0.5), np.full(cfg.channels, 0.25)
    return {"mean": [float(m) for m in mean], "std": [max(float(s), 1e-6) for s in std]}


def _random_crop(img: np.ndarray, frac: float, rng: np.random.Generator) -> np.ndarray:
    """Crop a random window ``frac`` of each side and resize it back (bilinear)."""
    _, h, w = img.shape
    ch, cw = max(2, int(round(h * frac))), max(2, int(round(w * frac)))
    top, left = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
    ys = top + np.linspace(0, ch - 1, h, dtype=np.float32)
    xs = left + np.linspace(0, cw - 1, w, dtype=np.float32)
    y0, x0 = np.floor(ys).astype(int), np.floor(xs).astype(int)
    y1, x1 = np.minimum(y0 + 1, h - 1), np.minimum(x0 + 1, w - 1)
    wy, wx = (ys - y0)[None, :, None], (xs - x0)[None, None, :]
    top_row = img[:, y0][:, :, x0] * (1 - wx) + img[:, y0][:, :, x1] * wx
    bottom_row = img[:, y1][:, :, x0] * (1 - wx) + img[:, y1][:, :, x1] * wx
    return (top_row * (1 - wy) + bottom_row * wy).astype(np.float32)


def augment(img: np.ndarray, aug: Any, rng: np.random.Generator) -> np.ndarray:
    """Training-time augmentation of one decoded image (values stay in [0, 1])."""
    if aug.random_crop is not None and aug.random_crop < 1.0:
        img = _random_crop(img, aug.random_crop, rng)
    if aug.flip and rng.random() < 0.5:
        img = img[:, :, ::-1]
    # a random strength per image, so training sees clean through heavily corrupted; with noise_p < 1
    # some images stay clean (no draw at all when noise_p is 1, so earlier seeds reproduce)
    if aug.noise and (aug.noise_p >= 1.0 or rng.random() < aug.noise_p):
        sigma = float(rng.uniform(0.0, aug.noise))
        img = np.clip(img + rng.normal(0.0, sigma, img.shape).astype(np.float32), 0.0, 1.0)
    if aug.erase and rng.random() < aug.erase:
        img = _erase(img, rng)
    return img


def _erase(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random erasing (Zhong et al., 2017): a rectangle of 2-50 % of the area, aspect 0.3-3.3, set to 0."""
    h, w = img.shape[-2:]
    area = rng.uniform(0.02, 0.5) * h * w
    aspect = float(np.exp(rng.uniform(np.log(0.3), np.log(3.3))))
    eh, ew = min(h, max(1, round((area * aspect) ** 0.5))), min(w, max(1, round((area / aspect) ** 0.5)))
    top, left = int(rng.integers(0, h - eh + 1)), int(rng.integers(0, w - ew + 1))
    img = img.copy()
    img[..., top:top + eh, left:left + ew] = 0.0
    return img


def collate(values: list[np.ndarray | None], cfg: Any, state: dict, train: bool, rng: np.random.Generator | None) -> dict[str, np.ndarray]:
    """Stack decoded images into a normalised batch with a presence mask."""
    height, width = cfg.size
    x = np.zeros((len(values), cfg.channels, height, width), dtype=np.float32)
    present = np.zeros(len(values), dtype=bool)
    for i, v in enumerate(values):
        if v is None:
            continue
        x[i] = augment(v, cfg.augment, rng) if train and rng is not None else v
        present[i] = True
    x = normalise(x, state)
    x[~present] = 0.0
    return {"": x, "present": present}


def normalise(x: np.ndarray, state: dict) -> np.ndarray:
    """Images [..., C, H, W] in [0, 1] -> (x - mean) / std with the fitted per-channel state, in place
    when ``x`` is float32 (callers pass batches of their own: a whole split collated at once was
    otherwise held three times over)."""
    mean = np.asarray(state["mean"], dtype=np.float32)[:, None, None]
    std = np.asarray(state["std"], dtype=np.float32)[:, None, None]
    if x.dtype != np.float32:
        return (x - mean) / std
    x -= mean
    x /= std
    return x


def augments(cfg: Any) -> bool:
    """Whether training batches differ from epoch to epoch (so they cannot be cached)."""
    a = cfg.augment
    return bool((a.random_crop is not None and a.random_crop < 1.0) or a.flip or a.noise or a.erase)

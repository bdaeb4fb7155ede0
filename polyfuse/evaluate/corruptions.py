"""Test-time corruptions of decoded input values, for robustness curves.

Each corruption is a plain function ``(value, level, rng) -> value`` applied to one DECODED
value (image float32 [C, H, W] in [0, 1]; audio float32 1-D waveform; text token list;
number float; category str), so the shared preprocessing (normalisation, MFCC, vocabulary
lookup) then runs exactly as in serving. numpy only; deterministic given the
``np.random.Generator``; the input value is never modified in place. A returned ``None``
means the value is now missing. ``CORRUPTIONS`` lists, per modality, each corruption with
its levels, mild to severe; the first level always leaves the value unchanged (clean).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Sequence

import numpy as np

CorruptFn = Callable[[Any, float, np.random.Generator], Any]
DROPOUT_SEGMENT_S = 0.05  # audio dropouts remove whole 50 ms segments, like lost packets
_LETTERS = "abcdefghijklmnopqrstuvwxyz"


# ----------------------------------------------------------------------------- images
def gaussian_noise(img: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Add N(0, sigma²) noise to [0, 1] pixels, clipped back to [0, 1]; sigma 0 is the identity."""
    if sigma <= 0:
        return img
    noisy = img + rng.normal(0.0, sigma, img.shape).astype(np.float32)
    return np.clip(noisy, 0.0, 1.0).astype(np.float32)


def _gaussian_kernel(sigma: float) -> np.ndarray:
    radius = max(1, int(math.ceil(3.0 * sigma)))
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def _convolve_axis(img: np.ndarray, kernel: np.ndarray, axis: int) -> np.ndarray:
    """1-D convolution along ``axis`` with reflected borders (so edges are not darkened)."""
    r = len(kernel) // 2
    pad = [(0, 0)] * img.ndim
    pad[axis] = (r, r)
    padded = np.pad(img.astype(np.float64), pad, mode="reflect")
    n = img.shape[axis]
    out = np.zeros(img.shape, dtype=np.float64)
    for i, w in enumerate(kernel):
        out += w * np.take(padded, np.arange(i, i + n), axis=axis)
    return out


def blur(img: np.ndarray, sigma_frac: float, rng: np.random.Generator) -> np.ndarray:
    """Separable Gaussian blur with sigma = ``sigma_frac`` × the shorter image side (so a level
    means the same on 28 px and 224 px images); 0 is the identity. Uses no randomness."""
    sigma = sigma_frac * min(img.shape[-2:])
    if sigma <= 0:
        return img
    k = _gaussian_kernel(sigma)
    out = _convolve_axis(_convolve_axis(img, k, img.ndim - 2), k, img.ndim - 1)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def occlusion(img: np.ndarray, area: float, rng: np.random.Generator) -> np.ndarray:
    """Black out one randomly placed rectangle covering ``area`` of the image (a square on a
    square image: each side is sqrt(area) of the image's side); 0 is the identity."""
    if area <= 0:
        return img
    h, w = img.shape[-2:]
    side = math.sqrt(min(area, 1.0))
    oh, ow = max(1, int(round(side * h))), max(1, int(round(side * w)))
    top, left = int(rng.integers(0, h - oh + 1)), int(rng.integers(0, w - ow + 1))
    out = img.copy()
    out[..., top:top + oh, left:left + ow] = 0.0
    return out


# ----------------------------------------------------------------------------- audio
def white_noise(wave: np.ndarray, snr_db: float, rng: np.random.Generator) -> np.ndarray:
    """Add white Gaussian noise at ``snr_db`` relative to the clip's mean power (over the whole
    clip, silence included, as training's ``noise_snr_db`` augmentation does); +inf is the identity."""
    if math.isinf(snr_db) and snr_db > 0:
        return wave
    power = float(np.mean(np.asarray(wave, dtype=np.float64) ** 2))
    std = math.sqrt(power / 10.0 ** (snr_db / 10.0))
    return (wave + std * rng.standard_normal(len(wave))).astype(np.float32)


def dropouts(wave: np.ndarray, fraction: float, rng: np.random.Generator, *, sample_rate: int) -> np.ndarray:
    """Zero ``fraction`` of the clip as randomly chosen, non-overlapping 50 ms segments (a grid,
    so the zeroed share is ``fraction`` up to one segment); 0 is the identity."""
    if fraction <= 0 or len(wave) == 0:
        return wave
    seg = max(1, int(round(DROPOUT_SEGMENT_S * sample_rate)))
    n_seg = -(-len(wave) // seg)
    k = min(n_seg, int(round(fraction * n_seg)))
    out = np.array(wave, dtype=np.float32, copy=True)
    for s in rng.choice(n_seg, size=k, replace=False):
        out[s * seg:(s + 1) * seg] = 0.0
    return out


# ----------------------------------------------------------------------------- text
def _typo(token: str, rng: np.random.Generator) -> str:
    """One edit: swap two adjacent characters (if there are two) or substitute one character."""
    chars = list(token)
    if len(chars) >= 2 and rng.random() < 0.5:
        i = int(rng.integers(0, len(chars) - 1))
        chars[i], chars[i + 1] = chars[i + 1], chars[i]
    else:
        i = int(rng.integers(0, len(chars)))
        choices = [c for c in _LETTERS if c != chars[i]]
        chars[i] = choices[int(rng.integers(0, len(choices)))]
    return "".join(chars)


def typos(tokens: list[str] | str, rate: float, rng: np.random.Generator) -> list[str] | str:
    """Give each token a typo (adjacent swap or substitution) with probability ``rate``; a whole
    string (a pretrained encoder's decoded text) is treated as its space-separated words."""
    if rate <= 0:
        return tokens
    if isinstance(tokens, str):
        return " ".join(typos(tokens.split(), rate, rng))
    return [_typo(t, rng) if t and rng.random() < rate else t for t in tokens]


def word_drop(tokens: list[str] | str, p: float, rng: np.random.Generator) -> list[str] | str | None:
    """Drop each token (or word of a string) with probability ``p``; none left means missing (None)."""
    if p <= 0:
        return tokens
    if isinstance(tokens, str):
        kept_words = word_drop(tokens.split(), p, rng)
        return " ".join(kept_words) if kept_words else None
    kept = [t for t in tokens if rng.random() >= p]
    return kept or None


# ----------------------------------------------------------------------------- tabular
def drop_value(value: Any, p: float, rng: np.random.Generator) -> Any:
    """Make a number or category missing (None) with probability ``p``."""
    if p <= 0:
        return value
    return None if rng.random() < p else value


def series_gaps(series: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Make ``fraction`` of a time series' steps gaps (NaN: masked, as a sensor that drops readings); 0 is the identity."""
    if fraction <= 0 or len(series) == 0:
        return series
    out = np.array(series, dtype=np.float32, copy=True)
    k = min(len(out) - 1, int(round(fraction * len(out))))
    out[rng.choice(len(out), size=k, replace=False)] = np.nan
    return out


# ----------------------------------------------------------------------------- registry
@dataclass(frozen=True)
class Corruption:
    """One corruption of one modality: its function, what a level means, and its levels."""

    name: str
    fn: CorruptFn
    param: str  # what a level is, for tables and plots
    levels: tuple[float, ...]
    unit: str = ""
    clean: float = 0.0  # the level that leaves values unchanged
    keywords: dict[str, Any] = field(default_factory=dict)  # bound from the input's spec (sample rate)

    def apply(self, value: Any, level: float, rng: np.random.Generator) -> Any:
        return self.fn(value, level, rng, **self.keywords) if self.keywords else self.fn(value, level, rng)

    def label(self, level: float) -> str:
        return "clean" if level == self.clean else f"{level:g}{self.unit}"

    def with_levels(self, levels: Sequence[float]) -> "Corruption":
        return replace(self, levels=tuple(float(x) for x in levels))


_DROPS = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)  # 1.0 = always missing, so a drop curve ends at "input missing"

CORRUPTIONS: dict[str, tuple[Corruption, ...]] = {
    "image": (
        Corruption("noise", gaussian_noise, "sigma", (0.0, 0.1, 0.2, 0.4, 0.6, 0.8)),
        Corruption("blur", blur, "sigma / side", (0.0, 0.02, 0.04, 0.06, 0.08, 0.12)),
        Corruption("occlusion", occlusion, "area", (0.0, 0.05, 0.1, 0.2, 0.35, 0.5)),
    ),
    "audio": (
        Corruption("noise", white_noise, "SNR", (math.inf, 20.0, 10.0, 5.0, 0.0, -5.0), unit=" dB", clean=math.inf),
        Corruption("dropouts", dropouts, "fraction zeroed", (0.0, 0.1, 0.25, 0.5, 0.75, 0.9)),
    ),
    "text": (
        Corruption("typos", typos, "typo rate per token", (0.0, 0.1, 0.2, 0.4, 0.6, 0.8)),
        Corruption("word_drop", word_drop, "drop probability", _DROPS),
    ),
    "number": (Corruption("drop", drop_value, "drop probability", _DROPS),),
    "category": (Corruption("drop", drop_value, "drop probability", _DROPS),),
    "video": (Corruption("drop", drop_value, "drop probability", _DROPS),),
    "timeseries": (
        Corruption("gaps", series_gaps, "fraction of steps missing", (0.0, 0.1, 0.25, 0.5, 0.75, 0.9)),
        Corruption("drop", drop_value, "drop probability", _DROPS),
    ),
}


def for_input(cfg: Any) -> list[Corruption]:
    """The corruptions of one input's modality, with spec-dependent parameters bound."""
    out = []
    for c in CORRUPTIONS[cfg.type]:
        if c.fn is dropouts:
            c = replace(c, keywords={"sample_rate": int(cfg.sample_rate)})
        out.append(c)
    return out


__all__ = ["Corruption", "CORRUPTIONS", "for_input", "gaussian_noise", "blur", "occlusion", "white_noise",
           "dropouts", "typos", "word_drop", "drop_value"]

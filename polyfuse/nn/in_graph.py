"""Preprocessing as torch modules, for exports whose inputs are what a phone has (``--with-preprocessing``).

Each module turns one input's device tensors (decoded pixels, a waveform, hashed ids, a number) into
exactly the arrays :class:`polyfuse.preprocess.pipeline.Preprocessor` collates for it, so the fused
network behind it is unchanged. They re-express the numpy preprocessing in operators that ONNX and
ExecuTorch both have (matrix products, a convolution, elementwise maths), and the export is refused
unless they reproduce it on the validation rows (:mod:`polyfuse.deploy.device_graph`).

- image: RGB uint8 [B, H, W, 3], any H and W. Pillow's bilinear resize is a separable filter whose
  weights depend only on the sizes, so it is two matrix products built from H and W inside the graph,
  each rounded to 8 bits as Pillow rounds between its horizontal and vertical passes; grey is
  Pillow's ITU-R 601 "L" conversion in its own fixed point.
- audio: a mono float waveform [B, N] at the input's rate, any scale (peak-normalised here, as decoding
  does), with its length in samples: the STFT is a
  convolution with windowed cosine/sine kernels, then the mel filterbank, dB with top_db per clip,
  and the DCT, as :mod:`polyfuse.preprocess.audio` computes them.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from polyfuse.preprocess import audio as audio_prep
from polyfuse.preprocess.tabular import CLIP_STD


def _const(array: Any) -> torch.Tensor:
    return torch.as_tensor(np.asarray(array, dtype=np.float32))


def positions(line: torch.Tensor) -> torch.Tensor:
    """0, 1, ..., n-1 as float32 for a 1-D tensor of length n. A cumulative sum rather than arange: every
    exporter takes it when n is symbolic (LiteRT's converter cannot lower an arange to a symbolic end)."""
    return torch.cumsum(torch.ones_like(line, dtype=torch.float32), dim=0) - 1.0


def bilinear_weights(line: torch.Tensor, size_out: int) -> torch.Tensor:
    """Pillow's BILINEAR resampling coefficients [size_out, n] for an axis as long as ``line`` (support
    widened by the scale when shrinking, so shrinking averages: Pillow's antialiasing)."""
    j = positions(line)
    scale = (j[-1:] + 1.0) / size_out  # [1]: the input length as a tensor, symbolic or not
    widen = torch.clamp(scale, min=1.0)
    centre = (torch.arange(size_out, dtype=torch.float32) + 0.5) * scale
    w = torch.clamp(1.0 - torch.abs((j[None, :] - centre[:, None] + 0.5) / widen), min=0.0)
    return w / w.sum(dim=1, keepdim=True)


def _round8(x: torch.Tensor) -> torch.Tensor:
    """Pillow's 8-bit result of a pass: round half up, clip to 0-255."""
    return torch.clamp(torch.floor(x + 0.5), 0.0, 255.0)


class ImagePixels(nn.Module):
    """RGB uint8 [B, H, W, 3] -> the image input's normalised [B, C, h, w] (Pillow-exact up to rounding ties)."""

    def __init__(self, cfg: Any, state: dict):
        super().__init__()
        self.height, self.width = (int(s) for s in cfg.size)
        self.grey = cfg.channels == 1
        self.register_buffer("mean", _const(state["mean"]).reshape(1, -1, 1, 1))
        self.register_buffer("std", _const(state["std"]).reshape(1, -1, 1, 1))
        # Pillow's L = (19595 R + 38470 G + 7471 B + 2^15) >> 16: exact in float32 (sums stay under 2^24)
        self.register_buffer("luma", _const([19595.0, 38470.0, 7471.0]).reshape(1, 3, 1, 1))

    def forward(self, pixels: torch.Tensor, present: torch.Tensor) -> dict[str, torch.Tensor]:
        x = pixels.permute(0, 3, 1, 2).to(torch.float32)  # [B, 3, H, W]
        if self.grey:
            x = torch.floor(((x * self.luma).sum(dim=1, keepdim=True) + 32768.0) / 65536.0)
        across = bilinear_weights(x[0, 0, 0], self.width)   # Pillow: horizontal pass first
        down = bilinear_weights(x[0, 0, :, 0], self.height)
        x = _round8(torch.matmul(x, across.transpose(0, 1)))
        x = _round8(torch.matmul(down, x))
        x = (x / 255.0 - self.mean) / self.std
        return {"": x * present.to(x.dtype)[:, None, None, None], "present": present}


class AudioWave(nn.Module):
    """Waveform [B, N] float32 + its length in samples [B] -> [B, max_frames, F] features, lengths, presence."""

    def __init__(self, cfg: Any, state: dict):
        super().__init__()
        f = audio_prep.AudioFeatureConfig.from_spec(cfg)
        n_fft, bins = f.n_fft, f.n_fft // 2 + 1
        window = audio_prep.stft_window(f.win_length, n_fft).astype(np.float64)
        lpad = (n_fft - f.win_length) // 2  # the window's zero taps are left out of the kernels
        taps = np.arange(f.win_length) + lpad
        angle = 2 * np.pi * np.outer(np.arange(bins), taps) / n_fft
        kernels = np.concatenate([np.cos(angle), -np.sin(angle)]) * window[taps]
        self.register_buffer("kernels", _const(kernels[:, None, :]))  # [2 * bins, 1, win_length]
        fb = audio_prep.mel_filterbank(f.sample_rate, n_fft, f.n_mels, f.fmin, f.fmax)
        self.register_buffer("mel", _const(fb.T))
        self.mfcc = f.features == "mfcc"
        self.register_buffer("dct", _const(audio_prep.dct_ortho(f.n_mfcc, f.n_mels) if self.mfcc else np.eye(1)))
        self.register_buffer("mean", _const(state["mean"]))
        self.register_buffer("std", _const(state["std"]))
        self.bins, self.hop, self.max_samples, self.frames = bins, f.hop_length, f.max_samples, f.max_frames
        self.left = n_fft // 2 - lpad  # so that kernel tap k meets the sample librosa's centred frame puts there

    def forward(self, wave: torch.Tensor, length: torch.Tensor, present: torch.Tensor) -> dict[str, torch.Tensor]:
        # peak 1 over the whole clip, as decoding does before anything is cut (PCM's scale does not matter)
        ours = positions(wave[0])[None, :] < length[:, None].to(torch.float32)
        wave = wave / torch.clamp(torch.where(ours, wave.abs(), torch.zeros_like(wave)).amax(1, keepdim=True), min=1e-12)
        # every clip cropped/zero-padded to max_samples: from here on every shape is fixed
        wave = torch.cat([wave, torch.zeros_like(wave[:, :1]).expand(-1, self.max_samples)], 1)[:, : self.max_samples]
        samples = torch.clamp(length, max=self.max_samples)
        wave = wave * (torch.arange(self.max_samples)[None, :] < samples[:, None]).to(wave.dtype)
        padded = nn.functional.pad(wave[:, None, :], (self.left, self.kernels.shape[-1]))
        spec = nn.functional.conv1d(padded, self.kernels, stride=self.hop)[:, :, : self.frames]  # [B, 2 bins, T]
        power = spec[:, : self.bins] ** 2 + spec[:, self.bins :] ** 2
        db = 10.0 * torch.log10(torch.clamp(torch.matmul(power.transpose(1, 2), self.mel), min=audio_prep.AMIN))
        frames = torch.where(present, 1 + samples // self.hop, torch.zeros_like(samples))
        valid = (torch.arange(self.frames)[None, :] < frames[:, None])[:, :, None]
        top = torch.where(valid, db, torch.full_like(db, -1e30)).amax(dim=(1, 2), keepdim=True)
        feat = torch.maximum(db, top - audio_prep.TOP_DB)
        if self.mfcc:
            feat = torch.matmul(feat, self.dct)
        feat = (feat - self.mean) / self.std
        return {"": feat * valid.to(feat.dtype), "length": frames, "present": present}


class HashedIds(nn.Module):
    """Hashed n-gram ids [B, max_ngrams] (the app computes them: docs/phone.md) -> the ngram input."""

    def forward(self, ids: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"": ids, "present": ids[:, 0] > 0}


class VocabIds(nn.Module):
    """Vocabulary ids [B, max_length], 0 = padding -> ids, lengths and presence."""

    def forward(self, ids: torch.Tensor) -> dict[str, torch.Tensor]:
        length = (ids > 0).sum(dim=1)
        return {"": ids, "length": length, "present": length > 0}


class Number(nn.Module):
    """float32 [B], NaN = missing -> imputed, standardised [B, 1] and presence."""

    def __init__(self, state: dict):
        super().__init__()
        self.register_buffer("stats", _const([state["impute"], state["mean"], state["std"]]))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        present = ~torch.isnan(x)
        raw = torch.where(present, x, self.stats[0].expand_as(x))
        z = torch.clamp((raw - self.stats[1]) / self.stats[2], -CLIP_STD, CLIP_STD)
        return {"": z[:, None], "present": present}


class Category(nn.Module):
    """int64 [B]: the level's index in the contract's vocabulary (0 = unknown), -1 = missing."""

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        present = x >= 0
        return {"": torch.clamp(x, min=0), "present": present}

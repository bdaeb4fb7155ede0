"""Audio inputs: MFCC / log-mel features, denoising and training-time augmentation of the waves
that :mod:`polyfuse.preprocess.audio_file` decodes.

numpy + soundfile + soxr only: the inference runtime imports this without torch, librosa or
scipy. Features reproduce librosa's definitions (``melspectrogram`` with ``center=True,
pad_mode='constant', htk=False, norm='slaney'`` -> ``power_to_db(ref=1, amin=1e-10,
top_db=80)`` -> DCT-II ortho; ``feature.delta(width=9, mode='interp')``) in float32.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from polyfuse.errors import SpecError
from polyfuse.preprocess.audio_file import decode_audio
from polyfuse.preprocess import vad
from polyfuse.preprocess.budget import UNLIMITED, DecodeBudget

AMIN, TOP_DB, _DELTA_WIDTH = 1e-10, 80.0, 9


# ----------------------------------------------------------------------------- config
@dataclass
class AudioFeatureConfig:
    sample_rate: int = 16000
    features: str = "mfcc"  # 'mfcc' | 'logmel'
    n_mfcc: int = 40
    n_mels: int = 64
    window_ms: float = 25.0
    hop_ms: float = 10.0
    max_seconds: float = 1.0
    deltas: bool = False
    denoise: bool = False
    fmin: float = 0.0
    fmax: float | None = None

    def __post_init__(self) -> None:
        if self.features not in ("mfcc", "logmel"):
            raise SpecError(f"audio features must be 'mfcc' or 'logmel', got {self.features!r}")
        if self.features == "mfcc" and self.n_mfcc > self.n_mels:
            raise SpecError(f"n_mfcc ({self.n_mfcc}) cannot exceed n_mels ({self.n_mels})")
        if self.hop_length < 1 or self.win_length < 1:
            raise SpecError(f"window_ms/hop_ms too small for sample_rate {self.sample_rate}")

    @classmethod
    def from_spec(cls, obj: Any) -> "AudioFeatureConfig":
        """Build from any object (e.g. the spec's AudioInput) or mapping with these field names."""
        get = obj.get if isinstance(obj, dict) else (lambda k, d: getattr(obj, k, d))
        return cls(**{f.name: get(f.name, f.default) for f in fields(cls)})

    @property
    def win_length(self) -> int:
        return int(round(self.sample_rate * self.window_ms / 1000.0))

    @property
    def hop_length(self) -> int:
        return int(round(self.sample_rate * self.hop_ms / 1000.0))

    @property
    def n_fft(self) -> int:
        return 1 << max(0, (self.win_length - 1).bit_length())

    @property
    def max_samples(self) -> int:
        return int(round(self.sample_rate * self.max_seconds))

    @property
    def max_frames(self) -> int:
        return 1 + self.max_samples // self.hop_length

    @property
    def n_features(self) -> int:
        return (self.n_mfcc if self.features == "mfcc" else self.n_mels) * (3 if self.deltas else 1)


# ----------------------------------------------------------------------------- features
def _hz_to_mel(f):
    f = np.asarray(f, dtype=np.float64)
    lin = f / (200.0 / 3)
    log = 15.0 + np.log(np.maximum(f, 1e-10) / 1000.0) / (np.log(6.4) / 27.0)
    return np.where(f >= 1000.0, log, lin)


def _mel_to_hz(m):
    m = np.asarray(m, dtype=np.float64)
    return np.where(m >= 15.0, 1000.0 * np.exp((np.log(6.4) / 27.0) * (m - 15.0)), m * (200.0 / 3))


@lru_cache(maxsize=16)
def mel_filterbank(sr: int, n_fft: int, n_mels: int, fmin: float = 0.0, fmax: float | None = None) -> np.ndarray:
    """Slaney-style, slaney-normalised mel filterbank [n_mels, 1 + n_fft // 2] (= librosa.filters.mel)."""
    fmax = sr / 2.0 if fmax is None else fmax
    fft_f = np.fft.rfftfreq(n_fft, 1.0 / sr)
    mel_f = _mel_to_hz(np.linspace(_hz_to_mel(fmin), _hz_to_mel(fmax), n_mels + 2))
    fdiff, ramps = np.diff(mel_f), mel_f[:, None] - fft_f[None, :]
    lower, upper = -ramps[:-2] / fdiff[:-1, None], ramps[2:] / fdiff[1:, None]
    w = np.maximum(0.0, np.minimum(lower, upper)) * (2.0 / (mel_f[2:] - mel_f[:-2]))[:, None]
    return w.astype(np.float32)


@lru_cache(maxsize=16)
def dct_ortho(n_out: int, n_in: int) -> np.ndarray:
    k, n = np.arange(n_out)[:, None], np.arange(n_in)[None, :]
    m = np.sqrt(2.0 / n_in) * np.cos(np.pi * k * (2 * n + 1) / (2 * n_in))
    m[0] /= np.sqrt(2.0)
    return m.T.astype(np.float32)  # [n_in, n_out]


@lru_cache(maxsize=16)
def stft_window(win_length: int, n_fft: int) -> np.ndarray:
    w = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(win_length) / win_length)  # periodic hann
    lpad = (n_fft - win_length) // 2
    return np.pad(w, (lpad, n_fft - win_length - lpad)).astype(np.float32)


@lru_cache(maxsize=4)
def _savgol(order: int) -> np.ndarray:
    k = np.arange(_DELTA_WIDTH) - _DELTA_WIDTH // 2
    return np.linalg.pinv(np.vander(k, order + 1, increasing=True))[order] * np.prod(range(1, order + 1))


def _delta(x: np.ndarray, lengths: np.ndarray, order: int) -> np.ndarray:
    """librosa.feature.delta(axis=time, width=9, mode='interp') per clip over its valid frames.

    With polyorder == deriv, savgol's 'interp' edge fit is a constant equal to the first/last
    interior value, so edges just repeat frames 4 and L-5. Clips shorter than the width
    (where librosa raises) get the derivative of one polynomial fitted to all their frames.
    """
    half, T = _DELTA_WIDTH // 2, x.shape[1]
    xp = np.pad(x, ((0, 0), (half, half), (0, 0)))
    c = _savgol(order)
    d = sum(c[j] * xp[:, j:j + T] for j in range(_DELTA_WIDTH))
    idx = np.clip(np.arange(T)[None, :], half, np.maximum(lengths[:, None] - half - 1, half)).clip(max=T - 1)
    d = np.take_along_axis(d, idx[:, :, None], axis=1)
    for b in np.flatnonzero(lengths < _DELTA_WIDTH):
        L = int(lengths[b])
        a = np.vander(np.arange(L) - (L - 1) / 2, order + 1, increasing=True)
        d[b, :L] = (np.linalg.pinv(a)[order] @ x[b, :L]) * np.prod(range(1, order + 1))
    return d.astype(np.float32)


def _denoise(power: np.ndarray, valid: np.ndarray, over: float = 1.5, floor: float = 0.05) -> np.ndarray:
    """Spectral subtraction: per-bin noise = mean power of each clip's quietest 10 % real frames."""
    energy = np.where(valid, power.sum(axis=2), np.inf)
    rank = np.argsort(np.argsort(energy, axis=1, kind="stable"), axis=1)
    n_quiet = np.maximum(1, valid.sum(axis=1) // 10)
    quiet = (rank < n_quiet[:, None]).astype(np.float32)
    noise = np.einsum("bt,btf->bf", quiet, power) / n_quiet[:, None]
    return np.maximum(power - over * noise[:, None, :], floor * power)


def _compute(waves: np.ndarray, n_samples: np.ndarray, cfg: AudioFeatureConfig) -> tuple[np.ndarray, np.ndarray]:
    """Features of zero-padded waves [B, N]; frames past each clip's own frame count are zeroed."""
    n_fft, hop = cfg.n_fft, cfg.hop_length
    padded = np.pad(waves, ((0, 0), (n_fft // 2, n_fft // 2)))
    frames = np.lib.stride_tricks.sliding_window_view(padded, n_fft, axis=1)[:, ::hop]  # [B, T, n_fft]
    power = np.abs(np.fft.rfft(frames * stft_window(cfg.win_length, n_fft), axis=2)) ** 2
    lengths = (1 + n_samples // hop).astype(np.int64)
    valid = np.arange(frames.shape[1])[None, :] < lengths[:, None]
    if cfg.denoise:
        power = _denoise(power, valid)
    mel = power.astype(np.float32) @ mel_filterbank(cfg.sample_rate, n_fft, cfg.n_mels, cfg.fmin, cfg.fmax).T
    db = 10.0 * np.log10(np.maximum(mel, AMIN))
    top = np.where(valid, db.max(axis=2), -np.inf).max(axis=1)  # top_db per clip, real frames only
    feat = np.maximum(db, (top - TOP_DB)[:, None, None])
    if cfg.features == "mfcc":
        feat = feat @ dct_ortho(cfg.n_mfcc, cfg.n_mels)
    if cfg.deltas:
        feat = np.concatenate([feat, _delta(feat, lengths, 1), _delta(feat, lengths, 2)], axis=2)
    return np.where(valid[:, :, None], feat, 0.0).astype(np.float32), lengths


def features(wave: np.ndarray, cfg: AudioFeatureConfig) -> np.ndarray:
    """MFCC or log-mel features [n_frames, n_features] (float32) of one whole clip, librosa-exact."""
    w = np.asarray(wave, dtype=np.float32).reshape(1, -1)
    return _compute(w, np.array([w.shape[1]]), cfg)[0][0]


def features_batch(waves: list[np.ndarray], cfg: AudioFeatureConfig) -> tuple[np.ndarray, np.ndarray]:
    """Vectorised features of many clips: ([B, max_frames, n_features] float32, lengths [B] int64).

    Each clip is first cropped to ``cfg.max_samples`` (keeping the start), so row i equals
    ``features(waves[i][:cfg.max_samples])`` zero-padded to ``max_frames``; frames at or past
    ``lengths[i]`` are zero.
    """
    crop = [np.asarray(w, dtype=np.float32).reshape(-1)[: cfg.max_samples] for w in waves]
    n = np.array([len(w) for w in crop], dtype=np.int64)
    batch = np.zeros((len(crop), int(n.max(initial=0))), dtype=np.float32)
    for i, w in enumerate(crop):
        batch[i, : len(w)] = w
    feats, lengths = _compute(batch, n, cfg)
    out = np.zeros((len(crop), cfg.max_frames, cfg.n_features), dtype=np.float32)
    out[:, : feats.shape[1]] = feats[:, : cfg.max_frames]
    return out, lengths


# ----------------------------------------------------------------------------- augmentation
def augment_wave(wave: np.ndarray, rng: np.random.Generator, *, sample_rate: int,
                 speed: tuple[float, float] | None = None, random_crop: bool = False,
                 max_seconds: float = 1.0, noise_snr_db: tuple[float, float] | None = None,
                 noise_p: float = 1.0) -> np.ndarray:
    """Training-only augmentation: speed perturbation, random crop / offset, white noise.

    Deterministic given ``rng``. Noise goes on a ``noise_p`` share of clips. Speed factor f plays
    the clip f times faster (length / f).
    With ``random_crop`` a longer clip yields a random ``max_seconds`` window; a shorter one
    is shifted right by at most 10 % of ``max_seconds`` (never past it) so words stay in view.
    """
    w = np.asarray(wave, dtype=np.float32).reshape(-1)
    if speed is not None and len(w) > 1:
        f = float(rng.uniform(speed[0], speed[1]))
        n_out = max(1, int(round(len(w) / f)))
        w = np.interp(np.arange(n_out) * f, np.arange(len(w)), w).astype(np.float32)
    if random_crop:
        max_n = int(round(max_seconds * sample_rate))
        if len(w) > max_n:
            start = int(rng.integers(0, len(w) - max_n + 1))
            w = w[start:start + max_n]
        else:
            off = int(rng.integers(0, min(max_n - len(w), max_n // 10) + 1))
            w = np.concatenate([np.zeros(off, np.float32), w])
    if noise_snr_db is not None and len(w) and (noise_p >= 1.0 or rng.random() < noise_p):
        snr = float(rng.uniform(noise_snr_db[0], noise_snr_db[1]))
        std = np.sqrt(float(np.mean(w.astype(np.float64) ** 2)) / 10.0 ** (snr / 10.0))
        w = w + (std * rng.standard_normal(len(w))).astype(np.float32)
    return w.astype(np.float32)


# ----------------------------------------------------------------------------- pipeline hooks
def decode(value: Any, cfg: Any, folder: Path, budget: DecodeBudget = UNLIMITED) -> np.ndarray:
    """Decode one table cell (path, bytes or array) of an audio input to a normalised waveform."""
    from polyfuse.data.io import resolve_media  # local: keeps this module's import light for the runtime

    source = resolve_media(value, folder)
    where = str(value) if isinstance(value, str) else ""
    if getattr(cfg, "track", None) == "audio":  # the sound of a video: mono, at the input's rate
        from polyfuse.preprocess.video import sound_of

        source = sound_of(source, cfg, where, cfg.sample_rate, budget)
    return vad.apply(decode_audio(source, cfg.sample_rate, where=where, budget=budget), cfg, cfg.sample_rate)


def fit(values: list[np.ndarray | None], cfg: Any) -> dict:
    """Per-feature mean/std over the valid frames of the (unaugmented) training clips."""
    fcfg = AudioFeatureConfig.from_spec(cfg)
    waves = [v for v in values if v is not None]
    total = np.zeros(fcfg.n_features)
    total_sq = np.zeros(fcfg.n_features)
    count = 0
    for start in range(0, len(waves), 256):
        feats, lengths = features_batch(waves[start : start + 256], fcfg)
        valid = np.arange(feats.shape[1])[None, :] < lengths[:, None]
        frames = feats[valid].astype(np.float64)
        total += frames.sum(0)
        total_sq += (frames**2).sum(0)
        count += len(frames)
    mean = total / max(count, 1)
    std = np.sqrt(np.maximum(total_sq / max(count, 1) - mean**2, 1e-8))
    return {"mean": mean.round(6).tolist(), "std": std.round(6).tolist(), **vad.state(cfg)}


def collate(values: list[np.ndarray | None], cfg: Any, state: dict, train: bool,
            rng: np.random.Generator | None) -> dict[str, np.ndarray]:
    """Features [B, max_frames, F] standardised with the fitted state, frame lengths, presence."""
    fcfg = AudioFeatureConfig.from_spec(cfg)
    present = np.asarray([v is not None for v in values], dtype=bool)
    waves = [v if v is not None else np.zeros(fcfg.hop_length, np.float32) for v in values]
    if train and rng is not None:
        aug = cfg.augment
        waves = [augment_wave(w, rng, sample_rate=fcfg.sample_rate, speed=aug.speed, random_crop=aug.random_crop,
                              max_seconds=fcfg.max_seconds, noise_snr_db=aug.noise_snr_db,
                              noise_p=aug.noise_p) if p else w
                 for w, p in zip(waves, present)]
    feats, lengths = features_batch(waves, fcfg)
    mean = np.asarray(state["mean"], dtype=np.float32)
    std = np.asarray(state["std"], dtype=np.float32)
    feats = (feats - mean) / std
    valid = (np.arange(feats.shape[1])[None, :] < lengths[:, None]) & present[:, None]
    feats[~valid] = 0.0  # padding and absent clips carry no signal
    lengths[~present] = 0
    return {"": feats, "length": lengths, "present": present}


def augments(cfg: Any) -> bool:
    a = cfg.augment
    return bool(a.speed or a.random_crop or a.noise_snr_db)

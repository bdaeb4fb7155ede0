"""Audio feature extractors of pretrained (Hugging Face) backbones, in numpy only.

Reproduces transformers' ``Wav2Vec2FeatureExtractor`` (wav2vec2 / HuBERT: per-clip zero mean,
unit variance), ``WhisperFeatureExtractor`` (log-mel over a fixed window of ``chunk_length`` s)
and ``ASTFeatureExtractor`` (Kaldi-style fbank: transformers' numpy path, the one it takes when
torchaudio is not installed). Measured against transformers 5 (tests/test_hf_preprocess.py):
wav2vec2 and AST identical, Whisper within 6e-6 (its reference runs ``torch.stft`` in float32, this
runs float64 FFTs). Imported by the torch-free runtime: never import torch here.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

from polyfuse.preprocess.audio import mel_filterbank

SUPPORTED = ("Wav2Vec2FeatureExtractor", "WhisperFeatureExtractor", "ASTFeatureExtractor")
_KINDS = {"Wav2Vec2FeatureExtractor": "wav2vec2", "WhisperFeatureExtractor": "whisper",
          "ASTFeatureExtractor": "ast"}
_AST_FRAME, _AST_HOP, _AST_FFT = 400, 160, 512  # fixed in transformers' AST extractor (25 ms / 10 ms at 16 kHz)


def settings(ftype: str, conf: dict) -> dict:
    """The JSON-able settings of one feature extractor (``ftype`` is one of ``SUPPORTED``)."""
    sr = int(conf.get("sampling_rate", 16000))
    kind = _KINDS[ftype]
    if kind == "wav2vec2":
        return {"feature": kind, "sampling_rate": sr, "do_normalize": bool(conf.get("do_normalize", True)),
                "padding_value": float(conf.get("padding_value", 0.0))}
    if kind == "whisper":
        hop, chunk = int(conf.get("hop_length", 160)), int(conf.get("chunk_length", 30))
        return {"feature": kind, "sampling_rate": sr, "n_fft": int(conf.get("n_fft", 400)), "hop_length": hop,
                "n_mels": int(conf.get("feature_size", 80)), "n_samples": chunk * sr,
                "nb_max_frames": chunk * sr // hop}
    return {"feature": kind, "sampling_rate": sr, "n_mels": int(conf.get("num_mel_bins", 128)),
            "max_length": int(conf.get("max_length", 1024)), "do_normalize": bool(conf.get("do_normalize", True)),
            "mean": float(conf.get("mean", -4.2677393)), "std": float(conf.get("std", 4.5689974))}


def features(waves: list[np.ndarray], proc: dict) -> tuple[np.ndarray, np.ndarray]:
    """(batch features, valid lengths int64) of mono float32 waves at the processor's rate."""
    return {"wav2vec2": _wav2vec2, "whisper": _whisper, "ast": _ast}[proc["feature"]](waves, proc)


# ----------------------------------------------------------------------------- wav2vec2 / HuBERT
def _wav2vec2(waves: list[np.ndarray], proc: dict) -> tuple[np.ndarray, np.ndarray]:
    """[B, S] raw waves padded to the longest, each normalised over its own samples."""
    lengths = np.array([len(w) for w in waves], dtype=np.int64)
    out = np.full((len(waves), int(lengths.max(initial=1))), proc["padding_value"], dtype=np.float32)
    for i, w in enumerate(waves):
        w = np.asarray(w, dtype=np.float32)
        if proc["do_normalize"] and len(w):  # float32 mean/var, as the reference computes them
            w = (w - w.mean()) / np.sqrt(w.var() + 1e-7)
        out[i, : len(w)] = w
    return out, lengths


# ----------------------------------------------------------------------------- Whisper
@lru_cache(maxsize=8)
def _hann(n: int, periodic: bool) -> np.ndarray:
    return np.hanning(n + 1)[:-1] if periodic else np.hanning(n)


def _whisper(waves: list[np.ndarray], proc: dict) -> tuple[np.ndarray, np.ndarray]:
    """[B, n_mels, nb_max_frames] log-mel of each clip padded (or cut) to ``n_samples``."""
    n, n_fft, hop = proc["n_samples"], proc["n_fft"], proc["hop_length"]
    batch = np.zeros((len(waves), n), dtype=np.float32)
    for i, w in enumerate(waves):
        batch[i, : min(len(w), n)] = w[:n]
    lengths = -(-np.minimum([len(w) for w in waves], n).astype(np.int64) // hop)  # ceil
    padded = np.pad(batch.astype(np.float64), ((0, 0), (n_fft // 2, n_fft // 2)), mode="reflect")
    # every hop-th window, less the last one (as Whisper)
    frames = np.lib.stride_tricks.sliding_window_view(padded, n_fft, axis=1)[:, ::hop][:, :-1]
    power = np.abs(np.fft.rfft(frames * _hann(n_fft, True), axis=2)) ** 2
    # Whisper's filters stop at 8 kHz whatever the rate; ours equal transformers' slaney filters in float32
    mel = power @ mel_filterbank(proc["sampling_rate"], n_fft, proc["n_mels"], 0.0, 8000.0).T.astype(np.float64)
    log = np.log10(np.maximum(mel, 1e-10))
    log = np.maximum(log, log.max(axis=(1, 2), keepdims=True) - 8.0)
    return ((log + 4.0) / 4.0).transpose(0, 2, 1).astype(np.float32), lengths


# ----------------------------------------------------------------------------- AST (Kaldi fbank)
def _kaldi_mel(f):
    return 1127.0 * np.log(1.0 + np.asarray(f, dtype=np.float64) / 700.0)


@lru_cache(maxsize=8)
def _ast_filters(sr: int, n_mels: int) -> np.ndarray:
    """transformers' mel_filter_bank(257, n_mels, 20, sr // 2, sr, norm=None, mel_scale="kaldi",
    triangularize_in_mel_space=True): triangles in mel space, [n_bins, n_mels] float64."""
    mel_f = np.linspace(_kaldi_mel(20.0), _kaldi_mel(sr // 2), n_mels + 2)
    fft_mel = _kaldi_mel(sr / _AST_FFT * np.arange(_AST_FFT // 2 + 1))
    diff, slopes = np.diff(mel_f), mel_f[None, :] - fft_mel[:, None]
    return np.maximum(0.0, np.minimum(-slopes[:, :-2] / diff[:-1], slopes[:, 2:] / diff[1:]))


def _fbank(wave: np.ndarray, sr: int, n_mels: int) -> np.ndarray:
    """Log mel fbank [frames, n_mels] of one clip (no centre padding; clips under 25 ms give no
    frame, as in the reference)."""
    w = np.asarray(wave, dtype=np.float32).astype(np.float64)
    if len(w) < _AST_FRAME:
        return np.zeros((0, n_mels), dtype=np.float32)
    frames = np.lib.stride_tricks.sliding_window_view(w, _AST_FRAME)[::_AST_HOP]
    frames = frames - frames.mean(axis=1, keepdims=True)  # remove_dc_offset
    emph = np.concatenate([frames[:, :1] * (1 - 0.97), frames[:, 1:] - 0.97 * frames[:, :-1]], axis=1)
    # the reference keeps the spectrum as complex64 before taking the power
    spec = np.fft.rfft(emph * _hann(_AST_FRAME, False), n=_AST_FFT, axis=1).astype(np.complex64)
    power = np.abs(spec, dtype=np.float64) ** 2
    mel = np.maximum(1.192092955078125e-07, power @ _ast_filters(sr, n_mels))
    return np.log(mel).astype(np.float32)


def _ast(waves: list[np.ndarray], proc: dict) -> tuple[np.ndarray, np.ndarray]:
    """[B, max_length, n_mels]: fbank zero-padded (or cut) to ``max_length`` frames, then
    normalised as the reference does (padding frames too: they become -mean / (2 std))."""
    t = proc["max_length"]
    out = np.zeros((len(waves), t, proc["n_mels"]), dtype=np.float32)
    lengths = np.zeros(len(waves), dtype=np.int64)
    for i, w in enumerate(waves):
        fb = _fbank(w, proc["sampling_rate"], proc["n_mels"])[:t]
        out[i, : len(fb)], lengths[i] = fb, len(fb)
    if proc["do_normalize"]:
        out = (out - proc["mean"]) / (proc["std"] * 2)
    return out.astype(np.float32), lengths


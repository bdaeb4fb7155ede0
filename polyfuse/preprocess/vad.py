"""Voice activity: each audio clip cut to the span where someone speaks (``trim: vad`` on an audio input),
by Silero VAD's sequence ONNX model (the zoo's ``silero-vad``), torch-free, in training, every runtime
and the server alike.

The model scores 32 ms frames (512 samples at 16 kHz, each with the 64 samples before it as context)
in one ONNX call per block of frames, carrying its LSTM state between blocks. The clip is kept from
``PAD_S`` before the first frame scored at or above ``THRESHOLD`` to ``PAD_S`` after the last; a clip
with no such frame is kept whole (a quiet speaker must not lose the row). The model's bytes live in
the input's fitted state (preprocess.json), so an artifact needs no package to run it.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np

RATE, FRAME, CONTEXT = 16000, 512, 64
BLOCK = 512  # frames per ONNX call (16 s of audio)
THRESHOLD = 0.5  # Silero's own default speech threshold
PAD_S = 0.1  # kept around the speech: onsets and releases score below the threshold


@lru_cache(maxsize=4)
def session(model: bytes) -> Any:
    """One ONNX Runtime session per model (a bytes object caches its hash: the lookup costs nothing per clip)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1  # tiny LSTM: threads only add overhead
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def speech_probabilities(wave16k: np.ndarray, model: bytes) -> np.ndarray:
    """The speech probability of each 32 ms frame of a 16 kHz mono wave."""
    n = max(1, -(-len(wave16k) // FRAME))
    frames = np.zeros(n * FRAME, dtype=np.float32)
    frames[: len(wave16k)] = wave16k
    frames = frames.reshape(n, FRAME)
    context = np.zeros((n, CONTEXT), dtype=np.float32)
    context[1:] = frames[:-1, -CONTEXT:]
    windows = np.concatenate([context, frames], axis=1)
    h = np.zeros((1, 1, 128), dtype=np.float32)
    c = np.zeros((1, 1, 128), dtype=np.float32)
    out = []
    for start in range(0, n, BLOCK):
        probs, h, c = session(model).run(["speech_probs", "hn", "cn"],
                                         {"input": windows[start : start + BLOCK], "h": h, "c": c})
        out.append(np.asarray(probs, dtype=np.float32).reshape(-1))
    return np.concatenate(out)


def speech_span(wave: np.ndarray, rate: int, model: bytes) -> tuple[int, int]:
    """[start, end) in samples of ``wave`` (at ``rate``) around its speech; the whole wave without any."""
    if rate != RATE:
        import soxr

        wave16k = soxr.resample(wave, rate, RATE, quality="HQ").astype(np.float32)
    else:
        wave16k = np.asarray(wave, dtype=np.float32)
    speech = np.flatnonzero(speech_probabilities(wave16k, model) >= THRESHOLD)
    if not len(speech):
        return 0, len(wave)
    scale = rate / RATE
    start = int(max(0.0, (speech[0] * FRAME - PAD_S * RATE) * scale))
    end = int(min(len(wave), np.ceil(((speech[-1] + 1) * FRAME + PAD_S * RATE) * scale)))
    return start, max(end, start + 1)


def trim(wave: np.ndarray, rate: int, model: bytes) -> np.ndarray:
    start, end = speech_span(wave, rate, model)
    return wave[start:end]


def apply(wave: np.ndarray, cfg: Any, rate: int) -> np.ndarray:
    """``wave`` cut to its speech when the input says ``trim: vad``; unchanged otherwise."""
    if getattr(cfg, "trim", "none") != "vad":
        return wave
    if cfg._vad is None:
        from polyfuse.errors import SpecError

        raise SpecError("an audio input with `trim: vad` has no VAD model bound: training binds the zoo's silero-vad, "
                        "a saved model its preprocess.json")
    return trim(wave, rate, cfg._vad)


def state(cfg: Any) -> dict:
    """What the fitted state keeps of the VAD (its model, base64) so that a saved model runs it alone."""
    if getattr(cfg, "trim", "none") != "vad" or cfg._vad is None:
        return {}
    import base64

    return {"vad_onnx": base64.b64encode(cfg._vad).decode("ascii")}


def bind(cfg: Any, fitted: dict) -> None:
    """The VAD model from a fitted state onto ``cfg`` (loading a saved model)."""
    if "vad_onnx" in fitted:
        import base64

        cfg._vad = base64.b64decode(fitted["vad_onnx"])

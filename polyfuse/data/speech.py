"""Speech synthesis with eSpeak NG (bundled by the ``espeakng-loader`` wheel, called through ctypes): the
demo's spoken digits and the examples' spoken versions of text (the chatbot's voice queries)."""
from __future__ import annotations

import ctypes
from typing import Iterable

import numpy as np

# English accents and voice variants shipped in the wheel's espeak-ng-data
VOICES = ("en", "en-us", "en-gb-scotland", "en-029", "en-gb-x-rp", "en-us-nyc", "en+f3", "en-us+m3")


def synthesise(items: Iterable[tuple[str, str, int, int]], sample_rate: int) -> list[np.ndarray]:
    """Speak each (text, voice, words per minute, pitch 0-100): float32 clips at ``sample_rate``, the silence
    around the speech trimmed, peak 1.

    eSpeak keeps generator state (random breath noise, pitch flutter) across calls that neither re-seeding
    nor re-initialising resets, so repeated calls in one process differ slightly; a fresh process replaying
    the same sequence is byte-identical (polyfuse.data.demo relies on that)."""
    import espeakng_loader
    import soxr

    lib = ctypes.CDLL(espeakng_loader.get_library_path())
    lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
    lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
    lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
                                 ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
    synchronous, pos_character, chars_utf8, rate_param, pitch_param = 2, 1, 1, 1, 3
    in_rate = lib.espeak_Initialize(synchronous, 0, espeakng_loader.get_data_path().encode(), 0)
    if in_rate <= 0:
        raise RuntimeError(f"espeak_Initialize failed ({in_rate})")
    chunks: list[np.ndarray] = []

    @ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)
    def collect(wav, n, _events):  # called synchronously from espeak_Synth with 16-bit samples
        if n > 0:
            chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
        return 0

    lib.espeak_SetSynthCallback(collect)
    clips = []
    try:
        for text, voice, wpm, pitch in items:
            if lib.espeak_SetVoiceByName(voice.encode()) != 0:
                raise RuntimeError(f"eSpeak voice {voice!r} is missing from the bundled data")
            lib.espeak_SetParameter(rate_param, wpm, 0)
            lib.espeak_SetParameter(pitch_param, pitch, 0)
            lib.espeak_ng_SetRandSeed(1)
            chunks.clear()
            data = text.encode() + b"\0"
            if lib.espeak_Synth(data, len(data), 0, pos_character, 0, chars_utf8, None, None) != 0:
                raise RuntimeError(f"espeak_Synth failed for {text[:40]!r} / {voice!r}")
            lib.espeak_Synchronize()
            if not chunks:
                raise RuntimeError(f"eSpeak produced no sound for {text[:40]!r}")
            pcm = soxr.resample(np.concatenate(chunks).astype(np.float32) / 32768, in_rate, sample_rate)
            loud = np.flatnonzero(np.abs(pcm) > 0.02 * np.abs(pcm).max())
            pcm = pcm[loud[0]:loud[-1] + 1]
            clips.append((pcm / np.abs(pcm).max()).astype(np.float32))
    finally:
        lib.espeak_Terminate()
    return clips

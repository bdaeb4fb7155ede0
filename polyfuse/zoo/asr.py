"""Speech to text with the zoo's whisper-tiny.en, run by CTranslate2 (int8, greedy, no timestamps): the
transcript an example derives from audio (a call's words, a spoken query), as a speech pipeline would."""
from __future__ import annotations

import numpy as np

WHISPER_RATE = 16_000
BATCH = 16


def transcribe(waves: list[np.ndarray], sample_rate: int, *, window_s: int = 10, max_tokens: int = 48) -> list[str]:
    """Whisper tiny.en's greedy transcript of each clip (float waveforms at ``sample_rate``, resampled to 16 kHz).

    Windows of ``window_s`` seconds rather than Whisper's 30: on the telephone example's sub-2.5 s clips a
    10 s window ran 6x faster with as many digits recognised (a 5 s one made the decoder repeat itself).
    A clip longer than the window is cut to it."""
    import ctranslate2
    from scipy.signal import resample_poly
    from tokenizers import Tokenizer
    from transformers import WhisperFeatureExtractor

    from polyfuse.threads import usable_cpus
    from polyfuse.zoo.catalog import model_file

    folder = model_file("whisper-tiny.en").parent
    model = ctranslate2.models.Whisper(str(folder), device="cpu", compute_type="int8", intra_threads=usable_cpus())
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    extract = WhisperFeatureExtractor(chunk_length=window_s)
    prompt = ["<|startoftranscript|>", "<|notimestamps|>"]
    texts: list[str] = []
    for start in range(0, len(waves), BATCH):
        batch = [np.asarray(w, dtype=np.float32) if sample_rate == WHISPER_RATE
                 else resample_poly(w, WHISPER_RATE, sample_rate).astype(np.float32) for w in waves[start:start + BATCH]]
        mel = extract(batch, sampling_rate=WHISPER_RATE, return_tensors="np").input_features
        results = model.generate(ctranslate2.StorageView.from_array(np.ascontiguousarray(mel)),
                                 [prompt] * len(batch), beam_size=1, max_length=max_tokens)
        texts += [tokenizer.decode(r.sequences_ids[0]).strip() for r in results]
    return texts

"""Voice activity (`trim: vad`, polyfuse/preprocess/vad.py): the zoo's Silero VAD scores frames exactly as
Silero's own wrapper does, finds a spoken digit inside seconds of silence at 16 and 8 kHz, keeps a clip
without speech whole, and a model trained with it carries the VAD in its preprocess.json, so the torch-free
runtime cuts clips the same way with no package installed."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from polyfuse.errors import SpecError
from polyfuse.preprocess import audio_file, vad
from polyfuse.zoo import catalog
from tests.conftest import need_avdigits

pytestmark = pytest.mark.skipif(catalog.installed_source(catalog.ENTRIES["silero-vad"]) is None,
                                reason="silero-vad is not installed: pip install 'polyfuse[zoo]'")


def model() -> bytes:
    return catalog.model_file("silero-vad").read_bytes()


def padded_digit(path, rate: int, before_s: float = 1.0, after_s: float = 1.5, seed: int = 0) -> tuple[np.ndarray, int]:
    """A spoken digit with silence and faint noise around it; and where the speech starts."""
    speech = audio_file.decode_audio(path, rate)
    rng = np.random.default_rng(seed)
    wave = np.concatenate([np.zeros(int(before_s * rate)), speech, np.zeros(int(after_s * rate))]).astype(np.float32)
    return wave + 0.002 * rng.standard_normal(len(wave)).astype(np.float32), int(before_s * rate)


def test_frames_score_as_silero_scores_them_and_the_digit_is_found():
    from silero_vad.sequence_vad import SileroVADSequence

    digit = need_avdigits() / "audio" / "7_jackson_3.wav"
    wave, start = padded_digit(digit, 16000)
    reference = SileroVADSequence(str(catalog.model_file("silero-vad"))).audio_forward(wave)
    np.testing.assert_array_equal(vad.speech_probabilities(wave, model()), reference)
    length = len(audio_file.decode_audio(digit, 16000))
    for rate in (16000, 8000):
        wave, start = padded_digit(digit, rate)
        begin, end = vad.speech_span(wave, rate, model())
        speech_end = start + length * rate // 16000
        assert start - 0.2 * rate <= begin <= start + 0.05 * rate, (rate, begin, start)
        assert speech_end - 0.1 * rate <= end <= speech_end + 0.25 * rate, (rate, end, speech_end)


def test_a_clip_without_speech_is_kept_whole():
    quiet = (0.002 * np.random.default_rng(1).standard_normal(24000)).astype(np.float32)
    assert vad.speech_span(quiet, 16000, model()) == (0, len(quiet))


def test_trained_with_trim_vad_the_runtime_cuts_clips_alike(tmp_path):
    import polyfuse
    from polyfuse.deploy.exporter import export
    from polyfuse.runtime import Runtime

    folder = need_avdigits()
    rows = pd.read_csv(folder / "train.csv")
    rows = rows[rows["label"].isin([0, 1])].head(24)
    for i, path in enumerate(rows["audio"]):
        wave, _ = padded_digit(folder / path, 16000, before_s=0.5 + 0.05 * (i % 5), seed=i)
        audio_file.write_wav(tmp_path / f"{i}.wav", wave, 16000)
    table = pd.DataFrame({"audio": [f"{i}.wav" for i in range(len(rows))], "label": rows["label"].astype(str)})
    table.to_csv(tmp_path / "t.csv", index=False)
    spec = {"data": {"train": str(tmp_path / "t.csv"), "split": {"valid": 0.25, "test": 0.0, "seed": 0}},
            "inputs": {"audio": {"type": "audio", "max_seconds": 1.5, "trim": "vad", "dim": 16}},
            "outputs": {"label": {"type": "category"}},
            "train": {"epochs": 2, "batch_size": 8, "seed": 0, "threads": 1, "baseline": False, "ensemble": "off"}}
    model_ = polyfuse.train(spec, out=tmp_path / "m", show_progress=False)
    state = json.loads((tmp_path / "m" / "preprocess.json").read_text())["state"]["audio"]
    assert len(state["vad_onnx"]) > 100_000  # the model itself, base64: the artifact needs no package
    export(tmp_path / "m", data=tmp_path / "t.csv")
    records = table.head(6).drop(columns=["label"]).to_dict("records")
    np.testing.assert_allclose(Runtime(tmp_path / "m").predict_proba(records, folder=tmp_path)["label"],
                               model_.predict_proba(records, folder=tmp_path).to_numpy(), atol=1e-4)
    loaded = polyfuse.load(tmp_path / "m")
    cut = loaded.preprocessor.transform(records[:1], folder=tmp_path)[1].inputs["audio"][0]
    assert len(cut) < 16000 * 1.2  # 0.5 s of silence + the digit + 1.5 s of silence, cut to about the digit


def test_the_vad_is_not_an_encoder(toy_csv):
    import polyfuse
    from tests.conftest import toy_spec

    spec = toy_spec(toy_csv, epochs=1)
    spec["inputs"] = {"sound": {"type": "audio", "encoder": {"pretrained": "silero-vad"}}}
    with pytest.raises(SpecError, match="not an encoder: use `trim: vad`"):
        polyfuse.train(spec, show_progress=False)

"""The zoo's speech encoder (polyfuse/zoo/ct2_whisper.py): a CTranslate2 Whisper file, written byte for byte
as CTranslate2 lays it out (fused attention projections, fp16), becomes a transformers Whisper folder
whose encoder answers exactly as the model it came from, and trains as `encoder: {pretrained: NAME}`.
(The real whisper-tiny.en against CTranslate2's own engine: benchmarks/zoo.py.)"""
from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

import polyfuse  # noqa: E402
from polyfuse.zoo import catalog, convert, ct2_whisper  # noqa: E402
from tests import hf_models, zoo_files  # noqa: E402
from tests.conftest import toy_spec  # noqa: E402


@pytest.fixture()
def tiny_ct2(tmp_path, monkeypatch):
    """A package 'tiny_ct2_pkg' holding a tiny Whisper as CTranslate2's model.bin + tokenizer.json; returns
    the transformers model it was written from (weights rounded to fp16, as the file holds them)."""
    from transformers import WhisperModel

    source = WhisperModel.from_pretrained(hf_models.tiny_whisper(tmp_path / "hf")).eval()
    with torch.no_grad():
        for p in source.parameters():
            p.copy_(p.half().float())
    state = {k: v.numpy() for k, v in source.state_dict().items()}
    package = tmp_path / "site" / "tiny_ct2_pkg"
    (package / "model").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    zoo_files.write_ct2(package / "model" / "model.bin", "WhisperSpec", zoo_files.ct2_whisper_variables(state, 2),
                        {"decoder/projection/weight": "decoder/embeddings/weight"})
    (package / "model" / "tokenizer.json").write_text(json.dumps({"added_tokens": [
        {"id": 2, "content": "<|endoftext|>"}, {"id": 1, "content": "<|startoftranscript|>"}]}))
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setenv("POLYFUSE_CACHE", str(tmp_path / "cache"))
    entry = catalog.Entry("tiny-whisper", "audio", "English", "tiny-ct2-pkg", "0.0.1", "tiny_ct2_pkg",
                          "model/model.bin", "ctranslate2-whisper", "MIT", "random weights", 32, "a test model")
    monkeypatch.setitem(catalog.ENTRIES, "tiny-whisper", entry)
    return source


def test_ctranslate2_file_becomes_the_whisper_it_came_from(tiny_ct2):
    from transformers import WhisperModel

    folder = convert.resolve("tiny-whisper")
    model = WhisperModel.from_pretrained(folder).eval()
    assert model.config.encoder_layers == 2 and model.config.max_source_positions == 100
    assert model.config.decoder_start_token_id == 1 and model.config.eos_token_id == 2
    theirs, ours = tiny_ct2.state_dict(), model.state_dict()
    assert set(theirs) == set(ours)
    for key in theirs:
        torch.testing.assert_close(ours[key], theirs[key], rtol=0, atol=0, msg=key)
    features = torch.randn(2, 16, 200)
    with torch.no_grad():
        torch.testing.assert_close(model.encoder(features).last_hidden_state,
                                   tiny_ct2.encoder(features).last_hidden_state)
    extractor = json.loads((folder / "preprocessor_config.json").read_text())
    assert extractor["chunk_length"] == 2 and extractor["feature_size"] == 16  # 100 positions: 2 s windows


def test_a_file_that_is_not_ctranslate2_whisper_is_refused(tmp_path):
    zoo_files.write_ct2(tmp_path / "model.bin", "TransformerSpec", {"x": np.zeros(2, np.float32)}, {})
    with pytest.raises(ValueError, match="not a Whisper model"):
        ct2_whisper.write_folder(tmp_path / "model.bin", tmp_path / "out")
    (tmp_path / "old.bin").write_bytes((5).to_bytes(4, "little"))
    with pytest.raises(ValueError, match="binary version 5"):
        ct2_whisper.read(tmp_path / "old.bin")


def test_trains_as_a_zoo_audio_encoder(tiny_ct2, toy_csv, tmp_path):
    spec = toy_spec(toy_csv, epochs=1, baseline=False, ensemble="off")
    spec["inputs"] = {"sound": {"type": "audio", "max_seconds": 0.5, "encoder": {"pretrained": "tiny-whisper"}},
                      "weight": spec["inputs"]["weight"]}
    polyfuse.train(spec, out=tmp_path / "m", show_progress=False)
    assert "zoo model `tiny-whisper`" in (tmp_path / "m" / "MODEL_CARD.md").read_text()
    manifest = json.loads((tmp_path / "m" / "manifest.json").read_text())
    assert manifest["pretrained_zoo"]["sound"]["source"] == "random weights"

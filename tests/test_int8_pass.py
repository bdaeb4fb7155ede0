"""The embedding pass in int8: the frozen backbone exported to ONNX with int8 weights fills the cache when
its vectors stay close to fp32's on the table's rows; otherwise (or unasked on a small table) torch does."""
from __future__ import annotations

import numpy as np
import pytest
from conftest import make_toy, toy_spec
from hf_models import tiny_bert, tiny_vit

import polyfuse
from polyfuse.evaluate.card import render
from polyfuse.spec.inputs import ONNX_FP32_MIN_IMAGES
from polyfuse.training import int8_pass


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    folder = tmp_path_factory.mktemp("int8pass")
    return make_toy(folder / "toy", n=60), folder


def spec_for(csv, cache, inputs: dict) -> dict:
    spec = toy_spec(csv, epochs=1)
    spec["data"]["cache_dir"] = str(cache)
    spec["inputs"] = {**inputs, "weight": {"type": "number", "dim": 8}}
    return spec


def note(bert, **encoder) -> dict:
    return {"note": {"type": "text", "max_length": 16, "dim": 16, "encoder": {"hf": str(bert), **encoder}}}


def test_text_backbone_fills_the_cache_in_int8_within_the_gate(toy, tmp_path):
    csv, folder = toy
    bert = tiny_bert(folder / "bert")
    model = polyfuse.train(spec_for(csv, tmp_path / "cache", note(bert, embed_with="onnx-int8")))
    report = model.metrics["pretrained_cache"]["note"]
    assert report["engine"] == "onnx-int8" and report["rows"] == 60 and report["computed"] > 0
    parity = report["int8_parity"]
    assert parity["rows"] == 60 and parity["min_cos"] >= int8_pass.MIN_COS and parity["mean_cos"] >= int8_pass.MEAN_COS
    assert len(list((tmp_path / "cache").rglob("int8/*.onnx"))) == 1
    assert "computed by the backbone with int8 weights" in render(model)
    # fp32 outputs live in their own folder: a torch run computes its rows, and its next run reads them back
    fp32 = polyfuse.train(spec_for(csv, tmp_path / "cache", note(bert, embed_with="torch")))
    assert fp32.metrics["pretrained_cache"]["note"]["engine"] == "torch"
    assert fp32.metrics["pretrained_cache"]["note"]["computed"] == report["computed"]
    again = polyfuse.train(spec_for(csv, tmp_path / "cache", note(bert, embed_with="onnx-int8")))
    assert again.metrics["pretrained_cache"]["note"]["computed"] == 0  # the int8 rows and the int8 file reused
    # the trained network reads its vectors like any other: predictions are the model's, from raw records
    probs = again.predict_proba([{"note": "a big dog", "weight": 1.0}]).to_numpy()
    assert probs.shape[0] == 1 and np.isclose(probs.sum(), 1.0, atol=1e-5)


def test_image_backbone_without_lengths_exports_too(toy, tmp_path):
    csv, folder = toy
    vit = tiny_vit(folder / "vit")
    spec = spec_for(csv, tmp_path / "cache", {"photo": {"type": "image", "dim": 16,
                                                        "encoder": {"hf": str(vit), "embed_with": "onnx-int8"}}})
    report = polyfuse.train(spec).metrics["pretrained_cache"]["photo"]
    assert report["engine"] == "onnx-int8" and report["int8_parity"]["min_cos"] >= int8_pass.MIN_COS


def test_fp32_graph_gives_torchs_vectors_into_torchs_cache(toy, tmp_path, capfd):
    csv, folder = toy
    vit = tiny_vit(folder / "vit32")
    photo = lambda mode: {"photo": {"type": "image", "dim": 16, "encoder": {"hf": str(vit), "embed_with": mode}}}  # noqa: E731
    model = polyfuse.train(spec_for(csv, tmp_path / "cache", photo("onnx")))
    report = model.metrics["pretrained_cache"]["photo"]
    assert report["engine"] == "onnx" and report["computed"] > 0 and "int8_parity" not in report
    assert report["onnx_parity"]["min_cos"] >= int8_pass.FP32_COS
    assert len(list((tmp_path / "cache").rglob("fp32/*.onnx"))) == 1
    assert "exported to ONNX (fp32)" in render(model)
    # its rows are torch's to rounding, so they fill torch's own cache: a torch run computes nothing
    again = polyfuse.train(spec_for(csv, tmp_path / "cache", photo("torch")))
    assert again.metrics["pretrained_cache"]["photo"]["computed"] == 0


def test_a_gate_that_fails_keeps_fp32_and_says_why(toy, tmp_path, monkeypatch, capfd):
    csv, folder = toy
    bert = tiny_bert(folder / "bert2")
    monkeypatch.setattr(int8_pass, "MEAN_COS", 1.01)  # no int8 vector can meet this: the gate's refusal path
    report = polyfuse.train(spec_for(csv, tmp_path / "cache", note(bert, embed_with="onnx-int8"))).metrics
    assert report["pretrained_cache"]["note"]["engine"] == "torch"
    assert "int8 embedding pass rejected" in capfd.readouterr().err


def test_auto_uses_the_fp32_graph_from_a_thousand_images_and_int8_only_from_many_more_rows():
    class Pooled:
        caches_sequence = False

    class Sequence:
        caches_sequence = True

    assert int8_pass.engine("auto", Pooled(), ONNX_FP32_MIN_IMAGES - 1, image=True) is None
    assert int8_pass.engine("auto", Pooled(), ONNX_FP32_MIN_IMAGES, image=True) == "onnx"
    assert int8_pass.engine("auto", Pooled(), int8_pass.MIN_ROWS - 1, image=True) == "onnx"
    assert int8_pass.engine("auto", Pooled(), int8_pass.MIN_ROWS - 1) is None  # text: torch until int8 pays
    assert int8_pass.engine("auto", Pooled(), int8_pass.MIN_ROWS) == "onnx-int8"
    assert int8_pass.engine("onnx-int8", Pooled(), 10) == "onnx-int8" and int8_pass.engine("onnx", Pooled(), 10) == "onnx"
    assert int8_pass.engine("torch", Pooled(), 10**6) is None
    assert int8_pass.engine("onnx-int8", Sequence(), 10**6) is None

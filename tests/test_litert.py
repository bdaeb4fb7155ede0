"""`polyfuse export --to litert`: .tflite builds (fp32, dynamic int8) converted by litert-torch in its own
environment, checked in LiteRT's interpreter, recorded in the manifest and run by `polyfuse bench`; the
mobile bundle for inputs whose shapes are fixed or padded to a fixed length (clips)."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from conftest import toy_spec

import polyfuse

pytestmark = pytest.mark.skipif(
    not os.environ.get("POLYFUSE_LITERT_PYTHON") and importlib.util.find_spec("litert_torch") is None,
    reason="LiteRT's converter is not set up: `make litert` (part of `make test`) builds .venv-litert")


def export(model_dir, *extra, env=None):
    return subprocess.run([sys.executable, "-m", "polyfuse", "export", str(model_dir), "--to", "litert", *extra],
                          capture_output=True, text=True, env=env)


@pytest.fixture(scope="module")
def exported(toy_csv, tmp_path_factory):
    spec = toy_spec(toy_csv, epochs=4)
    spec["inputs"] = {k: v for k, v in spec["inputs"].items() if k in ("photo", "sound", "weight")}
    spec["train"]["ensemble"] = "off"
    out = tmp_path_factory.mktemp("litert") / "m"
    polyfuse.train(spec, out=out)
    for extra in ([], ["--quantize", "dynamic"]):
        run = export(out, *extra)
        assert run.returncode == 0, run.stderr
    return out


def test_fp32_and_int8_flatbuffers_pass_their_gates_in_litert(exported, toy_csv):
    from polyfuse.deploy.bench_backends import backends

    exports = json.loads((exported / "exports.json").read_text())
    fp32, int8 = exports["model.tflite"], exports["model.int8-dynamic.tflite"]
    assert fp32["verification"]["passed"] and fp32["verification"]["max_abs_diff"] <= 1e-4
    assert int8["verification"]["passed"] and int8["bytes"] < 0.5 * fp32["bytes"]
    assert {"model.tflite", "model.int8-dynamic.tflite"} <= set(json.loads((exported / "manifest.json").read_text())["files"])
    found = {b.name: b for b in backends(exported, 1)}
    assert {"litert-fp32", "litert-int8-dynamic"} <= set(found)
    records = pd.read_csv(toy_csv).drop(columns=["label"]).head(12).to_dict("records")
    model = polyfuse.load(exported)
    loaded = found["litert-fp32"].load()
    batch, _ = model.preprocessor.transform(records, toy_csv.parent)
    ref = model.predict_proba(records, folder=toy_csv.parent).to_numpy()
    assert np.abs(loaded.run(batch)["label"] - ref).max() <= 1e-4
    assert loaded.predict(records, toy_csv.parent)["label"] == model.predict(records, folder=toy_csv.parent)["label"].tolist()


def test_what_litert_cannot_take_is_refused_with_the_reason(exported, tmp_path):
    run = export(exported, "--quantize", "static")
    assert run.returncode != 0 and "dynamic" in run.stderr
    run = export(exported, "--with-preprocessing")
    assert run.returncode != 0 and "'photo'" in run.stderr and "--to onnx" in run.stderr
    run = export(exported, env={**os.environ, "POLYFUSE_LITERT_PYTHON": str(tmp_path / "none" / "python")})
    assert run.returncode != 0 and "make litert" in run.stderr


def test_bundle_with_preprocessing_for_fixed_shape_inputs_and_padded_clips(toy_csv, tmp_path):
    spec = toy_spec(toy_csv, epochs=3)
    spec["inputs"] = {k: v for k, v in spec["inputs"].items() if k in ("note", "weight", "color", "sound")}
    spec["train"]["ensemble"] = "off"
    polyfuse.train(spec, out=tmp_path / "m")
    run = export(tmp_path / "m", "--with-preprocessing")
    assert run.returncode == 0, run.stderr
    entry = json.loads((tmp_path / "m" / "exports.json").read_text())["mobile/litert/model.tflite"]
    assert entry["verification"]["passed"] and entry["verification"]["top1_agreement"] == 1.0
    contract = json.loads((tmp_path / "m" / "mobile" / "litert" / "contract.json").read_text())
    inputs = {i["name"]: i for i in contract["inputs"]}
    assert set(inputs) == {"note", "weight", "color", "sound", "sound__length", "sound__present"}
    assert all(i["shape"][0] == 1 for i in contract["inputs"])
    # the clip is one fixed-length row: 30 s at 8 kHz, zero-padded; its length says how much is sound
    assert inputs["sound"]["shape"] == [1, 240000] and "zero-padded" in inputs["sound"]["meaning"]

"""`polyfuse compress --prune`: the encoders' channels pruned with torch-pruning, fine-tuned, gated on the
test score, saved so that load, ONNX export and the torch-free runtime all take the narrower network."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from conftest import toy_spec

import polyfuse
from polyfuse.errors import SpecError


@pytest.fixture(scope="module")
def trained(toy_csv, tmp_path_factory):
    spec = toy_spec(toy_csv, epochs=6)
    spec["inputs"]["note"]["encoder"] = "cnn"
    spec["inputs"]["sound"]["encoder"] = "cnn"
    out = tmp_path_factory.mktemp("prune") / "m"
    polyfuse.train(spec, out=out)
    return out


def test_compress_halves_channels_keeps_the_score_and_reloads(trained, toy_csv, tmp_path):
    out = tmp_path / "pruned"
    run = subprocess.run([sys.executable, "-m", "polyfuse", "compress", str(trained), "--prune", "0.5",
                          "--out", str(out), "--epochs", "4", "--max-loss", "100"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "fewer" in run.stdout and "pruned model saved" in run.stdout
    p = json.loads((out / "metrics.json").read_text())["pruning"]
    (m0, m1), (p0, p1) = p["macs_per_row"], p["parameters"]
    assert m1 <= 0.5 * m0 and p1 < p0 and p["layers"] > 0 and p["finetune_epochs"] >= 1
    assert "structure.json" in json.loads((out / "manifest.json").read_text())["files"]
    assert "Pruned: 50% of the channels" in (out / "MODEL_CARD.md").read_text()
    # the narrower layers come back from structure.json: the loaded model is the one compress evaluated
    model = polyfuse.load(out)
    conv = model.net.encoders["photo"].features[0][0]
    original = polyfuse.load(trained).net.encoders["photo"].features[0][0]
    assert conv.out_channels < original.out_channels
    records = pd.read_csv(toy_csv).drop(columns=["label"]).head(12)
    folder = toy_csv.parent
    probs = model.predict_proba(records, folder=folder).to_numpy()
    assert np.allclose(probs.sum(1), 1.0, atol=1e-5)
    # the ONNX parity gate and the torch-free runtime take it like any model
    export = subprocess.run([sys.executable, "-m", "polyfuse", "export", str(out)], capture_output=True, text=True)
    assert export.returncode == 0, export.stderr
    assert json.loads((out / "exports.json").read_text())["model.onnx"]["verification"]["passed"]
    from polyfuse.runtime import Runtime

    got = Runtime(out).predict_proba(records.to_dict("records"), folder=folder)["label"]
    assert np.abs(got - probs).max() < 1e-4
    bench = subprocess.run([sys.executable, "-m", "polyfuse", "bench", str(out), "--data", str(toy_csv), "--repeats",
                            "1"], capture_output=True, text=True)
    assert bench.returncode == 0, bench.stderr
    assert f"MACs per row {m0:,} -> {m1:,}" in bench.stdout and "onnx" in bench.stdout


def test_a_score_lost_beyond_max_loss_writes_nothing(trained, tmp_path):
    from polyfuse.deploy.onnx import ExportError
    from polyfuse.deploy.prune import compress

    with pytest.raises(ExportError, match="nothing written"):
        compress(trained, prune=0.9, out=tmp_path / "p", epochs=1, max_loss=-1.0)  # no result can gain a point
    assert not (tmp_path / "p").exists()


def test_bad_ratios_and_models_without_prunable_layers_are_named(toy_csv, tmp_path):
    from polyfuse.deploy.prune import compress

    with pytest.raises(SpecError, match="between 0 and 1"):
        compress(tmp_path, prune=1.5, out=tmp_path / "x")
    spec = toy_spec(toy_csv, epochs=1)
    spec["inputs"] = {"color": {"type": "category", "dim": 8},  # an embedding: no channels to prune
                      "note": {"type": "text", "max_length": 8, "dim": 8, "encoder": "bigru"}}  # recurrent: left whole
    polyfuse.train(spec, out=tmp_path / "tabular")
    with pytest.raises(SpecError, match="no encoder has convolutional or linear layers"):
        compress(tmp_path / "tabular", prune=0.5, out=tmp_path / "y")

"""`polyfuse export --to executorch`: .pte programs (XNNPACK delegate, fp32 and int8) checked in ExecuTorch's
own runtime on the validation rows, recorded in exports.json and the manifest, run by `polyfuse bench`."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from conftest import toy_spec

import polyfuse


@pytest.fixture(scope="module")
def exported(toy_csv, tmp_path_factory):
    spec = toy_spec(toy_csv, epochs=4)
    # lowering time grows with the graph (~25 s with linear members beside three inputs): the network alone
    spec["inputs"] = {k: v for k, v in spec["inputs"].items() if k in ("photo", "weight")}
    spec["train"]["ensemble"] = "off"
    out = tmp_path_factory.mktemp("pte") / "m"
    polyfuse.train(spec, out=out)
    for extra in ([], ["--quantize", "static"]):
        run = subprocess.run([sys.executable, "-m", "polyfuse", "export", str(out), "--to", "executorch", *extra],
                             capture_output=True, text=True)
        assert run.returncode == 0, run.stderr
    return out


def test_fp32_and_int8_programs_pass_their_gates_in_executorchs_runtime(exported, toy_csv):
    from polyfuse.deploy.bench_backends import load_pte_runtime

    exports = json.loads((exported / "exports.json").read_text())
    fp32, int8 = exports["model.pte"], exports["model.int8-static.pte"]
    assert fp32["verification"]["passed"] and fp32["verification"]["max_abs_diff"] <= 1e-4
    assert int8["verification"]["passed"] and int8["precision"] == "int8-static" and int8["bytes"] < fp32["bytes"]
    assert fp32["delegate"] == "xnnpack" and fp32["max_batch"] >= 1
    files = json.loads((exported / "manifest.json").read_text())["files"]
    assert {"model.pte", "model.int8-static.pte"} <= set(files)
    # raw records through the shared preprocessing into the program: the model's own answers, in more rows
    # than one planned batch
    records = pd.read_csv(toy_csv).drop(columns=["label"]).head(40).to_dict("records")
    model = polyfuse.load(exported)
    ref = model.predict_proba(records, folder=toy_csv.parent).to_numpy()
    loaded = load_pte_runtime(exported, "model.pte")
    batch, _ = model.preprocessor.transform(records, toy_csv.parent)
    assert np.abs(loaded.run(batch)["label"] - ref).max() <= 1e-4
    assert loaded.predict(records, toy_csv.parent)["label"] == model.predict(records, folder=toy_csv.parent)["label"].tolist()


def test_bench_finds_loads_and_cold_starts_the_programs(exported, toy_csv):
    """What `polyfuse bench` does with each runtime, for the ExecuTorch ones (the whole bench: tests/test_bench.py)."""
    from polyfuse.deploy.bench import _cold_start
    from polyfuse.deploy.bench_backends import backends

    found = {b.name: b for b in backends(exported, 1)}
    assert {"torch", "executorch-fp32", "executorch-int8-static"} <= set(found)
    records = pd.read_csv(toy_csv).drop(columns=["label"]).head(5).to_dict("records")
    want = polyfuse.load(exported).predict(records, folder=toy_csv.parent)["label"].tolist()
    for name in ("executorch-fp32", "executorch-int8-static"):
        assert found[name].load().predict(records, toy_csv.parent)["label"] == want
    cold = _cold_start(found["executorch-int8-static"], records[0], toy_csv.parent)
    assert cold["cold_start_s"] > 0 and cold["cold_load_s"] > 0


def test_a_tampered_program_is_refused(exported, tmp_path):
    from polyfuse.deploy.bench_backends import load_pte_runtime
    from polyfuse.errors import ArtifactError

    folder = tmp_path / "m"
    shutil.copytree(exported, folder)
    data = bytearray((folder / "model.pte").read_bytes())
    data[-1] ^= 0xFF
    (folder / "model.pte").write_bytes(bytes(data))
    with pytest.raises(ArtifactError):
        load_pte_runtime(folder, "model.pte")

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
import torch
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

    from executorch.extension.pybindings import portable_lib

    found = {b.name: b for b in backends(exported, 1)}
    assert {"torch", "executorch-fp32", "executorch-int8-static"} <= set(found)
    records = pd.read_csv(toy_csv).drop(columns=["label"]).head(5).to_dict("records")
    want = polyfuse.load(exported).predict(records, folder=toy_csv.parent)["label"].tolist()
    for name in ("executorch-fp32", "executorch-int8-static"):
        assert found[name].load().predict(records, toy_csv.parent)["label"] == want
        # the bench's thread count reaches ExecuTorch's pool (its default is every core of the machine)
        assert portable_lib._threadpool_get_thread_count() == 1
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


class _Pools(torch.nn.Module):
    """A 1-D pool over an odd length and a ceil-mode 2-D pool over 7x7, the two XNNPACK would leave out."""

    def __init__(self):
        super().__init__()
        self.row = torch.nn.Sequential(torch.nn.Conv1d(3, 4, 3), torch.nn.MaxPool1d(2))
        self.grid = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.MaxPool2d(3, ceil_mode=True))

    def forward(self, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor]:
        return (torch.cat([self.row(inputs["seq"]).flatten(1), self.grid(inputs["img"]).flatten(1)], 1),)


def test_max_pools_are_lowered_into_the_xnnpack_delegate_with_the_same_results():
    from executorch.runtime import Runtime

    from polyfuse.deploy.pte import delegable_pools, delegated

    torch.manual_seed(0)
    net = _Pools().eval()
    example = {"seq": torch.randn(3, 3, 13), "img": torch.randn(3, 1, 7, 7)}
    batch = torch.export.Dim("batch", min=1, max=8)
    with torch.no_grad():
        want = net(example)[0]
        with delegable_pools(net):
            assert np.array_equal(net(example)[0].numpy(), want.numpy())  # the same windows, not a near copy
    assert isinstance(net.row[1], torch.nn.MaxPool1d) and net.grid[1].ceil_mode  # put back afterwards
    assert want.shape == (3, 4 * 5 + 4 * 3 * 3)
    edge = delegated(net, example, {k: {0: batch} for k in example})
    outside = [str(n.target) for n in edge.exported_program().graph_module.graph.nodes
               if n.op == "call_function" and "pool" in str(n.target)]
    assert outside == []  # each one left out would run on a portable kernel and split the delegate
    data = edge.to_executorch().buffer  # the program points into these bytes: they outlive it
    program = Runtime.get().load_program(data)
    got = program.load_method("forward").execute([example["seq"], example["img"]])[0]
    assert torch.allclose(got, want, atol=1e-5)

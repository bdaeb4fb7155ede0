"""Classic heads (svm, logistic, gbdt) on the fused features: fitted, compared, saved, exported."""
import numpy as np
import pytest
import torch

import polyfuse
from polyfuse.deploy.exporter import export
from polyfuse.runtime import Runtime
from polyfuse.spec.schema import load_spec
from polyfuse.training.classic_heads import fit_estimator, to_module
from tests.conftest import toy_spec


def _head_cfg(kind: str, output: str = "category"):
    spec, _ = load_spec({"inputs": {"x": {"type": "number"}}, "outputs": {"y": {"type": output, "head": kind}}})
    return spec.outputs["y"]


@pytest.mark.parametrize("kind", ["svm", "logistic", "gbdt"])
@pytest.mark.parametrize("classes", [2, 3])
def test_head_module_reproduces_scikit_learn(kind, classes):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 6)).astype(np.float32)
    y = (x[:, 0] > 0).astype(int) + (classes == 3) * (x[:, 1] > 0.5)
    est = fit_estimator(_head_cfg(kind), x, y)
    module, shape = to_module(est, 6)
    assert (shape is not None) == (kind == "gbdt")
    with torch.no_grad():
        got = module(torch.from_numpy(x)).numpy().reshape(300, -1)
    want = np.asarray(est.decision_function(x)).reshape(300, -1)
    assert np.abs(got - want).max() < 1e-4


def test_classic_head_only_for_classes():
    with pytest.raises(Exception, match="head 'svm' is for category and binary"):
        load_spec({"inputs": {"x": {"type": "number"}}, "outputs": {"y": {"type": "number", "head": "svm"}}})


@pytest.mark.parametrize("kind", ["svm", "gbdt"])
def test_classic_head_trains_compares_saves_and_exports(kind, toy_csv, tmp_path):
    spec = toy_spec(toy_csv, epochs=4)
    spec["inputs"] = {k: v for k, v in spec["inputs"].items() if k in ("note", "weight", "color")}
    spec["outputs"]["label"]["head"] = {"type": kind, "trees": 20, "max_depth": 3}
    out = tmp_path / "m"
    model = polyfuse.train(spec, out=out, show_progress=False)
    heads = model.metrics["heads"]["label"]
    assert set(heads) >= {"softmax", kind} and heads[kind]["test"]["accuracy"] >= 0.8
    assert 0.0 <= heads["softmax"]["valid"]["f1_macro"] <= 1.0
    assert model.metrics["test"]["outputs"]["label"]["accuracy"] == pytest.approx(heads[kind]["test"]["accuracy"], abs=1e-4)
    records = [{"note": "a catish big", "weight": 0.1, "color": "red"}, {"note": "the owlish", "weight": 4.0}]
    loaded = polyfuse.load(out)
    assert type(loaded.net.heads["label"]) is type(model.net.heads["label"])
    ref = loaded.predict_proba(records).to_numpy()
    assert np.allclose(ref, model.predict_proba(records).to_numpy(), atol=1e-6)
    export(out)  # the parity gate runs inside: it refuses to write a build that differs from torch
    got = Runtime(out).predict_proba(records)["label"]
    assert np.abs(ref - got).max() <= 1e-4

"""Richer fusion methods end to end, calibration, abstaining, and corruption-aware training options."""
import json

import numpy as np
import pandas as pd
import pytest
import torch

import polyfuse
from polyfuse.deploy.exporter import export
from polyfuse.evaluate.metrics import expected_calibration_error
from polyfuse.preprocess import tabular, text
from polyfuse.runtime import Runtime
from polyfuse.spec.schema import load_spec
from polyfuse.training.calibration import fit_temperature
from tests.conftest import toy_spec


@pytest.mark.parametrize("method", ["gated", "attention", "lowrank"])
def test_method_trains_exports_and_matches_onnx(method, toy_csv, tmp_path):
    spec = toy_spec(toy_csv, epochs=4)
    spec["fusion"] = {"method": method, "dim": 32, "modality_dropout": 0.3}
    if method == "gated":  # a recurrent text encoder through the export once (torch.export unrolls it: slow)
        spec["inputs"]["note"]["encoder"] = "bigru"
    out = tmp_path / method
    model = polyfuse.train(spec, out=out, show_progress=False)
    assert model.metrics["test"]["outputs"]["label"]["accuracy"] >= 0.8
    entry = export(out, data=toy_csv)
    assert entry["verification"]["passed"]
    frame = pd.read_csv(toy_csv).head(6)
    records = frame[["photo", "sound", "note", "weight", "color"]].to_dict("records")
    records[2]["photo"] = None  # one input missing
    got = Runtime(out).predict(records, folder=toy_csv.parent)
    ref = polyfuse.load(out).predict(records, folder=toy_csv.parent)
    assert [g["label"] for g in got] == ref["label"].tolist()
    if method == "gated":  # per-record input weights are part of the answer
        weights = got[2]["modality_weights"]
        assert set(weights) == {"photo", "sound", "note", "weight", "color"}
        assert weights["photo"] == 0.0 and sum(weights.values()) == pytest.approx(1.0, abs=1e-5)
        assert ref.loc[2, "weight_photo"] == 0.0


def test_temperature_scaling_fixes_an_overconfident_model():
    rng = np.random.default_rng(0)
    n, k = 4000, 5
    z = rng.normal(0, 1.5, (n, k))
    true_p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    target = np.array([rng.choice(k, p=p) for p in true_p])  # labels drawn from calibrated probabilities
    logits = 4.0 * z  # the model's logits are four times too peaked
    probs = torch.softmax(torch.tensor(logits), -1).numpy()
    before = expected_calibration_error(probs, target)
    t = fit_temperature("category", torch.tensor(logits, dtype=torch.float32), target)
    after = expected_calibration_error(torch.softmax(torch.tensor(logits) / t, -1).numpy(), target)
    assert t > 2.0 and before > 0.15 and after < 0.05 and after < before / 3


def test_temperature_is_left_at_one_when_validation_has_no_errors():
    rng = np.random.default_rng(1)
    target = rng.integers(0, 4, 300)
    logits = rng.normal(0, 1, (300, 4))
    logits[np.arange(300), target] += 6.0  # right on every row
    assert fit_temperature("category", torch.tensor(logits, dtype=torch.float32), target) == 1.0
    logits[0, target[0]] -= 12.0  # one error: the likelihood has a minimum again, and it is fitted
    assert fit_temperature("category", torch.tensor(logits, dtype=torch.float32), target) != 1.0
    binary_logits = torch.tensor(np.where(target[:, None] > 1, 2.0, -2.0), dtype=torch.float32)
    assert fit_temperature("binary", binary_logits, (target > 1).astype(int)) == 1.0


def test_ece_known_values():
    probs = np.array([[0.9, 0.1]] * 10)
    assert expected_calibration_error(probs, np.array([0] * 9 + [1])) == pytest.approx(0.0, abs=1e-9)
    assert expected_calibration_error(probs, np.array([0] * 5 + [1] * 5)) == pytest.approx(0.4)


def test_calibration_is_stored_and_exported(toy_model):
    model, out = toy_model
    cal = model.metrics["calibration"]["label"]
    assert cal["temperature"] > 0 and {"valid_ece_before", "valid_ece_after", "test_ece_after"} <= set(cal)
    assert cal["valid_ece_after"] <= cal["valid_ece_before"] + 1e-9
    loaded = polyfuse.load(out)
    assert float(loaded.net.temperature[0]) == pytest.approx(cal["temperature"], abs=1e-4)
    assert "ece" in json.loads((out / "metrics.json").read_text())["test"]["outputs"]["label"]


def test_abstain_below_threshold(toy_csv, tmp_path):
    spec = toy_spec(toy_csv, epochs=1, ensemble="off")  # the toy's calibrated linear members are all but certain
    spec["outputs"]["label"]["abstain_below"] = 0.99
    out = tmp_path / "m"
    model = polyfuse.train(spec, out=out, show_progress=False)
    frame = pd.read_csv(toy_csv).head(8)
    pred = model.predict(frame, folder=toy_csv.parent)
    proba = model.predict_proba(frame, folder=toy_csv.parent)
    unsure = proba.max(axis=1) < 0.99
    assert unsure.any()
    assert pred["label"][unsure].isna().all() and pred["label"][~unsure].notna().all()
    export(out, data=toy_csv)
    answers = Runtime(out).predict(frame[["photo", "note"]].to_dict("records"), folder=toy_csv.parent)
    abstained = [a for a in answers if a["label"] is None]
    assert abstained and all(a["reason"] == "low confidence" for a in abstained)


def test_text_and_number_corruption_training_options():
    spec, _ = load_spec({"inputs": {"t": {"type": "text", "encoder": "bigru", "augment": {"word_drop": 0.5, "typo": 0.5}},
                                    "n": {"type": "number", "augment": {"drop": 0.5, "noise": 0.1}}},
                         "outputs": {"y": {"type": "category"}}})
    tokens = [["alpha", "beta", "gamma", "delta"]] * 50
    state = text.fit(tokens, spec.inputs["t"])
    clean = text.collate(tokens, spec.inputs["t"], state, train=False, rng=None)
    a = text.collate(tokens, spec.inputs["t"], state, train=True, rng=np.random.default_rng(1))
    b = text.collate(tokens, spec.inputs["t"], state, train=True, rng=np.random.default_rng(1))
    assert np.array_equal(a[""], b[""]) and (a["length"] < clean["length"]).any() and (a["length"] >= 1).all()
    assert (a[""] == 1).any()  # typos land in the unknown bucket
    nstate = {"mean": 0.0, "std": 1.0, "impute": 0.0}
    out = tabular.collate_number([1.0] * 200, spec.inputs["n"], nstate, True, np.random.default_rng(0))
    assert 0.3 < out["present"].mean() < 0.7
    assert tabular.collate_number([1.0] * 5, spec.inputs["n"], nstate, False, None)["present"].all()



def _alone_losses(model, toy_csv) -> dict[str, float]:
    """Each input's loss answering alone (all others absent) over the toy table, through the trained net."""
    from polyfuse.data.io import read_table
    from polyfuse.preprocess.pipeline import decode_table
    from polyfuse.training.epochs import alone_losses

    pre, spec = model.preprocessor, model.spec
    decoded = decode_table(spec, read_table(toy_csv), with_targets=True)
    return alone_losses(spec, model.net, pre.collate(decoded), pre.targets(decoded), {n: None for n in spec.outputs})


def test_alone_is_the_answer_with_every_other_input_missing(toy_model, toy_csv):
    from polyfuse.data.io import read_table
    from polyfuse.nn.model import to_tensors
    from polyfuse.preprocess.pipeline import decode_table

    model, _ = toy_model
    net, pre = model.net.eval(), model.preprocessor
    batch = pre.collate(decode_table(model.spec, read_table(toy_csv), with_targets=False))
    mixing, net.members.active = net.members.active, False  # alone() is the network's (training's) answer
    try:
        with torch.no_grad():
            vectors, present, wide = net.encode(to_tensors(batch))
            for name, rows, out in net.alone(vectors, present, wide):
                only = {k: v[rows.numpy()] for k, v in batch.items()}
                for other in net.names:
                    if other != name:
                        only[f"{other}__present"] = np.zeros_like(only[f"{other}__present"])
                ref = net(to_tensors(only))
                torch.testing.assert_close(out["label"], ref["label"])
    finally:
        net.members.active = mixing


def test_alone_loss_teaches_each_input_to_answer_alone(toy_csv, tmp_path):
    spec = toy_spec(toy_csv, epochs=6, ensemble="off")  # what the network learned, not the linear members
    spec["fusion"] = {"method": "gated", "dim": 32, "modality_dropout": 0.0}
    spec["train"]["calibrate"] = False  # compare what training learned, not two fitted temperatures
    plain = polyfuse.train(spec, show_progress=False)
    spec["fusion"]["alone_loss"] = 1.0
    trained = polyfuse.train(spec, show_progress=False)
    names = list(spec["inputs"])
    assert all(f"valid_alone_{n}_loss" in trained.history[-1] for n in names)  # selection sees them too
    assert "valid_alone_photo_loss" not in plain.history[-1]
    before, after = _alone_losses(plain, toy_csv), _alone_losses(trained, toy_csv)
    # the inputs that carry the label answer far better alone; the sum over inputs falls (measured,
    # uncalibrated: photo 0.43 -> 0.12, sound 0.21 -> 0.04, note 0.91 -> 0.68, sum 3.7 -> 2.9)
    assert after["photo"] < 0.5 * before["photo"] and after["sound"] < 0.5 * before["sound"], (before, after)
    assert after["note"] < 0.9 * before["note"], (before, after)
    assert sum(after.values()) < 0.9 * sum(before.values()), (before, after)

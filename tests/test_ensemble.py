"""The validation-selected ensemble (nn/members.py, training/ensemble.py): greedy selection that never
ends worse on validation than its best member, linear members that carry a model the network alone
gets wrong, and one graph for every runtime: the mix exports to ONNX and answers there as in torch,
survives save and load, and answers with an input left out."""
from __future__ import annotations

import json

import numpy as np
import pytest

from polyfuse.training.ensemble import _from_logits, _log_loss, _logits, _mix, select, temperature
from tests.conftest import toy_spec


def test_selection_keeps_complementary_members_and_drops_a_useless_one():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 400)
    noisy = lambda flip: np.eye(2)[np.where(rng.random(400) < flip, 1 - y, y)] * 0.8 + 0.1  # noqa: E731
    a, b = noisy(0.2), noisy(0.2)  # right 80 % of the time each, wrong on different rows
    useless = np.full((400, 2), 0.5)
    avail = np.ones((400, 3))
    counts = select([a, b, useless], y, avail)
    assert counts[2] == 0 and counts[0] > 0 and counts[1] > 0
    mixed = _log_loss(_mix([a, b, useless], counts, avail), y)
    assert mixed < min(_log_loss(a, y), _log_loss(b, y))


def test_a_member_that_knows_more_but_says_it_timidly_wins_once_calibrated():
    """Log-loss selection on raw probabilities prefers a confident member that is right 85 % of the time
    to a timid one right 95 % of the time; with each member's temperature fitted first, the timid one wins."""
    rng = np.random.default_rng(4)
    y = rng.integers(0, 3, 600)

    def member(right: float, top: float) -> np.ndarray:
        pick = np.where(rng.random(600) < right, y, (y + rng.integers(1, 3, 600)) % 3)
        p = np.full((600, 3), (1 - top) / 2)
        p[np.arange(600), pick] = top
        return p

    confident, timid = member(0.85, 0.9), member(0.95, 0.6)
    avail, accuracy = np.ones((600, 2)), lambda p: float((p.argmax(1) == y).mean())  # noqa: E731
    raw = select([confident, timid], y, avail)
    assert raw[0] > raw[1]  # the confident one carries the raw mix
    t = temperature(timid, y)
    scaled = _from_logits(_logits(timid, False) / t, False)
    assert t < 0.5 and _log_loss(scaled, y) < _log_loss(confident, y) < _log_loss(timid, y)
    calibrated = select([confident, scaled], y, avail)
    assert calibrated[1] > calibrated[0]
    assert accuracy(_mix([confident, scaled], calibrated, avail)) > accuracy(_mix([confident, timid], raw, avail)) + 0.05


def test_selection_is_never_worse_than_the_best_member_on_its_rows():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 200)
    probs = [rng.dirichlet(np.ones(3), 200) for _ in range(4)]
    avail = np.ones((200, 4))
    avail[:50, 3] = 0  # a member whose input is missing on some rows drops out of their mix
    counts = select(probs, y, avail)
    single = [_log_loss(_mix(probs, np.eye(4)[k], avail), y) for k in range(4)]
    assert _log_loss(_mix(probs, counts, avail), y) <= min(single) + 1e-12


@pytest.fixture(scope="module")
def mixed_model(toy_csv, tmp_path_factory):
    """Undertrained networks (one epoch at a low rate; a second with another seed) beside linear members
    that read the toy's inputs well: the selection gives the linear members weight, so the graph mixes."""
    import polyfuse

    out = tmp_path_factory.mktemp("ensemble") / "m"
    spec = toy_spec(toy_csv, epochs=1, lr=1e-4, calibrate=True, networks=2)
    model = polyfuse.train(spec, out=out, show_progress=False)
    return model, out


def test_the_ensemble_is_reported_and_beats_the_undertrained_network(mixed_model):
    model, out = mixed_model
    report = json.loads((out / "metrics.json").read_text())["ensemble"]["outputs"]["label"]
    weights = {r["member"]: r["weight"] for r in report["members"]}
    assert abs(sum(weights.values()) - 1) < 1e-3 and weights["network"] < 1.0
    network = next(r for r in report["members"] if r["member"] == "network")
    assert report["ensemble"]["test"] >= network["test"]
    assert report["ensemble"]["valid"] >= network["valid"]
    assert model.net.members.active
    assert "network 2" in weights and len(model.net.extra) == 1  # the second network is a member too
    second = json.loads((out / "metrics.json").read_text())["ensemble"]["networks"][0]
    assert second["network"] == 2 and second["epochs"] == 1 and second["seed"] != 0


def test_the_mix_exports_and_answers_in_onnxruntime_as_in_torch(mixed_model, toy_csv):
    import pandas as pd

    from polyfuse.deploy.exporter import export
    from polyfuse.runtime import Runtime

    model, out = mixed_model
    export(out, data=toy_csv)
    rows = pd.read_csv(toy_csv).head(12)
    records = [{k: (str(toy_csv.parent / v) if k in ("photo", "sound") else v) for k, v in r.items()
                if k not in ("id", "label")} for r in rows.to_dict("records")]
    torch_p = model.predict_proba(records).to_numpy()  # one output: its DataFrame
    onnx_p = Runtime(out).predict_proba(records)["label"]
    np.testing.assert_allclose(onnx_p, torch_p, atol=1e-4)


def test_the_mix_is_saved_and_answers_with_an_input_left_out(mixed_model, toy_csv):
    import pandas as pd

    import polyfuse

    model, out = mixed_model
    loaded = polyfuse.load(out)
    assert loaded.net.members is not None and loaded.net.members.active
    rows = pd.read_csv(toy_csv).head(6).to_dict("records")
    full = [{"photo": str(toy_csv.parent / r["photo"]), "sound": str(toy_csv.parent / r["sound"]), "note": r["note"],
             "weight": r["weight"], "color": r["color"]} for r in rows]
    both = loaded.predict_proba(full).to_numpy()
    np.testing.assert_allclose(both, model.predict_proba(full).to_numpy(), atol=1e-6)
    no_note = [{k: v for k, v in r.items() if k != "note"} for r in full]
    p = loaded.predict_proba(no_note).to_numpy()
    assert np.isfinite(p).all() and np.allclose(p.sum(1), 1, atol=1e-5)
    assert not np.allclose(p, both)  # the note's member dropped out of the mix


def test_ablation_masks_answer_as_batches_with_those_inputs_missing(mixed_model, toy_csv):
    """predict_masked (the encoders once for every ablation) equals a pass with the inputs marked missing,
    with linear members and a second network in the mix."""
    from polyfuse.data.io import read_table
    from polyfuse.nn.model import predict_arrays, predict_masked
    from polyfuse.preprocess.pipeline import decode_table

    model, _ = mixed_model
    decoded = decode_table(model.spec, read_table(toy_csv), with_targets=True)
    batch = model.preprocessor.collate(decoded)
    names, eye = model.net.names, np.eye(len(model.net.names), dtype=bool)
    keeps = [np.ones(len(names), bool), *~eye, *eye]
    for keep, got in zip(keeps, predict_masked(model.net, batch, keeps, chunk=32)):
        masked = {**batch, **{f"{n}__present": np.zeros(len(decoded), bool) for n, k in zip(names, keep) if not k}}
        np.testing.assert_allclose(got["label"].numpy(), predict_arrays(model.net, masked)["label"].numpy(), atol=1e-5)


def test_ensemble_off_leaves_the_network_alone(toy_csv, tmp_path):
    import polyfuse

    model = polyfuse.train(toy_spec(toy_csv, epochs=1, ensemble="off", baseline=False, networks=2),
                           out=tmp_path / "m", show_progress=False)
    assert model.net.members is None and not len(model.net.extra)
    assert model.metrics["ensemble"]["off"] == "train.ensemble is off"
    assert "one network trained: the ensemble is off" in model.metrics["ensemble"]["networks"][0]["skipped"]


def test_a_row_no_chosen_member_answers_gets_the_networks_answer():
    """All weight on a per-input member whose input is absent in a row: the network answers that row
    (not a uniform guess from an empty mix)."""
    net, linear = np.array([[0.9, 0.1], [0.2, 0.8]]), np.array([[0.1, 0.9], [0.1, 0.9]])
    avail = np.array([[1.0, 1.0], [1.0, 0.0]])
    mixed = _mix([net, linear], np.array([0.0, 1.0]), avail)
    np.testing.assert_allclose(mixed, [[0.1, 0.9], [0.2, 0.8]], atol=1e-6)


def test_an_unallowed_member_is_never_chosen():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 300)
    perfect, weak = np.eye(2)[y] * 0.98 + 0.01, np.full((300, 2), 0.5)
    counts = select([weak, perfect], y, np.ones((300, 2)), allowed=np.array([True, False]))
    assert counts[1] == 0 and counts[0] > 0  # the perfect one was never fitted: it may not be mixed in


def test_members_past_the_deadline_are_left_out_and_named(toy_csv, tmp_path):
    """A time limit spent before the members are fitted: none is fitted, the network keeps all the weight."""
    import polyfuse
    from polyfuse.spec.schema import load_spec
    from polyfuse.training.ensemble import fit_and_select
    from polyfuse.training.trainset import read_splits

    model = polyfuse.train(toy_spec(toy_csv, epochs=1, baseline=False), show_progress=False)
    spec, base = load_spec(toy_spec(toy_csv, epochs=1, baseline=False))
    splits = read_splits(spec, base, None, False)
    pre, net = model.preprocessor, model.net
    report = fit_and_select(spec, pre, net, splits.train, splits.valid, pre.collate(splits.valid), None, None,
                            deadline=0.0)
    assert report["unfitted"]["label"] == net.members.members  # all of them, in order
    weights = report["outputs"]["label"]["members"]
    assert weights[0]["member"] == "network" and weights[0]["weight"] == 1.0
    assert not net.members.active


def test_a_multilabel_output_mixes_members_per_label_and_exports(tmp_path):
    """Labels named by words in the text, a network barely trained: one logistic regression per label
    carries them, the selection mixes each label's probability, and ONNX answers as torch does."""
    import pandas as pd

    import polyfuse
    from polyfuse.deploy.exporter import export
    from polyfuse.runtime import Runtime

    rng = np.random.default_rng(3)
    words = {"cough": "lung", "fracture": "bone", "murmur": "heart"}
    rows = []
    for i in range(240):
        on = [w for w in words if rng.random() < 0.4]
        filler = " ".join(rng.choice(["seen", "today", "patient", "with", "no", "history"], 4))
        rows.append({"note": " ".join([filler, *on]), "age": float(rng.integers(20, 90)),
                     "tags": "|".join(words[w] for w in on) or "none"})
    csv = tmp_path / "tags.csv"
    pd.DataFrame(rows).to_csv(csv, index=False)
    spec = {"data": {"train": str(csv), "split": {"valid": 0.25, "test": 0.25, "seed": 0}},
            "inputs": {"note": {"type": "text", "tokenizer": "word", "max_length": 12, "buckets": 2048, "dim": 16,
                                "wide": False},  # the network alone weak: the members carry the labels
                       "age": {"type": "number", "dim": 4}},
            "fusion": {"method": "concat", "dim": 16}, "outputs": {"tags": {"type": "multilabel"}},
            "train": {"epochs": 1, "batch_size": 16, "lr": 1e-5, "seed": 0, "threads": 1, "baseline": False}}
    model = polyfuse.train(spec, out=tmp_path / "m", show_progress=False)
    report = model.metrics["ensemble"]["outputs"]["tags"]
    weights = {r["member"]: r["weight"] for r in report["members"]}
    network = next(r for r in report["members"] if r["member"] == "network")
    assert report["metric"] == "f1_micro" and weights["network"] < 1.0
    assert report["ensemble"]["valid"] >= network["valid"] and report["ensemble"]["test"] > 0.9
    assert model.metrics["test"]["outputs"]["tags"]["f1_micro"] > 0.9  # what the saved graph answers
    export(tmp_path / "m", data=csv)
    records = [{"note": r["note"], "age": r["age"]} for r in rows[:16]]
    onnx_p = Runtime(tmp_path / "m").predict_proba(records)["tags"]
    torch_p = model.predict_proba(records).to_numpy()
    np.testing.assert_allclose(onnx_p, torch_p, atol=1e-4)
    assert onnx_p.shape == (16, 4) and ((onnx_p > 0.5) == np.array(
        [[lab in r["tags"].split("|") for lab in ("bone", "heart", "lung", "none")] for r in rows[:16]])).mean() > 0.9


def test_members_fitted_side_by_side_equal_those_fitted_one_at_a_time(toy_csv):
    """Two fits at once (torch given two threads) install exactly what one at a time installs."""
    import torch

    import polyfuse
    from polyfuse.spec.schema import load_spec
    from polyfuse.training.linear_members import fit_members
    from polyfuse.training.trainset import read_splits

    model = polyfuse.train(toy_spec(toy_csv, epochs=1, baseline=False, ensemble="auto"), show_progress=False)
    spec, base = load_spec(toy_spec(toy_csv, epochs=1, baseline=False))
    splits = read_splits(spec, base, None, False)
    installed = []
    threads = torch.get_num_threads()
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            report = fit_members(spec, model.preprocessor, model.net, splits.train, splits.valid)
            installed.append((report["C"], {k: v.clone() for k, v in model.net.members.state_dict().items()}))
    finally:
        torch.set_num_threads(threads)
    (c1, one), (c2, two) = installed
    assert c1 == c2 and len(c1["label"]) == len(model.net.members.members)
    for key in one:
        torch.testing.assert_close(one[key], two[key], rtol=0, atol=0)


def test_a_label_constant_in_training_answers_its_rate():
    """One regression per label; a label on every training row (or on none) gets no weights and a bias
    of +-9 (probability 1 - 1e-4 or 1e-4), without validation rows too."""
    from polyfuse.training.linear_members import fit_labels, unfittable

    rng = np.random.default_rng(6)
    x = rng.normal(size=(200, 5))
    y = np.stack([np.ones(200), (x[:, 0] > 0), np.zeros(200)], 1).astype(int)
    for xv, yv in ((x[:50], y[:50]), (None, None)):
        coef, intercept, strengths = fit_labels(x, y, xv, yv)
        assert intercept[0] == 9.0 and intercept[2] == -9.0 and not coef[[0, 2]].any()
        assert strengths[0] is None and strengths[1] is not None and coef[1, 0] > 1.0
    assert unfittable(y) is None and "no label" in unfittable(y[:, [0, 2]])

"""Training end to end on the toy table: accuracy, determinism, resume, artifact, outputs."""
import json

import numpy as np
import pandas as pd
import pytest
import torch

import polyfuse
from polyfuse.errors import ArtifactError, SpecError
from tests.conftest import toy_spec, train_interrupted


def test_toy_model_learns_and_reports(toy_model):
    model, out = toy_model
    test = model.metrics["test"]
    assert test["outputs"]["label"]["accuracy"] >= 0.9
    m = test["outputs"]["label"]
    for key in ("precision_macro", "recall_weighted", "f1_macro", "f1_weighted", "roc_auc_ovr_macro", "confusion_matrix"):
        assert key in m
    assert np.array(m["confusion_matrix"]["matrix"]).sum() == m["n"] == model.metrics["sizes"]["test"]
    assert set(test["ablation"]["only"]) == set(model.spec.inputs) == set(test["ablation"]["without"])
    files = {p.name for p in out.iterdir()}
    assert {"spec.yaml", "weights.safetensors", "preprocess.json", "metrics.json", "MODEL_CARD.md",
            "manifest.json", "learning_curves.png", "confusion_label.png", "history.json"} <= files
    assert not out.with_name(out.name + ".checkpoint").exists()
    card = (out / "MODEL_CARD.md").read_text()
    assert "Intended use and limits" in card and "only photo" in card


def test_artifact_round_trip_predictions(toy_model, toy_csv):
    model, out = toy_model
    loaded = polyfuse.load(out)
    frame = pd.read_csv(toy_csv).head(10)
    a, b = model.predict(frame, folder=toy_csv.parent), loaded.predict(frame, folder=toy_csv.parent)
    assert a.equals(b) and list(a.columns) == ["label"] and set(a["label"]) <= {"cat", "dog", "owl"}
    proba = loaded.predict_proba(frame, folder=toy_csv.parent)
    assert list(proba.columns) == ["cat", "dog", "owl"]
    assert np.allclose(proba.sum(axis=1), 1.0, atol=1e-5)
    assert (proba.idxmax(axis=1) == a["label"]).all()
    # records may omit inputs entirely: the model answers from the rest
    partial = loaded.predict([{"weight": 4.1, "note": "the owlish big"}])
    assert partial["label"].iloc[0] in {"cat", "dog", "owl"}
    result = loaded.evaluate(toy_csv)
    assert result["rows"] == 90 and result["outputs"]["label"]["accuracy"] > 0.8


def test_tampered_or_incomplete_artifact_is_refused(toy_model, tmp_path):
    import shutil

    _, out = toy_model
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    data = bytearray((copy / "weights.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (copy / "weights.safetensors").write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="'weights.safetensors' was modified"):
        polyfuse.load(copy)
    (copy / "preprocess.json").unlink()
    with pytest.raises(ArtifactError, match="preprocess.json"):
        polyfuse.load(copy)
    (copy / "manifest.json").unlink()
    with pytest.raises(ArtifactError, match="no manifest.json"):
        polyfuse.load(copy)
    with pytest.raises(ArtifactError, match="not found"):
        polyfuse.load(tmp_path / "nothing")


def test_same_seed_same_weights(toy_csv):
    spec = toy_spec(toy_csv, epochs=2)
    a = polyfuse.train(spec, show_progress=False)
    b = polyfuse.train(spec, show_progress=False)
    for (k, va), vb in zip(a.net.state_dict().items(), b.net.state_dict().values()):
        assert torch.equal(va, vb), k
    assert a.history[-1]["valid_loss"] == b.history[-1]["valid_loss"]


@pytest.mark.parametrize("ema", [None, 0.8], ids=["plain", "ema"])
def test_resume_matches_uninterrupted_run(toy_csv, tmp_path, ema):
    spec = toy_spec(toy_csv, epochs=4, early_stopping=None, ema=ema)  # ema: the average is checkpointed too
    spec["inputs"]["sound"]["augment"] = {"speed": [0.9, 1.1], "random_crop": True}  # exercises per-epoch rng
    whole = polyfuse.train(spec, out=tmp_path / "whole", show_progress=False)

    train_interrupted(spec, tmp_path / "cut")
    ckpt = tmp_path / "cut.checkpoint"
    assert (ckpt / "state.safetensors").exists() and json.loads((ckpt / "state.json").read_text())["epoch"] == 1
    assert not (tmp_path / "cut").exists()
    resumed = polyfuse.train(spec, out=tmp_path / "cut", resume=True, show_progress=False)
    assert len(resumed.history) == 4
    for (k, va), vb in zip(whole.net.state_dict().items(), resumed.net.state_dict().values()):
        assert torch.equal(va, vb), k
    assert whole.metrics["test"]["outputs"] == resumed.metrics["test"]["outputs"]

    other = toy_spec(toy_csv, epochs=5)
    with pytest.raises(SpecError, match="no checkpoint"):
        polyfuse.train(other, out=tmp_path / "elsewhere", resume=True, show_progress=False)


def test_weight_average_follows_the_steps_and_swaps_in_only_when_asked():
    from polyfuse.training.averaging import WeightAverage

    net = torch.nn.Linear(2, 1)
    with torch.no_grad():
        net.weight.fill_(0.0)
    avg = WeightAverage(net, decay=0.5)
    expected = torch.zeros_like(net.weight)
    for step, value in enumerate([4.0, 8.0, 2.0, 6.0], start=1):
        with torch.no_grad():
            net.weight.fill_(value)
        avg.update()
        d = min(0.5, (1 + step) / (10 + step))  # the warm-up, then the decay
        expected = d * expected + (1 - d) * value
    assert torch.allclose(avg.shadow["weight"], expected)
    with avg.applied():
        assert torch.allclose(net.weight, expected)
    assert torch.equal(net.weight, torch.full_like(net.weight, 6.0))  # the network's own weights are back


def test_multiple_outputs_of_every_type_from_a_dataframe(toy_csv):
    frame = pd.read_csv(toy_csv)
    frame["is_cat"] = np.where(frame["label"] == "cat", "yes", "no")
    frame["size"] = frame["weight"] * 3 + 1
    frame["tags"] = ["furry|pet" if k == "cat" else ("pet" if k == "dog" else "wild") for k in frame["label"]]
    spec = toy_spec(toy_csv, epochs=8)
    del spec["data"]["train"]
    del spec["inputs"]["weight"]
    spec["outputs"] = {"label": {"type": "category", "class_weights": "balanced"}, "is_cat": {"type": "binary"},
                       "size": {"type": "number"}, "tags": {"type": "multilabel"}}
    model = polyfuse.train(spec, data=frame.assign(photo=[str(toy_csv.parent / p) for p in frame["photo"]],
                                                   sound=[str(toy_csv.parent / p) for p in frame["sound"]]),
                           show_progress=False)
    m = model.metrics["test"]["outputs"]
    assert model.preprocessor.classes("is_cat") == ["no", "yes"]  # 'yes' is the positive class
    assert m["is_cat"]["accuracy"] >= 0.8 and m["is_cat"]["roc_auc"] is not None
    assert {"mae", "rmse", "r2"} <= set(m["size"]) and m["size"]["r2"] > 0.5
    assert {"subset_accuracy", "f1_micro", "f1_macro"} <= set(m["tags"])
    pred = model.predict(frame.head(3).assign(photo=None, sound=None))
    assert list(pred.columns) == ["label", "is_cat", "size", "tags"]
    assert all(isinstance(v, float) for v in pred["size"])
    assert set("|".join(pred["tags"]).split("|")) <= {"furry", "pet", "wild", ""}


def test_too_few_groups_and_bad_metric_are_spec_errors(toy_csv):
    spec = toy_spec(toy_csv)
    spec["data"]["split"] = {"valid": 0.2, "group_by": "color"}
    spec["train"]["metric"] = "nolabel.accuracy"
    with pytest.raises(SpecError, match="unknown output 'nolabel'"):
        polyfuse.train(spec, show_progress=False)
    spec["train"]["metric"] = None
    spec["data"]["split"]["group_by"] = "nope"
    with pytest.raises(SpecError, match="group_by: column 'nope'"):
        polyfuse.train(spec, show_progress=False)


def test_unlearnable_training_rows_get_a_clear_error_or_warning():
    import pandas as pd

    from polyfuse.errors import SpecError

    spec = {"inputs": {"t": {"type": "text", "buckets": 1024}, "n": {"type": "number"}},
            "outputs": {"y": {"type": "category"}}, "train": {"epochs": 1, "threads": 1}}
    one_class = pd.DataFrame({"t": ["a b", "c d"] * 10, "n": [1.0] * 20, "y": ["x"] * 20})
    with pytest.raises(SpecError, match="every training row has the class 'x'.*at least two classes"):
        polyfuse.train(spec, data=one_class, show_progress=False)
    odd = pd.DataFrame({"t": [None] * 41, "n": [float(i % 2) for i in range(41)], "y": ["x", "z"] * 20 + ["w"]})
    spec["data"] = {"split": {"valid": 0.1, "seed": 1}}
    model = polyfuse.train(spec, data=odd, show_progress=False)
    warnings = " ".join(model.metrics["data_warnings"])
    assert "column 't' is empty in every training row" in warnings
    assert "single training row (w)" in warnings or "w" not in model.preprocessor.classes("y")


def test_a_time_limit_ends_training_and_skips_the_stages_that_no_longer_fit(toy_csv, tmp_path):
    """train.time_limit: with 10 ms (spent reading the table) the run stops after its first epoch and skips
    the ensemble and the baseline, says so in metrics.json, and still saves a model that predicts; a limit
    it never reaches skips nothing."""
    import polyfuse

    model = polyfuse.train(toy_spec(toy_csv, epochs=50, time_limit=0.01), out=tmp_path / "short", show_progress=False)
    limit = model.metrics["time_limit"]
    assert len(model.history) == 1 and "epochs 2-50" in limit["skipped"]
    assert "ensemble" in limit["skipped"] and "baseline" in limit["skipped"] and "baseline" not in model.metrics
    assert model.metrics["ensemble"]["off"].startswith("skipped: the time limit")
    assert len(polyfuse.load(tmp_path / "short").predict(toy_csv)) > 0
    roomy = polyfuse.train(toy_spec(toy_csv, epochs=2, time_limit=3600), out=tmp_path / "roomy", show_progress=False)
    assert roomy.metrics["time_limit"]["skipped"] == [] and len(roomy.history) == 2


def test_the_runs_peak_memory_is_in_metrics(toy_model):
    model, out = toy_model
    peak = json.loads((out / "metrics.json").read_text())["peak_rss_mb"]
    assert 50 < peak["mb"] < 24 * 1024 and peak["since"] in ("this run", "the process started")

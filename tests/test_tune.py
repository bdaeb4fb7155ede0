"""`polyfuse tune` (Optuna, resumable SQLite study, per-epoch pruning) and `polyfuse leaderboard`."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml
from conftest import toy_spec

from polyfuse.errors import PolyfuseError, SpecError
from polyfuse.experiments import leaderboard, tune


def test_space_entries_parse_and_bad_ones_name_their_field():
    dims = tune.parse_space({"train.lr": "loguniform(1e-4, 1e-2)", "fusion.method": ["concat", "gated"],
                             "fusion.dim": "int(32, 128)", "fusion.dropout": "uniform(0, 0.5)"})
    assert dims["train.lr"].kind == "loguniform" and dims["train.lr"].high == 1e-2
    assert dims["fusion.method"].choices == ("concat", "gated") and dims["fusion.dim"].kind == "int"
    for bad in ({"train.lr": "normal(0, 1)"}, {"train.lr": "loguniform(0, 1)"}, {"fusion.dim": "int(5, 2)"},
                {"fusion.method": []}):
        with pytest.raises(SpecError, match=next(iter(bad))):
            tune.parse_space(bad)
    spec = {"inputs": {"note": {"type": "text"}}, "train": {"lr": 1e-3}}
    assert tune.apply(spec, {"inputs.note.encoder": "cnn", "train.lr": 0.01})["inputs"]["note"]["encoder"] == "cnn"
    assert spec["train"]["lr"] == 1e-3  # the base spec is never changed
    with pytest.raises(SpecError, match="inputs.nope.encoder"):
        tune.apply(spec, {"inputs.nope.encoder": "cnn"})


def searchable(toy_csv, tmp_path) -> tuple[dict, dict]:
    """A quick spec (text, number, category) written to tmp_path/spec.yaml, and a small space over it."""
    spec = toy_spec(toy_csv, epochs=3)
    spec["inputs"] = {k: v for k, v in spec["inputs"].items() if k in ("note", "weight", "color")}
    spec["train"]["ensemble"] = "off"
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    return spec, {"train.lr": "loguniform(1e-3, 3e-2)", "fusion.method": ["concat", "gated"]}


def test_search_resumes_without_repeating_a_trial_and_the_leaderboard_ranks_it(toy_csv, tmp_path):
    spec, space = searchable(toy_csv, tmp_path)
    out = tmp_path / "tune"
    first = tune.tune(tmp_path / "spec.yaml", space, trials=2, out=out)
    assert first["complete"] == 2 and (out / "best.yaml").exists()
    # the first trial is where the user started: the search's best is never below it on validation
    study = optuna.load_study(study_name="polyfuse", storage=f"sqlite:///{out / 'study.db'}")
    assert study.trials[0].params == {"train.lr": spec["train"]["lr"], "fusion.method": spec["fusion"]["method"]}
    dims = tune.parse_space({"train.weight_decay": "loguniform(1e-6, 1e-2)", "fusion.dim": "int(64, 256)"})
    assert tune.starting_point({"train": {"weight_decay": 0.0}, "fusion": {"dim": 32}}, dims) == {
        "train.weight_decay": 1e-6, "fusion.dim": 64}  # out of range: the nearest the space allows
    assert first["best"]["value"] >= study.trials[0].value
    # a search killed in the middle of a trial leaves it RUNNING in the study
    study.ask()
    second = tune.tune(tmp_path / "spec.yaml", space, trials=4, out=out, refit=True)
    states = [t.state.name for t in optuna.load_study(study_name="polyfuse", storage=f"sqlite:///{out / 'study.db'}").trials]
    assert states.count("COMPLETE") + states.count("PRUNED") == 4 and states.count("FAIL") == 1
    assert second["trials"] == 5  # two before, the interrupted one, two more: none run twice
    refit = json.loads((out / "refit" / "metrics.json").read_text())
    assert refit["sizes"]["valid"] == 0 and refit["sizes"]["train"] > json.loads(
        (Path(second["best"]["model"]) / "metrics.json").read_text())["sizes"]["train"]
    best = yaml.safe_load((out / "best.yaml").read_text())
    assert best["fusion"]["method"] in ("concat", "gated") and best["inputs"] == spec["inputs"]

    rows = [r for r in leaderboard.leaderboard(out) if r["run"] != "refit"]
    complete = [t for t in states if t == "COMPLETE"]
    assert len(rows) == len(complete) and rows[0]["best"] == "*"
    assert [r["valid"] for r in rows] == sorted((r["valid"] for r in rows), reverse=True)
    assert rows[0]["run"] == Path(second["best"]["model"]).name and json.loads(rows[0]["params"])
    done = subprocess.run([sys.executable, "-m", "polyfuse", "leaderboard", str(out), "--csv", str(tmp_path / "lb.csv")],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "| * | trial-" in done.stdout
    with open(tmp_path / "lb.csv") as f:
        assert len(list(csv.DictReader(f))) == len(rows) + 1  # and the refit model


def tracked_runs(store: str) -> tuple[object, list]:
    """The search's parent run and its trials' runs in the MLflow store (experiment 'search')."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=store)
    runs = client.search_runs([client.get_experiment_by_name("search").experiment_id])
    parents = [r for r in runs if "polyfuse.tune.engine" in r.data.tags]
    assert len(parents) == 1, [r.data.tags for r in runs]
    return parents[0], [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]


def test_tracked_trials_nest_under_the_search_run_with_the_best_settings(toy_csv, tmp_path):
    spec, space = searchable(toy_csv, tmp_path)
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    spec["train"].update(epochs=2, tracking={"mlflow": store, "experiment": "search"})
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    result = tune.tune(tmp_path / "spec.yaml", space, trials=2, out=tmp_path / "tune")
    parent, trials = tracked_runs(store)
    assert parent.info.status == "FINISHED" and parent.data.params["space.train.lr"] == "loguniform(1e-3, 3e-2)"
    assert parent.data.metrics["best.value"] == pytest.approx(result["best"]["value"])
    assert parent.data.params["best.fusion.method"] == result["best"]["params"]["fusion.method"]
    assert len(trials) == 2 and {t.info.status for t in trials} <= {"FINISHED", "KILLED"}  # a pruned trial: KILLED
    assert {float(t.data.params["train.lr"]) for t in trials} == {
        t.params["train.lr"] for t in optuna.load_study(study_name="polyfuse",
                                                         storage=f"sqlite:///{tmp_path / 'tune' / 'study.db'}").trials}


def test_a_trial_in_another_process_nests_under_the_run_its_environment_names(toy_csv, tmp_path, monkeypatch):
    """Ray Tune's trials run in workers of their own: the search hands them its run id in PARENT_ENV
    (scale/ray_tune.py), and a tracked training there files its run under it."""
    import mlflow

    import polyfuse
    from polyfuse.spec.schema import Spec
    from polyfuse.training.tracking import PARENT_ENV, SearchRun

    spec, space = searchable(toy_csv, tmp_path)
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    spec["train"].update(epochs=1, tracking={"mlflow": store, "experiment": "search"})
    with SearchRun(Spec.model_validate(spec), space, "ray") as search:
        parent = search.run_id
    monkeypatch.setenv(PARENT_ENV, parent)
    polyfuse.train(spec, out=tmp_path / "m", show_progress=False)  # no run is active in this process now
    found, trials = tracked_runs(store)
    assert found.info.run_id == parent and len(trials) == 1 and trials[0].info.status == "FINISHED"
    assert mlflow.active_run() is None


def test_suggest_writes_a_space_tune_accepts(toy_csv, tmp_path):
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(toy_spec(toy_csv)))
    done = subprocess.run([sys.executable, "-m", "polyfuse", "tune", str(tmp_path / "spec.yaml"), "--suggest"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    space = yaml.safe_load(done.stdout)
    assert space["inputs.note.encoder"] == ["ngram", "cnn"] and "train.lr" in space
    assert space["train.ensemble"] == ["off", "auto"]  # the network alone, or mixed with linear models
    assert set(tune.parse_space(space)) == set(space)


def test_leaderboard_of_a_folder_without_models_says_so(tmp_path):
    with pytest.raises(PolyfuseError, match="no model directories"):
        leaderboard.leaderboard(tmp_path)


@pytest.fixture
def own_ray():
    """The local Ray the search starts, shut down after (other test modules in this process start their own)."""
    import ray

    yield
    ray.shutdown()


def test_ray_engine_searches_with_asha_and_resumes_without_rerunning(toy_csv, tmp_path, own_ray):
    from polyfuse.scale.ray_tune import tune_ray

    spec, space = searchable(toy_csv, tmp_path)
    first = tune_ray(tmp_path / "spec.yaml", space, 3, tmp_path / "ray-tune")
    assert first["engine"] == "ray" and first["trials"] == 3 and first["complete"] >= 1
    assert first["complete"] + first["pruned"] + first["failed"] == 3
    assert (tmp_path / "ray-tune" / "best.yaml").exists() and Path(first["best"]["model"]).is_dir()
    again = tune_ray(tmp_path / "spec.yaml", space, 3, tmp_path / "ray-tune")  # restored: nothing left to run
    assert again["trials"] == 3 and again["best"] == first["best"]
    rows = leaderboard.leaderboard(tmp_path / "ray-tune")
    assert rows[0]["best"] == "*" and rows[0]["run"].startswith("trial-") and len(rows) == first["complete"]

"""Tracking to MLflow (its SQLite store, and `mlflow server` on 127.0.0.1) and TensorBoard, a dead tracking
server that costs nothing, and polyfuse models as an MLflow pyfunc flavour."""
from __future__ import annotations

import hashlib
import socket
import subprocess
import sys
import time
import urllib.request

import mlflow
import pandas as pd
import pytest
import yaml
from conftest import toy_spec

import polyfuse
import polyfuse.mlflow as pf_mlflow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def small_spec(toy_csv, **tracking) -> dict:
    spec = toy_spec(toy_csv, epochs=2)
    spec["inputs"] = {k: v for k, v in spec["inputs"].items() if k in ("note", "weight", "color")}
    spec["train"]["ensemble"] = "off"
    if tracking:
        spec["train"]["tracking"] = tracking
    return spec


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A real MLflow tracking server on 127.0.0.1 with its own SQLite store and artifact folder."""
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                             "--backend-store-uri", f"sqlite:///{root / 'store.db'}",
                             "--artifacts-destination", (root / "artifacts").as_uri(), "--workers", "1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=root)
    uri = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            if urllib.request.urlopen(uri + "/health", timeout=2).status == 200:
                break
        except OSError:
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail("mlflow server did not start within 90 s")
    yield uri
    proc.terminate()
    proc.wait(timeout=30)


def test_a_run_is_tracked_in_mlflow_and_tensorboard(toy_csv, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path / "..")  # artifacts go beside the SQLite store, wherever the run starts
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    spec = small_spec(toy_csv, mlflow=store, experiment="toy", tensorboard=str(tmp_path / "tb"))
    polyfuse.train(spec, out=tmp_path / "m", show_progress=False)
    client = mlflow.MlflowClient(tracking_uri=store)
    run = client.search_runs([client.get_experiment_by_name("toy").experiment_id])[0]
    assert run.info.status == "FINISHED"
    assert float(run.data.params["train.lr"]) == spec["train"]["lr"] and run.data.params["inputs.note.type"] == "text"
    assert run.data.metrics["final.valid.label.accuracy"] >= 0 and "final.baseline.label.all.valid.accuracy" in run.data.metrics
    assert [m.step for m in client.get_metric_history(run.info.run_id, "valid_loss")] == [0, 1]
    assert run.data.tags["polyfuse.data.train.sha256"] == hashlib.sha256(toy_csv.read_bytes()).hexdigest()
    assert run.info.artifact_uri.startswith((tmp_path / "mlruns").as_uri())
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"MODEL_CARD.md", "metrics.json", "spec.yaml", "plots"} <= names
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    assert len(events.Scalars("valid/loss")) == 2


def test_a_dead_tracking_server_is_reported_once_and_costs_the_run_nothing(toy_csv, tmp_path):
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(small_spec(toy_csv)))
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "polyfuse", "train", str(tmp_path / "spec.yaml"), "--out",
                           str(tmp_path / "m"), "--quiet", "--track", f"http://127.0.0.1:{free_port()}"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("cannot be reached") == 1 and (tmp_path / "m" / "manifest.json").exists()
    assert time.perf_counter() - t0 < 120


def test_tracking_server_and_pyfunc_flavour_round_trip(server, toy_csv, tmp_path):
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(small_spec(toy_csv)))
    done = subprocess.run([sys.executable, "-m", "polyfuse", "train", str(tmp_path / "spec.yaml"), "--out",
                           str(tmp_path / "m"), "--quiet", "--track", server], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    client = mlflow.MlflowClient(tracking_uri=server)
    run = client.search_runs([client.get_experiment_by_name("polyfuse").experiment_id])[0]
    assert run.info.status == "FINISHED" and "final.valid.label.accuracy" in run.data.metrics

    mlflow.set_tracking_uri(server)
    with mlflow.start_run():
        info = pf_mlflow.log_model(tmp_path / "m", registered_model_name="toy")
    loaded = mlflow.pyfunc.load_model(info.model_uri)
    records = pd.read_csv(toy_csv)[["note", "weight", "color"]].head(10)
    got = loaded.predict(records)
    want = polyfuse.load(tmp_path / "m").predict(records.to_dict("records"))
    assert got["label"].tolist() == want["label"].tolist()
    assert client.get_registered_model("toy").latest_versions[0].source  # in the registry

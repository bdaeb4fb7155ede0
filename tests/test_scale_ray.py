"""Scale-out: Ray Data batch prediction against local predict (a bad row included), the app on Ray
Serve over real HTTP, and the message a missing Ray gives. Ray tests skip when Ray is not installed.
The Kubernetes manifests need no Ray: tests/test_k8s.py."""
from __future__ import annotations

import base64
import importlib.util
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest

from polyfuse.errors import PolyfuseError

HAS_RAY = importlib.util.find_spec("ray") is not None
needs_ray = pytest.mark.skipif(not HAS_RAY, reason="ray is not installed (pip install 'polyfuse[ray]')")


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray (2 CPUs) for this module's Ray Data and Ray Serve tests, always shut down."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()


def local_predictions(model_dir: Path, table: Path, out: Path) -> pd.DataFrame:
    """`polyfuse predict --runtime onnx` as a frame (keep_default_na off: an empty cell stays '')."""
    from polyfuse.deploy.batch import predict_table
    from polyfuse.runtime import Runtime

    rt = Runtime(model_dir)
    predict_table(rt.spec, rt.preprocessor, rt.run_arrays, table, out, chunk_rows=16, show_progress=False)
    return pd.read_csv(out, keep_default_na=False, dtype=str)


def as_csv_text(frame: pd.DataFrame) -> pd.DataFrame:
    """Ray's Parquet rows as the local CSV writes them: probabilities to 6 places, null as ''."""
    frame = frame.sort_values("row").reset_index(drop=True)
    frame["label_probability"] = [("" if np.isnan(p) else f"{p:.6f}") for p in frame["label_probability"]]
    return frame.astype(object).where(frame.notna(), "").astype(str)


@needs_ray
def test_ray_data_predict_matches_local_predict(local_ray, toy_dir, toy_csv, tmp_path):
    from polyfuse.scale.ray_data import predict_ray

    frame = pd.read_csv(toy_csv)
    frame.loc[5, "photo"] = "img/no-such-file.png"  # a bad row: reported, never fatal
    frame.loc[7, "note"] = None  # a missing value: predicted from the other inputs
    table = toy_csv.parent / "ray-parity.csv"  # beside the media, whose paths are relative to the table
    frame.to_csv(table, index=False)
    try:
        want = local_predictions(toy_dir, table, tmp_path / "local.csv")
        counts = predict_ray(toy_dir, table, tmp_path / "out", chunk_rows=16)
    finally:
        table.unlink()
    assert counts == {"rows": len(frame), "bad": 1, "shards": counts["shards"]} and counts["shards"] >= 2
    got = as_csv_text(pd.read_parquet(tmp_path / "out"))
    assert list(got.columns) == ["row", "id", "label", "label_probability", "error"] == list(want.columns)
    pd.testing.assert_frame_equal(got, want)
    assert "no-such-file.png" in want.loc[5, "error"] and want.loc[5, "label"] == ""
    assert not list(tmp_path.glob(".out.tmp-*"))


@needs_ray
def test_ray_data_reads_a_folder_of_parquet_files(local_ray, toy_dir, toy_csv, tmp_path):
    from polyfuse.scale.ray_data import predict_ray

    frame = pd.read_csv(toy_csv)
    folder = tmp_path / "parquet"  # media paths made absolute: the files live beside the toy table
    folder.mkdir()
    absolute = frame.assign(photo=[str(toy_csv.parent / p) for p in frame["photo"]],
                            sound=[str(toy_csv.parent / p) for p in frame["sound"]])
    absolute.iloc[:50].to_parquet(folder / "part-0.parquet", row_group_size=20)
    absolute.iloc[50:].to_parquet(folder / "part-1.parquet")
    counts = predict_ray(toy_dir, folder, tmp_path / "out", chunk_rows=16)
    want = local_predictions(toy_dir, toy_csv, tmp_path / "local.csv")
    got = as_csv_text(pd.read_parquet(tmp_path / "out"))
    assert counts["rows"] == len(frame) and counts["bad"] == 0
    pd.testing.assert_frame_equal(got, want)  # row ids run on across files and row groups


@needs_ray
def test_ray_serve_answers_like_the_model(local_ray, toy_dir, toy_csv):
    from polyfuse.runtime import Runtime
    from polyfuse.scale import ray_serve
    from polyfuse.serve.config import ServeConfig
    from tests.serving import free_port, toy_records

    records = toy_records(toy_csv, 3)
    want = Runtime(toy_dir).predict(records)
    cfg = ServeConfig(port=free_port(), max_batch=4, max_delay_ms=20, check_batching=False)
    url = f"http://127.0.0.1:{cfg.port}"
    body = {"records": [{k: base64.b64encode(v).decode() if isinstance(v, bytes) else v for k, v in r.items()}
                        for r in records]}
    try:
        ray_serve.start(toy_dir, cfg, replicas=1)
        with httpx.Client(base_url=url, timeout=30) as c:
            deadline = time.monotonic() + 60  # bounded: a few tries while the proxy learns the route
            while c.get("/v2/health/ready").status_code != 200:
                assert time.monotonic() < deadline, "Ray Serve app not ready"
                time.sleep(0.2)
            r = c.post("/predict", json=body)
            assert r.status_code == 200, r.text
            got = r.json()["predictions"]
            assert [g["label"] for g in got] == [w["label"] for w in want]
            assert np.allclose([g["label_probability"] for g in got], [w["label_probability"] for w in want],
                               atol=1e-6)
            inputs = [{"name": n, "shape": [3], "datatype": "FP32" if n == "weight" else "BYTES",
                       "data": [base64.b64encode(r[n]).decode() if isinstance(r[n], bytes) else r[n] for r in records]}
                      for n in records[0]]
            r = c.post("/v2/models/toy/infer", json={"inputs": inputs})
            assert r.status_code == 200, r.text
            outputs = {o["name"]: o for o in r.json()["outputs"]}
            assert outputs["label_label"]["data"] == [w["label"] for w in want]
            assert c.get("/v2/models/toy").json()["name"] == "toy"
            # concurrent requests share @serve.batch calls; the batches are counted in /metrics
            import concurrent.futures as cf

            with cf.ThreadPoolExecutor(6) as pool:
                codes = list(pool.map(lambda _: c.post("/predict", json=body).status_code, range(12)))
            assert codes == [200] * 12
            metrics = c.get("/metrics").text
            assert "polyfuse_requests_total" in metrics and 'endpoint="predict",status="200"' in metrics
            assert c.post("/predict", json={"records": [{"nope": 1}]}).status_code == 400
    finally:
        ray_serve.stop()
    with pytest.raises(httpx.HTTPError):
        httpx.get(url + "/v2/health/live", timeout=2)


def test_missing_ray_names_the_extra(monkeypatch, toy_dir, toy_csv, tmp_path, capsys):
    from polyfuse.cli.main import main
    from polyfuse.scale import require_ray

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ImportError
    with pytest.raises(PolyfuseError, match=r"pip install 'polyfuse\[ray\]'"):
        require_ray("--engine ray")
    assert main(["predict", str(toy_dir), str(toy_csv), "--engine", "ray", "--out", str(tmp_path / "o")]) == 2
    assert "pip install 'polyfuse[ray]'" in capsys.readouterr().err

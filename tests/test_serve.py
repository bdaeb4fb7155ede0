"""`polyfuse serve` as deployed: a real server subprocess on 127.0.0.1, real HTTP, nothing mocked.

Parity with ``polyfuse.load(...).predict`` (JSON and multipart), a corpus of malformed requests
(exact status, the record and field named, the server still ready after each), the API key,
/metrics, no server-side file reads, and the torch runtime answering like the ONNX one. Overload,
timeouts and draining are in test_serve_lifecycle.py.
"""

import hashlib
import io
import json
import struct
import time
from pathlib import Path
from typing import Any, Callable

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.conftest import toy_spec
from tests.serving import (
    API_KEY,
    API_KEY_ENV,
    GOOD,
    Server,
    as_json,
    as_multipart,
    assert_ready,
    b64,
    check_prediction,
    png_with_size,
    toy_records,
)


# ---------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def logs(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("serve-logs")


@pytest.fixture(scope="module")
def server(toy_dir, logs, toy_csv):
    """The ONNX server with small limits; its working directory holds the toy images (relative paths
    in a request must still not be read)."""
    s = Server(toy_dir, ["--max-body-mb", "1", "--max-records", "8"], logs, cwd=toy_csv.parent)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def key_server(toy_dir, logs):
    s = Server(toy_dir, ["--api-key-env", API_KEY_ENV], logs, env={API_KEY_ENV: API_KEY})
    yield s
    s.stop()


@pytest.fixture(scope="module")
def torch_server(toy_dir, logs):
    # --max-batch 1 skips the start-up batching measurement, which is slow under torch on 2 cores
    s = Server(toy_dir, ["--runtime", "torch", "--max-batch", "1"], logs)
    yield s
    s.stop()


# ---------------------------------------------------------------------------- predictions
def test_json_predict_matches_the_model(server, reference, toy_csv):
    records = toy_records(toy_csv, 4)
    labels = reference.predict(records)["label"].tolist()
    proba = reference.predict_proba(records)
    with server.client() as c:
        r = c.post("/predict", json={"records": [as_json(r) for r in records]})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["model"] == "toy" and r.headers["x-request-id"] == body["request_id"]
        assert len(body["predictions"]) == 4
        for i, got in enumerate(body["predictions"]):
            check_prediction(got, labels[i], proba.iloc[i])
        one = c.post("/predict", json={"records": [as_json(records[2])]})  # one record, and the bare-object form
        bare = c.post("/predict", json=as_json(records[2]), headers={"x-request-id": "my-id-1"})
    assert one.status_code == bare.status_code == 200
    check_prediction(one.json()["predictions"][0], labels[2], proba.iloc[2])
    check_prediction(bare.json()["predictions"][0], labels[2], proba.iloc[2])
    assert bare.json()["request_id"] == "my-id-1" and bare.headers["x-request-id"] == "my-id-1"


def test_multipart_predict_matches_the_model(server, reference, toy_csv):
    records = toy_records(toy_csv, 3)
    labels = reference.predict(records)["label"].tolist()
    proba = reference.predict_proba(records)
    with server.client() as c:
        for i, record in enumerate(records):
            files, data = as_multipart(record)
            r = c.post("/predict", files=files, data=data)
            assert r.status_code == 200, r.text
            check_prediction(r.json()["predictions"][0], labels[i], proba.iloc[i])


def test_records_with_missing_inputs_are_answered(server, reference, toy_csv):
    full = toy_records(toy_csv, 3)
    partial = [{"note": full[0]["note"], "weight": full[0]["weight"]},  # no image, no audio
               {"photo": full[1]["photo"], "note": None},  # null = missing
               {"sound": full[2]["sound"], "color": full[2]["color"]}]
    labels = reference.predict(partial)["label"].tolist()
    proba = reference.predict_proba(partial)
    with server.client() as c:
        r = c.post("/predict", json={"records": [as_json(p) for p in partial]})
        assert r.status_code == 200, r.text
        for i, got in enumerate(r.json()["predictions"]):
            check_prediction(got, labels[i], proba.iloc[i])
        files, data = as_multipart(partial[2])
        files["photo"] = ("empty.png", b"", "image/png")  # an empty file = missing
        r = c.post("/predict", files=files, data={**data, "weight": ""})
        assert r.status_code == 200, r.text
        check_prediction(r.json()["predictions"][0], labels[2], proba.iloc[2])


# ---------------------------------------------------------------------------- malformed requests
def _jpeg_head_then_garbage() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 10, 10)).save(buf, "JPEG")
    return buf.getvalue()[:20] + b"\x13\x37garbage" * 40


def _truncated_wav(toy_csv: Path) -> bytes:
    wav = (toy_csv.parent / "wav" / "0.wav").read_bytes()
    return wav[: len(wav) // 2]


def _json(records: list[dict]) -> dict:
    return {"json": {"records": records}}


def _raw(body: bytes, ctype: str = "application/json") -> dict:
    return {"content": body, "headers": {"content-type": ctype}}


def _chunked(total: int) -> dict:
    def chunks():
        for _ in range(total // 65536 + 1):
            yield b" " * 65536  # no Content-Length: the limit must hold while reading

    return {"content": chunks(), "headers": {"content-type": "application/json"}}



# name -> (request kwargs for POST /predict (given the toy CSV), status, record, field)
MALFORMED: dict[str, tuple[Callable[[Path], dict], int, int | None, str | None]] = {
    "corrupt PNG": (lambda t: _json([GOOD, {"photo": b64(b"\x89PNG\r\n\x1a\n" + b"\x00garbage" * 30)}]),
                    400, 1, "photo"),
    "corrupt JPEG": (lambda t: _json([{"photo": b64(_jpeg_head_then_garbage())}]), 400, 0, "photo"),
    "truncated WAV": (lambda t: _json([GOOD, GOOD, {"sound": b64(_truncated_wav(t))}]), 400, 2, "sound"),
    "empty body": (lambda t: _raw(b""), 400, None, None),
    "not JSON": (lambda t: _raw(b'{"records": [ {'), 400, None, None),
    "text/plain": (lambda t: _raw(b"photo=cat", "text/plain"), 415, None, None),
    "no content type": (lambda t: {"content": b"{}"}, 415, None, None),
    "bad base64": (lambda t: _json([{"photo": "not base64 at all!!"}]), 400, 0, "photo"),
    "data URI without base64": (lambda t: _json([{"photo": "data:image/png,abc"}]), 400, 0, "photo"),
    "huge PNG header 20000x20000": (lambda t: _json([{"photo": b64(png_with_size(20000, 20000))}]), 413, 0, "photo"),
    "huge PNG header 5000x5000": (lambda t: _json([GOOD, {"photo": b64(png_with_size(5000, 5000))}]), 413, 1, "photo"),
    "body over --max-body-mb": (lambda t: _raw(b"[" * (1 << 20) + b"x" * 4096), 413, None, None),
    "chunked body over --max-body-mb": (lambda t: _chunked(2 << 20), 413, None, None),
    "too many records": (lambda t: _json([GOOD] * 9), 413, None, "records"),
    "no records": (lambda t: _json([]), 400, None, "records"),
    "record not an object": (lambda t: _json([GOOD, "cat"]), 400, 1, None),
    "unknown input": (lambda t: _json([{**GOOD, "bogus": 1}]), 400, 0, "bogus"),
    "NaN token": (lambda t: _raw(b'{"records": [{"note": "x"}, {"weight": NaN}]}'), 400, 1, "weight"),
    "NaN string": (lambda t: _json([{"weight": "nan"}]), 400, 0, "weight"),
    "Infinity token": (lambda t: _raw(b'{"records": [{"weight": -Infinity}]}'), 400, 0, "weight"),
    "number too large for a float": (lambda t: _raw(b'{"records": [{"weight": 1' + b"0" * 400 + b"}]}"),
                                     400, 0, "weight"),
    "number as text": (lambda t: _json([{"weight": "heavy"}]), 400, 0, "weight"),
    "image as a number": (lambda t: _json([{"photo": 7}]), 400, 0, "photo"),
    "every input missing": (lambda t: _json([GOOD, {}]), 400, 1, None),
    "deeply nested JSON": (lambda t: _raw(b"[" * 200_000), 400, None, None),
    "multipart corrupt PNG": (lambda t: {"files": {"photo": ("p.png", b"\x89PNG\r\n\x1a\nbroken", "image/png")}},
                              400, 0, "photo"),
    "multipart truncated WAV": (lambda t: {"files": {"sound": ("s.wav", _truncated_wav(t), "audio/wav")}},
                                400, 0, "sound"),
    "multipart unknown field": (lambda t: {"files": {"bogus": ("b.bin", b"x", "text/plain")}}, 400, 0, "bogus"),
    "multipart malformed": (lambda t: _raw(b"--xyz\r\nnonsense", "multipart/form-data; boundary=abc"),
                            400, None, None),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_request_is_a_4xx_naming_record_and_field(server, toy_csv, case):
    make, status, record, field = MALFORMED[case]
    with server.client() as c:
        started = time.perf_counter()
        r = c.post("/predict", **make(toy_csv))
        took = time.perf_counter() - started
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert isinstance(body["error"], str) and body["error"]
    assert body["record"] == record and body["field"] == field, body
    assert "'None'" not in body["error"], body  # no "field 'None'" for a whole-record problem
    if field is not None and record is not None:
        assert f"record {record}" in body["error"] and field in body["error"]
    if status == 413:
        assert took < 10  # answered from the header / the limit, never by decoding 400 megapixels
    assert_ready(server)


def test_v2_malformed_requests(server, toy_csv):
    png = (toy_csv.parent / "img" / "0.png").read_bytes()

    def binary(inputs: list[dict], blob: bytes, header_length: int | None = None) -> dict:
        head = json.dumps({"inputs": inputs}).encode()
        length = len(head) if header_length is None else header_length
        return {"content": head + blob, "headers": {"Inference-Header-Content-Length": str(length)}}

    def tensor(name: str, dtype: str, data: list, shape: list | None = None, **extra: Any) -> dict:
        return {"json": {"inputs": [{"name": name, "shape": shape or [len(data)], "datatype": dtype, "data": data}],
                         **extra}}

    cases = [
        ("bad base64", tensor("photo", "BYTES", ["%%%"]), 400, "photo"),
        ("unknown input", tensor("nope", "FP32", [1]), 400, "nope"),
        ("shape vs data", tensor("weight", "FP32", [1], shape=[2]), 400, "weight"),
        ("wrong datatype", tensor("weight", "BYTES", ["1"]), 400, "weight"),
        ("NaN string", tensor("weight", "BYTES", ["nan"]), 400, "weight"),
        ("too many records", tensor("weight", "FP32", [1] * 9), 413, None),
        ("outputs not a list", tensor("weight", "FP32", [1], outputs=5), 400, "outputs"),
        ("unknown output", tensor("weight", "FP32", [1], outputs=[{"name": "nope"}]), 400, "nope"),
        ("parameters not an object", tensor("weight", "FP32", [1], parameters=[1]), 400, "parameters"),
        ("inputs not a list", {"json": {"inputs": "weight"}}, 400, "inputs"),
        ("not JSON", {"content": b"not json", "headers": {"content-type": "application/json"}}, 400, None),
        ("every input missing", tensor("weight", "FP32", [None]), 400, None),
        ("BYTES element past the end",
         binary([{"name": "photo", "shape": [1], "datatype": "BYTES", "parameters": {"binary_data_size": 4 + len(png)}}],
                struct.pack("<I", 10**6) + png), 400, "photo"),
        ("FP32 bytes not a multiple of 4",
         binary([{"name": "weight", "shape": [1], "datatype": "FP32", "parameters": {"binary_data_size": 3}}], b"abc"),
         400, "weight"),
        ("binary_data_size past the end",
         binary([{"name": "weight", "shape": [1], "datatype": "FP32", "parameters": {"binary_data_size": 8}}], b"abcd"),
         400, "weight"),
        ("header length past the end", binary([], b"", header_length=99999), 400, None),
        ("header length not a number",
         {"content": b"{}", "headers": {"Inference-Header-Content-Length": "two"}}, 400, None),
        ("corrupt PNG in binary",
         binary([{"name": "photo", "shape": [1], "datatype": "BYTES", "parameters": {"binary_data_size": 14}}],
                struct.pack("<I", 10) + b"\x89PNG\r\n\x1a\nxx"), 400, "photo"),
    ]
    with server.client() as c:
        for name, kwargs, status, word in cases:
            r = c.post("/v2/models/toy/infer", **kwargs)
            assert r.status_code == status, (name, r.text)
            assert set(r.json()) == {"error"} and r.json()["error"], (name, r.text)
            if word:
                assert word in r.json()["error"], (name, r.text)
        r = c.post("/v2/models/other/infer", json={"inputs": []})
        assert r.status_code == 404 and "toy" in r.json()["error"]
        r = c.post("/v2/models/toy/versions/7/infer", json={"inputs": []})
        assert r.status_code == 404 and "version" in r.json()["error"]
    assert_ready(server)


def test_server_never_reads_paths_named_in_requests(server, toy_csv):
    real_png = (toy_csv.parent / "img" / "0.png").resolve()
    paths = ["/etc/passwd", str(real_png), "img/0.png", f"file://{real_png}", "data:image/png;base64,/etc/passwd"]
    with server.client() as c:
        for path in paths:
            r = c.post("/predict", json={"records": [{"photo": path, "note": "a catish"}]})
            assert r.status_code == 400, (path, r.text)
            assert r.json()["field"] == "photo" and "predictions" not in r.json()
            r = c.post("/predict", files={"sound": ("x.wav", b"", "audio/wav")}, data={"photo": path})
            assert r.status_code == 400 and r.json()["field"] == "photo", (path, r.text)
            r = c.post("/v2/models/toy/infer",
                       json={"inputs": [{"name": "photo", "shape": [1], "datatype": "BYTES", "data": [path]}]})
            assert r.status_code == 400 and "outputs" not in r.json(), (path, r.text)
        # raw bytes that spell a path are taken as (undecodable) image bytes, not opened
        r = c.post("/predict", files={"photo": ("p", str(real_png).encode(), "text/plain")})
        assert r.status_code == 400 and r.json()["field"] == "photo"
        assert "could not be decoded" in r.json()["error"]
    assert_ready(server)


# ---------------------------------------------------------------------------- API key
def test_api_key(key_server, toy_csv):
    record = as_json(toy_records(toy_csv, 1)[0])
    with key_server.client() as c:
        for headers in ({}, {"x-api-key": "wrong"}, {"authorization": "Bearer wrong"}, {"x-api-key": API_KEY + "x"}):
            r = c.post("/predict", json={"records": [record]}, headers=headers)
            assert r.status_code == 401 and "API key" in r.json()["error"], r.text
            assert r.headers["www-authenticate"] == "Bearer"
            for path in ("/v2/models/toy", "/metrics", "/v2"):
                assert c.get(path, headers=headers).status_code == 401
            assert c.post("/v2/models/toy/infer", json={"inputs": []}, headers=headers).status_code == 401
        # auth scheme names are case-insensitive (RFC 9110 section 11.1)
        for headers in ({"x-api-key": API_KEY}, {"authorization": f"Bearer {API_KEY}"},
                        {"authorization": f"bearer {API_KEY}"}, {"authorization": f"BEARER  {API_KEY}"}):
            r = c.post("/predict", json={"records": [record]}, headers=headers)
            assert r.status_code == 200 and r.json()["predictions"][0]["label"] in ("cat", "dog", "owl"), r.text
            assert c.get("/v2/models/toy", headers=headers).status_code == 200
        for path in ("/v2/health/live", "/v2/health/ready"):  # probes need no key
            assert c.get(path).status_code == 200
        assert 'status="401"' in c.get("/metrics", headers={"x-api-key": API_KEY}).text


# ---------------------------------------------------------------------------- observability, docs
def test_metrics(server, toy_dir, toy_csv):
    from prometheus_client.parser import text_string_to_metric_families

    with server.client() as c:
        assert c.post("/predict", json={"records": [as_json(toy_records(toy_csv, 1)[0])]}).status_code == 200
        assert c.post("/predict", json={"records": [{"bogus": 1}]}).status_code == 400
        r = c.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(r.text)}
    requests = [s for s in families["polyfuse_requests"].samples if s.name == "polyfuse_requests_total"]
    by_label = {(s.labels["endpoint"], s.labels["status"]): s.value for s in requests}
    assert by_label[("predict", "200")] >= 1 and by_label[("predict", "400")] >= 1
    assert "polyfuse_requests_total{" in r.text
    for name in ("polyfuse_request_seconds", "polyfuse_queue_seconds", "polyfuse_model_seconds",
                 "polyfuse_batch_rows"):
        assert families[name].type == "histogram"
        count = [s for s in families[name].samples if s.name == f"{name}_count"]
        assert count and max(s.value for s in count) >= 1, name
        assert any(s.name == f"{name}_bucket" for s in families[name].samples)
    info = next(s for f in families.values() for s in f.samples if s.name == "polyfuse_model_info")
    assert info.labels["sha256"] == hashlib.sha256((toy_dir / "model.onnx").read_bytes()).hexdigest()
    assert info.labels["name"] == "toy" and info.labels["runtime"] == "polyfuse_onnxruntime"


def test_docs_schema_and_openapi(server):
    with server.client() as c:
        assert c.get("/docs").status_code == 200
        spec = c.get("/openapi.json").json()
        assert "/predict" in spec["paths"] and "/v2/models/{name}/infer" in spec["paths"]
        schema = c.get("/schema").json()
    assert [i["name"] for i in schema["inputs"]] == ["photo", "sound", "note", "weight", "color"]
    assert schema["outputs"] == [{"name": "label", "type": "category", "classes": ["cat", "dog", "owl"]}]


# ---------------------------------------------------------------------------- torch runtime
def test_torch_runtime_answers_like_onnx(server, torch_server, reference, toy_dir, toy_csv):
    records = toy_records(toy_csv, 4)
    records[3] = {"note": records[3]["note"], "sound": records[3]["sound"]}
    body = {"records": [as_json(r) for r in records]}
    v2 = {"inputs": [{"name": "weight", "shape": [2], "datatype": "FP32", "data": [0.1, 3.9]},
                     {"name": "note", "shape": [2], "datatype": "BYTES", "data": ["a catish", "big owlish"]}]}
    answers = {}
    for s in (server, torch_server):
        with s.client() as c:
            r = c.post("/predict", json=body)
            assert r.status_code == 200, r.text
            r2 = c.post("/v2/models/toy/infer", json=v2)
            assert r2.status_code == 200, r2.text
            answers[s.url] = (r.json()["predictions"], r2.json()["outputs"], c.get("/v2/models/toy").json())
    (onnx_pred, onnx_v2, onnx_meta), (torch_pred, torch_v2, torch_meta) = answers.values()
    assert onnx_meta["platform"] == "polyfuse_onnxruntime" and torch_meta["platform"] == "polyfuse_pytorch"
    labels = reference.predict(records)["label"].tolist()
    proba = reference.predict_proba(records)
    for i in range(4):
        check_prediction(torch_pred[i], labels[i], proba.iloc[i])
        check_prediction(onnx_pred[i], labels[i], proba.iloc[i])
    assert onnx_v2[1]["data"] == torch_v2[1]["data"]
    assert np.abs(np.array(onnx_v2[0]["data"]) - np.array(torch_v2[0]["data"])).max() <= 1e-4
    metrics = httpx.get(torch_server.url + "/metrics", timeout=10).text
    digest = hashlib.sha256((toy_dir / "weights.safetensors").read_bytes()).hexdigest()
    assert f'sha256="{digest}"' in metrics


def test_gated_weights_and_abstaining_over_http(toy_csv, tmp_path):
    """/predict and V2 carry gated fusion's per-input weights and abstained (null) labels."""
    import polyfuse
    from polyfuse.deploy.exporter import export

    spec = toy_spec(toy_csv, epochs=2)
    spec["fusion"] = {"method": "gated", "dim": 32}
    spec["outputs"]["label"]["abstain_below"] = 0.999
    out = tmp_path / "gated"
    polyfuse.train(spec, out=out, show_progress=False)
    export(out, data=toy_csv)
    server = Server(out, ["--max-batch", "1"], tmp_path)
    try:
        records = toy_records(toy_csv, 6)
        records[0].pop("photo")
        records.append({"color": "red"})  # the colour says nothing about the label: low confidence
        with server.client() as c:
            r = c.post("/predict", json={"records": [as_json(r) for r in records]})
            assert r.status_code == 200, r.text
            preds = r.json()["predictions"]
            assert preds[0]["modality_weights"]["photo"] == 0.0
            assert all(sum(p["modality_weights"].values()) == pytest.approx(1.0, abs=1e-4) for p in preds)
            unsure = [p for p in preds if p["label"] is None]
            assert unsure and all(p["reason"] == "low confidence" and p["label_probability"] < 0.999 for p in unsure)
            body = {"inputs": [{"name": "note", "shape": [1], "datatype": "BYTES", "data": ["a dogish thing"]}]}
            r = c.post("/v2/models/gated/infer", json=body)
            assert r.status_code == 200, r.text
            assert {o["name"] for o in r.json()["outputs"]} == {"label", "label_label"}
    finally:
        server.stop()

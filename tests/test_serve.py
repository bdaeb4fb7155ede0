"""`polyfuse serve` as deployed: a real server subprocess on 127.0.0.1, real HTTP, nothing mocked.

Parity with ``polyfuse.load(...).predict`` (JSON and multipart), a corpus of malformed requests
(exact status, the record and field named, the server still ready after each), the API key,
overload (503 + Retry-After), per-request timeouts (504), draining on SIGTERM, /metrics, no
server-side file reads, and the torch runtime answering like the ONNX one.
"""
from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path
from typing import Any, Callable

import httpx
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tests.conftest import toy_spec

START_TIMEOUT_S = 120.0  # a loaded 2-core machine can take long to import torch / ONNX Runtime
API_KEY_ENV = "POLYFUSE_TEST_SERVE_KEY"
API_KEY = "s3cret-test-key"


# ---------------------------------------------------------------------------- helpers (shared)
def trained_toy(toy_csv: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The 5-input toy model, trained and exported to ONNX once per test session (the protocol
    tests reuse the same folder). The model is named after its folder: ``toy``."""
    import polyfuse
    from polyfuse.deploy.exporter import export

    folder = tmp_path_factory.getbasetemp() / "serve-model" / "toy"
    if not (folder / "model.onnx").exists():
        polyfuse.train(toy_spec(toy_csv, epochs=2), out=folder, show_progress=False)
        export(folder, data=toy_csv)  # data=: the toy split's validation rows are too few
    return folder


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """One `polyfuse serve` subprocess; its output goes to a log file (a pipe could fill and block it)."""

    scheme: str = "http"
    verify: Any = True  # a TLS server's tests set https and an SSL context trusting its certificate

    def __init__(self, model_dir: Path, args: list[str], log_dir: Path, env: dict[str, str] | None = None,
                 cwd: Path | None = None):
        self.port = free_port()
        self.url = f"{self.scheme}://127.0.0.1:{self.port}"
        self.log_path = log_dir / f"serve-{self.port}.log"
        self._log = open(self.log_path, "wb")
        cmd = [sys.executable, "-m", "polyfuse.cli.main", "serve", str(model_dir), "--host", "127.0.0.1",
               "--port", str(self.port), *args]
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT,
                                     env={**os.environ, **(env or {})}, cwd=cwd)
        self.wait_ready()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited with {self.proc.returncode} while starting:\n{self.log()}")
            try:
                if httpx.get(self.url + "/v2/health/ready", timeout=2, verify=self.verify).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise AssertionError(f"server not ready within {START_TIMEOUT_S:g} s:\n{self.log()}")

    def client(self, **kw: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30, verify=self.verify, **kw)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._log.close()


def assert_ready(server: Server) -> None:
    r = httpx.get(server.url + "/v2/health/ready", timeout=10)
    assert r.status_code == 200 and r.json() == {"ready": True}, r.text


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def toy_records(toy_csv: Path, n: int = 4) -> list[dict[str, Any]]:
    """The first ``n`` toy rows as records with the image/audio files' bytes (as a client has them)."""
    frame = pd.read_csv(toy_csv).head(n)
    out = []
    for row in frame.to_dict("records"):
        out.append({"photo": (toy_csv.parent / row["photo"]).read_bytes(),
                    "sound": (toy_csv.parent / row["sound"]).read_bytes(),
                    "note": row["note"], "weight": float(row["weight"]), "color": row["color"]})
    return out


def as_json(record: dict[str, Any]) -> dict[str, Any]:
    return {k: b64(v) if isinstance(v, bytes) else v for k, v in record.items()}


def as_multipart(record: dict[str, Any]) -> tuple[dict, dict]:
    files = {k: (f"{k}.bin", v, "application/octet-stream") for k, v in record.items() if isinstance(v, bytes)}
    data = {k: str(v) for k, v in record.items() if not isinstance(v, bytes)}
    return files, data


def png_with_size(width: int, height: int) -> bytes:
    """A real 1x1 PNG whose IHDR is patched (CRC fixed) to declare ``width`` x ``height``: the header
    says huge, the data is tiny and cannot decode to that size, so only a header check gives 413."""
    buf = io.BytesIO()
    Image.new("L", (1, 1)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF)
    return bytes(data)


def check_prediction(got: dict[str, Any], label: str, proba: pd.Series) -> None:
    assert got["label"] == label
    dist = got["probabilities"]["label"]
    assert list(dist) == list(proba.index)
    assert np.abs(np.array([dist[c] for c in proba.index]) - proba.to_numpy()).max() <= 1e-4
    assert abs(got["label_probability"] - proba.max()) <= 1e-4


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


GOOD = {"note": "a catish", "weight": 0.5}

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


# ---------------------------------------------------------------------------- load, timeouts, draining
async def _fire(url: str, n: int, body: dict, timeout: float) -> list[tuple[int, dict, float]]:
    limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
    async with httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits) as c:
        async def one() -> tuple[int, dict, float]:
            t = time.perf_counter()
            r = await c.post("/predict", json=body)
            return r.status_code, dict(r.headers), time.perf_counter() - t

        return await asyncio.wait_for(asyncio.gather(*[one() for _ in range(n)]), timeout + 15)


def test_overload_answers_503_with_retry_after(toy_dir, logs, toy_csv):
    s = Server(toy_dir, ["--queue-size", "2", "--max-batch", "1", "--timeout", "60"], logs)
    try:
        body = {"records": [as_json(r) for r in toy_records(toy_csv, 8)]}
        results = asyncio.run(_fire(s.url, 60, body, timeout=30))
        statuses = [status for status, _, _ in results]
        assert set(statuses) <= {200, 503}, statuses
        assert statuses.count(503) > 0 and statuses.count(200) > 0, statuses
        for status, headers, took in results:
            assert took < 30
            if status == 503:
                assert headers["retry-after"] == "1"
        assert_ready(s)
        # a second burst is refused the same way: refusals must not have opened admission slots
        again = [status for status, _, _ in asyncio.run(_fire(s.url, 60, body, timeout=30))]
        assert again.count(503) > 0 and again.count(200) > 0, again
        with s.client() as c:  # and it still predicts
            assert c.post("/predict", json=body).status_code == 200
            # every admission was given back, and no refusal gave one back: the cap still holds
            assert _samples(c.get("/metrics").text, "polyfuse_admitted_requests") == {"polyfuse_admitted_requests": 0}
    finally:
        s.stop()


def test_access_log_has_a_line_per_request_written_out_by_shutdown(toy_dir, logs, toy_csv):
    """Lines are written by a background thread; each carries the request id, path and status, none the
    request's contents, and SIGTERM writes out every queued line before the process exits."""
    s = Server(toy_dir, [], logs)
    try:
        record = as_json(toy_records(toy_csv, 1)[0])
        with s.client() as c:
            ok = c.post("/predict", json=record, headers={"x-request-id": "log-me-1"})
            bad = c.post("/predict", json={"nope": 1}, headers={"x-request-id": "log-me-2"})
            burst = [c.post("/predict", json=record).headers["x-request-id"] for _ in range(30)]
        assert ok.status_code == 200 and bad.status_code == 400
        s.proc.send_signal(signal.SIGTERM)
        assert s.proc.wait(30) == 0
    finally:
        s.stop()
    text = s.log_path.read_text()
    lines = {e["request_id"]: e for e in (json.loads(x) for x in text.splitlines() if x.startswith("{"))}
    assert lines["log-me-1"]["status"] == 200 and lines["log-me-1"]["path"] == "/predict" and lines["log-me-1"]["ms"] > 0
    assert lines["log-me-2"]["status"] == 400
    assert set(burst) <= set(lines) and len(set(burst)) == 30  # server-made ids: unique, every one logged
    assert record["photo"][:40] not in text and record["sound"][:40] not in text


def test_request_timeout_answers_504(toy_dir, logs):
    s = Server(toy_dir, ["--timeout", "0.001", "--max-delay-ms", "50"], logs)
    try:
        with s.client() as c:
            # a 1 ms deadline: the body itself may miss it (408, read before admission) on a busy
            # machine; most requests get in and then run out of time in the queue (504)
            statuses = []
            for _ in range(10):
                r = c.post("/predict", json={"records": [GOOD]})
                statuses.append(r.status_code)
                want = {504: "no answer within", 408: "did not arrive within"}
                assert r.status_code in want and want[r.status_code] in r.json()["error"], r.text
            assert 504 in statuses, statuses  # the queue deadline answers too, not only the body read
            v2 = []
            for _ in range(10):  # V2 infer meets the same two deadlines
                r = c.post("/v2/models/toy/infer",
                           json={"inputs": [{"name": "weight", "shape": [1], "datatype": "FP32", "data": [1.0]}]})
                v2.append(r.status_code)
                assert r.status_code in (408, 504) and "error" in r.json(), r.text
            assert 504 in v2, v2
        assert_ready(s)
    finally:
        s.stop()


async def _inflight(c: httpx.AsyncClient) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    text = (await c.get("/metrics")).text
    for family in text_string_to_metric_families(text):
        if family.name == "polyfuse_inflight_requests":
            return family.samples[0].value
    raise AssertionError("no polyfuse_inflight_requests gauge")


def _samples(text: str, name: str) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    return {s.name: s.value for f in text_string_to_metric_families(text) if f.name == name for s in f.samples}


def test_sigterm_drains_in_flight_requests(toy_dir, logs):
    drain_s = 8.0
    s = Server(toy_dir, ["--max-delay-ms", "2500", "--max-batch", "64", "--drain", str(drain_s)], logs)
    try:
        async def scenario() -> tuple[list, list[int], float]:
            async with httpx.AsyncClient(base_url=s.url, timeout=30) as c:
                # first, while running: concurrent requests are merged into one model batch, and the
                # batch histogram counts that batch once (each request's wait goes to the queue one)
                merged = await asyncio.gather(*[c.post("/predict", json={"records": [GOOD] * 2}) for _ in range(4)])
                assert [r.status_code for r in merged] == [200] * 4
                text = (await c.get("/metrics")).text
                assert _samples(text, "polyfuse_batch_rows")["polyfuse_batch_rows_count"] == 1
                assert _samples(text, "polyfuse_batch_rows")["polyfuse_batch_rows_sum"] == 8
                assert _samples(text, "polyfuse_model_seconds")["polyfuse_model_seconds_count"] == 1
                assert _samples(text, "polyfuse_queue_seconds")["polyfuse_queue_seconds_count"] == 4

                tasks = [asyncio.create_task(c.post("/predict", json={"records": [GOOD]})) for _ in range(5)]
                deadline = time.monotonic() + 20
                while await _inflight(c) < 6 and time.monotonic() < deadline:  # 5 requests + this /metrics one
                    await asyncio.sleep(0.02)
                assert not any(t.done() for t in tasks), "the requests were answered before SIGTERM"
                s.proc.send_signal(signal.SIGTERM)
                sent = time.monotonic()
                ready_codes = []
                while time.monotonic() - sent < 5:
                    try:
                        code = (await c.get("/v2/health/ready")).status_code
                    except httpx.TransportError:
                        code = 0  # connection refused: the server has already exited
                    ready_codes.append(code)
                    if code != 200:
                        break
                    await asyncio.sleep(0.02)
                answers = await asyncio.gather(*tasks)
                return answers, ready_codes, sent

        answers, ready_codes, sent = asyncio.run(scenario())
        assert ready_codes[-1] in (503, 0), ready_codes
        assert [a.status_code for a in answers] == [200] * 5, [a.text for a in answers]
        rc = s.proc.wait(drain_s + 10)
        assert rc == 0, s.log()
        assert time.monotonic() - sent < drain_s + 3, "exit took longer than the drain bound"
        assert "draining" in s.log()
    finally:
        s.stop()


def test_sigterm_exit_is_bounded_when_requests_outlast_the_drain(toy_dir, logs):
    """A request that cannot finish within --drain does not keep the process alive: it exits (code 0)
    within the drain time plus uvicorn's graceful-shutdown second, and the request is answered 503 (retry
    elsewhere) rather than left hanging or dropped -- on /predict and on V2 /infer alike."""
    s = Server(toy_dir, ["--max-delay-ms", "60000", "--max-batch", "64", "--drain", "1"], logs)
    v2 = {"inputs": [{"name": "weight", "shape": [1], "datatype": "FP32", "data": [1.0]}]}
    try:
        async def scenario() -> tuple[list, float]:
            async with httpx.AsyncClient(base_url=s.url, timeout=30) as c:
                tasks = [asyncio.create_task(c.post("/predict", json={"records": [GOOD]})),
                         asyncio.create_task(c.post("/v2/models/toy/infer", json=v2))]
                deadline = time.monotonic() + 20
                while await _inflight(c) < 3 and time.monotonic() < deadline:
                    await asyncio.sleep(0.02)
                s.proc.send_signal(signal.SIGTERM)
                sent = time.monotonic()
                answers = await asyncio.gather(*tasks, return_exceptions=True)
                return answers, sent

        answers, sent = asyncio.run(scenario())
        assert s.proc.wait(20) == 0, s.log()
        assert time.monotonic() - sent < 1 + 2 + 3, "exit took longer than --drain + the graceful shutdown"
        for answer in answers:
            assert isinstance(answer, httpx.Response), answer
            assert answer.status_code == 503 and answer.headers["retry-after"] == "1", answer.text
            assert "shutting down" in answer.json()["error"]
        assert set(answers[1].json()) == {"error"}  # in V2's error format
    finally:
        s.stop()


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
    from tests.conftest import toy_spec

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

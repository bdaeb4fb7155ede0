"""The heavy lane's worker process (serve/heavy.py), over HTTP on a real server: a JSON body over 1 MB is
parsed and decoded there with the same preprocessing and the same answers as a small body, its errors
name the record and field as the thread lanes do, and a worker that dies fails one request, not the
server. A large stream message is parsed there too and predicts like small ones."""
from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.serving import Server, as_json, assert_ready, toy_records

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the worker in /proc")

PAD = b" " * (1 << 20)  # JSON allows whitespace anywhere between tokens: the same records, a body over 1 MB


@pytest.fixture(scope="module")
def server(toy_dir, tmp_path_factory):
    s = Server(toy_dir, [], tmp_path_factory.mktemp("heavy-logs"))
    yield s
    s.stop()


def _post(url: str, body: bytes) -> httpx.Response:
    return httpx.post(url + "/predict", content=body, headers={"content-type": "application/json"}, timeout=30)


def _padded(records: list[dict]) -> bytes:
    return b'{"records":' + PAD + json.dumps(records).encode() + b"}"


def _workers(pid: int) -> list[int]:
    """The server's children that run multiprocessing's spawned worker (not its resource tracker)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (stat.parent / "cmdline").read_bytes()
        except (OSError, ValueError, IndexError):
            continue
        if parent == pid and b"spawn_main" in cmdline:
            found.append(int(stat.parent.name))
    return found


def test_a_large_body_is_answered_like_a_small_one(server, toy_csv):
    records = [as_json(r) for r in toy_records(toy_csv, 8)]
    small = _post(server.url, json.dumps({"records": records}).encode())
    large = _post(server.url, _padded(records))
    assert small.status_code == 200 and large.status_code == 200, large.text
    assert len(large.json()["predictions"]) == 8
    for a, b in zip(small.json()["predictions"], large.json()["predictions"]):
        assert a["label"] == b["label"]
        np.testing.assert_allclose(a["label_probability"], b["label_probability"], atol=1e-6)
    assert _workers(server.proc.pid), "no worker process parsed the large body"


def test_a_bad_record_in_a_large_body_is_named(server, toy_csv):
    records = [as_json(r) for r in toy_records(toy_csv, 3)]
    records[2]["photo"] = "/etc/passwd"  # a path on the server: clients send files as base64
    r = _post(server.url, _padded(records))
    assert r.status_code == 400, r.text
    assert r.json()["record"] == 2 and r.json()["field"] == "photo", r.json()
    too_many = _post(server.url, _padded(records * 30))  # 90 records, over --max-records 64
    assert too_many.status_code == 413 and "split the request" in too_many.json()["error"]


def test_a_dead_worker_fails_one_request_and_is_replaced(server, toy_csv):
    records = [as_json(r) for r in toy_records(toy_csv, 2)]
    assert _post(server.url, _padded(records)).status_code == 200  # the worker is up
    for pid in _workers(server.proc.pid):
        os.kill(pid, signal.SIGKILL)  # as the kernel's OOM killer would
    time.sleep(0.5)
    first = _post(server.url, _padded(records))  # the pool knows its worker is gone: this one is refused
    assert first.status_code == 503 and "worker" in first.json()["error"], first.text
    assert _post(server.url, _padded(records)).status_code == 200
    assert _post(server.url, json.dumps({"records": records}).encode()).status_code == 200
    assert_ready(server)


def test_the_worker_ends_with_a_killed_server(toy_dir, tmp_path, toy_csv):
    s = Server(toy_dir, [], tmp_path)
    try:
        records = [as_json(r) for r in toy_records(toy_csv, 2)]
        assert _post(s.url, _padded(records)).status_code == 200
        workers = _workers(s.proc.pid)
        assert workers
    finally:
        s.stop()  # SIGKILL, no shutdown: what the OOM killer or a crash leaves
    deadline = time.monotonic() + 10
    while any(Path(f"/proc/{w}").exists() for w in workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(Path(f"/proc/{w}").exists() for w in workers), "the worker outlived its server"


def test_without_the_worker_a_large_body_is_answered_the_same(toy_dir, tmp_path, toy_csv):
    s = Server(toy_dir, ["--no-heavy-process"], tmp_path)
    try:
        records = [as_json(r) for r in toy_records(toy_csv, 4)]
        r = _post(s.url, _padded(records))
        assert r.status_code == 200 and len(r.json()["predictions"]) == 4
        assert not _workers(s.proc.pid)  # parsed on the server's heavy thread
    finally:
        s.stop()

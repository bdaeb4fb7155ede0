"""An audit trail that cannot lose or hide a line: `polyfuse serve --audit-log` on a disk that fills up
(a real server over 127.0.0.1 with its log on a 1 MB tmpfs; where mounting is not allowed, a
file-size limit on the server process stands in for the full disk), lines cut from the end or a
deleted current file caught by `polyfuse audit verify` (head file, --expect-head, the next start),
and client request ids kept capped beside the server's own.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import resource
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterator

import httpx
import numpy as np
import pytest

import tests.serving
from polyfuse.cli.main import main
from polyfuse.privacy.audit import AuditLog
from polyfuse.privacy.audit_chain import head_path, log_files, read_head
from polyfuse.privacy.audit_verify import verify
from tests.serving import Server, as_json, toy_records

FREE_BYTES = 24 << 10  # what is left on the disk once the test fills it: a few dozen lines


def _entries(path: Path) -> list[dict]:
    return [json.loads(x) for f in log_files(path) for x in f.read_bytes().splitlines() if x.strip()]


class Disk:
    """A tiny filesystem for the audit log: tmpfs when this process may mount, else RLIMIT_FSIZE on the
    server (writes past the limit fail with EFBIG; Python ignores SIGXFSZ) and "freeing space" is a
    restart without the limit."""

    def __init__(self, root: Path):
        self.dir, self.filler = root / "disk", root / "disk" / "filler"
        self.dir.mkdir()
        ok = os.environ.get("POLYFUSE_TEST_DISK") != "rlimit" and subprocess.run(  # the env: try the fallback
            ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(self.dir)], capture_output=True).returncode == 0
        self.method = "tmpfs" if ok else "RLIMIT_FSIZE"
        self.limit: int | None = None

    def fill(self, log: Path) -> None:
        """Leave FREE_BYTES for the log."""
        if self.method == "RLIMIT_FSIZE":
            self.limit = log.stat().st_size + FREE_BYTES
            return
        with open(self.filler, "wb", buffering=0) as f, contextlib.suppress(OSError):
            while True:  # until ENOSPC
                f.write(b"\0" * 4096)
        size = self.filler.stat().st_size
        with open(self.filler, "r+b") as f:
            f.truncate(max(0, size - FREE_BYTES))

    def free(self) -> None:
        self.filler.unlink(missing_ok=True)
        self.limit = None

    def server(self, model: Path, args: list[str], logs: Path) -> Server:
        if self.limit is None:
            return Server(model, args, logs)
        real, limit = subprocess.Popen, self.limit

        def limited(*a, **kw):  # the server process only: its log file is the one that grows past it
            return real(*a, preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit)), **kw)

        tests.serving.subprocess.Popen = limited  # type: ignore[assignment]
        try:
            return Server(model, args, logs)
        finally:
            tests.serving.subprocess.Popen = real  # type: ignore[assignment]

    def close(self) -> None:
        if self.method == "tmpfs":
            subprocess.run(["umount", "-l", str(self.dir)], capture_output=True)


@pytest.fixture(scope="module")
def disk() -> Iterator[Disk]:
    with tempfile.TemporaryDirectory(prefix="polyfuse-audit-disk-") as root:
        d = Disk(Path(root))
        try:
            yield d
        finally:
            d.close()


@pytest.fixture(scope="module")
def plain(toy_dir, tmp_path_factory) -> Iterator[Server]:
    """A server with its audit log on an ordinary disk, rate-limited to 10/s per client."""
    folder = tmp_path_factory.mktemp("audit-ids")
    s = Server(toy_dir, ["--audit-log", str(folder / "audit" / "p.log"), "--max-batch", "1", "--rate-limit", "10/s"],
               folder)
    s.audit = folder / "audit" / "p.log"
    yield s
    s.stop()


def _live_within(server: Server, seconds: float) -> None:
    t0 = time.monotonic()
    r = httpx.get(server.url + "/v2/health/live", timeout=seconds)
    assert r.status_code == 200 and time.monotonic() - t0 < seconds


def _until_refused(s: Server, c: httpx.Client, body: dict) -> list[str]:
    """Predictions until five are refused (the disk is full); the client ids of those answered 200."""
    answered, refused = [], 0
    for i in range(400):
        r = c.post("/predict", json=body, headers={"x-request-id": f"full-{i}"})
        assert r.status_code in (200, 503), r.text
        if r.status_code == 200:
            answered.append(f"full-{i}")
            continue
        assert "audit log" in r.json()["error"]
        _live_within(s, 0.5)  # refusing, not stuck: the probes answer meanwhile
        refused += 1
        if refused == 5:
            return answered
    raise AssertionError(f"{len(answered)} answered and never refused five times:\n{s.log()}")


def _whole_lines(log: Path) -> None:
    """No partial line after the failed writes (a retry may be mid-write as we look: look again)."""
    for _ in range(5):
        if log.read_bytes().endswith(b"\n"):
            return
        time.sleep(0.1)
    raise AssertionError(f"{log} ends in a partial line: {log.read_bytes()[-200:]!r}")


def test_full_disk_refuses_unrecorded_answers_and_recovers(disk, toy_dir, toy_csv, tmp_path):
    log = disk.dir / "audit" / "predictions.log"
    body = {"records": [as_json(r) for r in toy_records(toy_csv, 1)]}
    args = ["--audit-log", str(log), "--max-batch", "1"]
    s = disk.server(toy_dir, args, tmp_path)
    disk.fill(log)
    if disk.method == "RLIMIT_FSIZE":  # the limit takes effect on a server started with it
        s.stop()
        s = disk.server(toy_dir, args, tmp_path)
    try:
        with s.client() as c:
            answered = _until_refused(s, c, body)
            time.sleep(1.5)  # the writer retries every second, the server live meanwhile
            _live_within(s, 0.5)
            _whole_lines(log)
            assert answered and set(answered) <= {e.get("client_request_id") for e in _entries(log)}  # each 200's line
            assert verify(log).ok
            disk.free()
            if disk.method == "tmpfs":  # space again: the writer recovers on its own, no restart needed
                deadline = time.monotonic() + 10
                while c.post("/predict", json=body).status_code != 200 and time.monotonic() < deadline:
                    time.sleep(0.2)
                assert c.post("/predict", json=body, headers={"x-request-id": "after"}).status_code == 200
    finally:
        s.stop()
    v = verify(log)
    assert v.ok, v.problem
    if disk.method == "tmpfs":
        assert any("could not be written" in n for n in v.notes)  # the outage, recorded once it was over


def test_restart_quarantines_a_torn_tail(disk, toy_dir, toy_csv, tmp_path):
    """What an older writer (or a crash mid-write) leaves: a torn last line; the next start moves it aside."""
    log = disk.dir / "audit" / "predictions.log"  # the full disk's log, where the last test left it
    if not log.exists():
        _small_log(log, 3)
    torn = b'{"seq":999,"time":"2024-01-01T00:00:00.000Z","request_id":"tor'
    with open(log, "ab") as f:
        f.write(torn)
    s = Server(toy_dir, ["--audit-log", str(log), "--max-batch", "1"], tmp_path)
    try:
        with s.client() as c:
            body = {"records": [as_json(r) for r in toy_records(toy_csv, 1)]}
            assert c.post("/predict", json=body, headers={"x-request-id": "restarted"}).status_code == 200
    finally:
        s.stop()
    v = verify(log)
    assert v.ok, v.problem
    entries = _entries(log)
    quarantine = [e for e in entries if e.get("event") == "quarantine"]
    assert len(quarantine) == 1 and quarantine[0]["bytes"] == len(torn)
    assert quarantine[0]["sha256"] == hashlib.sha256(torn).hexdigest()
    assert log.with_name(quarantine[0]["moved_to"]).read_bytes() == torn
    assert any(quarantine[0]["moved_to"] in n for n in v.notes)
    assert "restarted" in {e.get("client_request_id") for e in entries}
    assert entries[-3]["event"] == "start" and entries[-2] is quarantine[0]  # the start first, then the move


def _small_log(path: Path, n: int, starts: int = 1) -> None:
    for _ in range(starts):
        log = AuditLog(path, "m" * 64, max_bytes=4096)
        for i in range(n):
            log.record(f"r{i}", "k", [{"x": i}], {"y": ["a"]}, {"y": np.array([[0.4, 0.6]])}, 0.001).result(10)
        log.close()


def test_cut_tail_and_deleted_current_file_are_detected(tmp_path, capsys):
    path = tmp_path / "log" / "a.log"
    _small_log(path, 30)
    good = verify(path)
    assert good.ok and good.files >= 3 and read_head(path)["head"] == good.head
    assert main(["audit", "verify", str(path), "--expect-head", good.head]) == 0

    def copy(name: str) -> Path:
        shutil.copytree(path.parent, tmp_path / name)
        return tmp_path / name / "a.log"

    cut = copy("cut")  # the last two lines cut off
    cut.write_bytes(b"".join(cut.read_bytes().splitlines(True)[:-2]))
    v = verify(cut)
    assert not v.ok and "a.log.head" in v.problem and "missing" in v.problem and "30" in v.problem
    assert verify(cut, head_file=False).ok  # the chain alone cannot tell ...
    capsys.readouterr()
    assert main(["audit", "verify", str(cut), "--no-head-file", "--expect-head", good.head]) == 2  # ... a kept head can
    assert good.head in capsys.readouterr().err

    gone = copy("gone")  # the current file deleted, the rotated ones left
    gone.unlink()
    v = verify(gone)
    assert not v.ok and f"file {read_head(gone)['file']}" in v.problem
    assert main(["audit", "verify", str(gone), "--no-head-file", "--expect-head", good.head]) == 2

    # a restart after the cut: the chain goes on, and its start entry keeps what went missing
    for broken in (cut, gone):
        _small_log(broken, 2)
        v = verify(broken)
        assert not v.ok and "at this restart the head file named entry 30" in v.problem, v.problem
        capsys.readouterr()
        assert main(["audit", "verify", str(broken)]) == 2


def test_each_start_records_the_previous_head(tmp_path):
    path = tmp_path / "a.log"
    _small_log(path, 3, starts=2)
    raw = path.read_bytes().splitlines()
    starts = [i for i, x in enumerate(raw) if json.loads(x).get("event") == "start"]
    assert len(starts) == 2 and json.loads(raw[starts[0]])["previous_head"] == "0" * 64
    first_head = hashlib.sha256(raw[starts[1] - 1]).hexdigest()  # the first run's last line
    assert json.loads(raw[starts[1]])["previous_head"] == first_head
    v = verify(path, expect_head=first_head)  # a head kept from the first run is still in the chain
    assert v.ok and "3 entries were written after the expected head" in v.notes
    v = verify(path, expect_head="f" * 64)
    assert not v.ok and "not in the chain" in v.problem
    head_path(path).write_text("")  # the head is not fsync'd: a crash may leave it empty; noted, not fatal
    _small_log(path, 1)
    v = verify(path)
    assert v.ok and any("head file could not be read" in n for n in v.notes)


def test_client_request_ids_are_capped_beside_the_servers_own(plain, toy_csv):
    body = {"records": [as_json(r) for r in toy_records(toy_csv, 1)]}
    huge = "x" * 60_000
    with plain.client() as c:
        answers = [c.post("/predict", json=body, headers={"x-request-id": rid})
                   for rid in (huge, "same-id", "same-id", b"bad\xe9id")]  # the last: a latin-1 byte
        burst = [c.post("/predict", content=b"{}", headers={"x-request-id": huge}).status_code for _ in range(30)]
    assert 429 in burst  # refused before the body is read: its id is logged capped all the same
    assert [r.status_code for r in answers] == [200] * 4
    assert answers[1].headers["x-request-id"] == "same-id" == answers[1].json()["request_id"]  # echoed as before
    lines = _entries(plain.audit)
    by_client = [e for e in lines if "request_id" in e]
    ids = [e["request_id"] for e in by_client]
    assert len(ids) == len(set(ids)) == 4  # the server's own, unique whatever the clients send
    clients = [e["client_request_id"] for e in by_client]
    assert clients[1:] == ["same-id", "same-id", "bad\\xe9id"]
    assert len(clients[0]) <= 128 and clients[0].startswith("xxxx") and "60000 chars" in clients[0]
    assert max(len(x) for x in plain.audit.read_bytes().splitlines()) < 4096
    time.sleep(0.5)  # the access log is written by a thread of its own
    access = plain.log_path.read_text()
    assert "x" * 200 not in access and access.count("60000 chars") >= len(burst)


def test_a_line_that_cannot_be_written_refuses_its_prediction(tmp_path):
    """The path /predict, V2 infer and every /v2/stream window share: the answer waits for its line, and a
    failed write becomes 503 (a stream sends it as {"error": ...} in place of the window's prediction)."""
    import asyncio
    import types

    from polyfuse.serve.requests import RequestError
    from polyfuse.serve.state import ServerState

    log = AuditLog(tmp_path / "a.log", "m" * 64)
    holder = types.SimpleNamespace(audit=log)
    who = {"request_id": "stream-1-16", "started": time.perf_counter()}
    asyncio.run(ServerState._audited(holder, who, [{"x": 1}], {"y": ["a"]}, {"y": np.array([[1.0]])}))
    assert _entries(tmp_path / "a.log")[-1]["request_id"] == "stream-1-16"  # on disk before the call returned
    os.close(log._fd)  # writes fail from here on, as on a vanished disk
    log._fd = os.open(tmp_path / "a.log", os.O_RDONLY)
    with pytest.raises(RequestError) as refused:
        asyncio.run(ServerState._audited(holder, who, [{"x": 1}], {"y": ["a"]}, {"y": np.array([[1.0]])}))
    assert refused.value.status == 503 and "audit log cannot be written" in refused.value.message
    log.close()

"""/v2/stream under attack, against a real `polyfuse serve` on 127.0.0.1: a stream is a request like
any other. Its context is cleaned like a /predict record (no server paths), its windows take the
key's --rate-limit tokens, its messages are cut into windows off the event loop at a bounded cost,
browsers' Origins are checked, the page's key never goes in a URL, and nesting or a vanished client
leave no traceback. Every attack also checks that liveness answers within 0.5 s while it runs and
that the server's memory stays bounded."""
from __future__ import annotations

import base64
import json
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.serving import GOOD, Server, b64, trained_toy
from tests.test_streams import recv

FAST, SLOW = "fast-key-0123456789", "slow-key-0123456789"  # SLOW has --rate-limit's 1/s, FAST its own
ALLOWED = "http://allowed.example:8080"
WINDOW = 4000  # the toy model's "sound": 0.5 s at 8 kHz, the stream's clock
LIVE_S = 0.5


@pytest.fixture(scope="module")
def server(toy_csv, tmp_path_factory):
    model = trained_toy(toy_csv, tmp_path_factory)
    logs = tmp_path_factory.mktemp("stream-attacks")
    keys = logs / "keys.json"
    keys.write_text(json.dumps([{"id": "fast", "key": FAST, "rate": 1000}, {"id": "slow", "key": SLOW}]))
    s = Server(model, ["--api-keys", str(keys), "--rate-limit", "1/s", "--allowed-origins", ALLOWED,
                       "--stream-max-pending", "2"], logs)
    s.photo = (toy_csv.parent / "img" / "0.png").read_bytes()
    yield s
    log = s.log()
    s.stop()
    assert "Traceback" not in log, log  # nothing a client sent reached the server's log as an error


def connect(server, key=FAST, **kw):
    from websockets.sync.client import connect as ws_connect

    headers = {"x-api-key": key} if key else None
    return ws_connect(f"ws://127.0.0.1:{server.port}/v2/stream", additional_headers=headers, open_timeout=10,
                      compression=None, max_size=None, **kw)


def rss_mb(server) -> float:
    status = Path(f"/proc/{server.proc.pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:"))) / 1024


class Liveness:
    """Polls /v2/health/live while an attack runs; ``worst`` is the slowest answer in seconds."""

    def __init__(self, server):
        self.url, self.worst, self.done = server.url + "/v2/health/live", 0.0, threading.Event()
        self.thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        with httpx.Client(timeout=10) as client:
            while not self.done.is_set():
                t0 = time.perf_counter()
                assert client.get(self.url).status_code == 200
                self.worst = max(self.worst, time.perf_counter() - t0)
                time.sleep(0.02)

    def __enter__(self) -> "Liveness":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.done.set()
        self.thread.join(15)
        assert self.worst < LIVE_S, f"liveness took {self.worst:.2f} s during the attack"


def test_context_is_cleaned_like_predict(server):
    """Before: {"photo": "/etc/passwd"} was read as a file on the server (and existence leaked)."""
    with Liveness(server), connect(server) as ws:
        errors = []
        for path in ("/etc/passwd", "/no/such/file.png", "../../etc/hosts", "img/0.png"):
            ws.send(json.dumps({"start": {"hop": WINDOW, "context": {"photo": path}}}))
            errors.append(recv(ws)["error"])
        # one answer whatever the file: no existence oracle, the field named, paths refused
        assert all("field 'photo'" in e and "never as a path on the server" in e for e in errors), errors
        assert len(set(errors)) == 1, errors
        ws.send(json.dumps({"start": {"hop": WINDOW, "context": {"sound": "/etc/passwd"}}}))
        assert "'sound' is a stream input" in recv(ws)["error"]
        ws.send(json.dumps({"start": {"hop": WINDOW, "context": {"weight": "nan"}}}))
        assert "field 'weight'" in recv(ws)["error"]
        # the stream went on: base64 bytes are the way to send a file, as for /predict
        ws.send(json.dumps({"start": {"hop": WINDOW, "context": {"photo": b64(server.photo), **GOOD}}}))
        ws.send(json.dumps({"samples": {"sound": [0.1] * WINDOW}}))
        got = recv(ws)
        assert got["window_end"] == WINDOW and got["prediction"]["label"] in ("cat", "dog", "owl"), got


def test_rate_limit_counts_each_window(server):
    """Before: a 1/s key got [200, 429 x 9] on /predict but 344 stream predictions in 3 s."""
    with server.client(headers={"x-api-key": SLOW}) as http:
        assert http.post("/predict", json=GOOD).status_code == 200  # the burst of one
        with Liveness(server), connect(server, SLOW) as ws:
            ws.send(json.dumps({"start": {"hop": 400}}))
            ws.send(json.dumps({"samples": {"sound": [0.2] * WINDOW}}))
            first = recv(ws)  # one bucket for both: /predict just took the only token
            assert first.get("rate_limited") == 1 and "retry after 1 s" in first["error"], first
            predictions, notices, t0 = 0, [], time.monotonic()
            while time.monotonic() - t0 < 3:
                ws.send(json.dumps({"samples": {"sound": [0.2] * 400}}))  # one window per message
                try:
                    while True:
                        msg = json.loads(ws.recv(timeout=0.05))
                        predictions += "prediction" in msg
                        notices += [msg] if "rate_limited" in msg else []
                except TimeoutError:
                    pass
            assert predictions <= 4, predictions  # ~1 token a second over 3 s
            assert notices and "rate limit" in notices[0]["error"] and notices[0]["retry_after"] >= 1, notices
            time.sleep(1.2)  # the stream stayed open and predicts again once a token is back
            ws.send(json.dumps({"samples": {"sound": [0.2] * 400}}))
            late = [recv(ws)]  # the notice of the last second's windows may come first
            if "rate_limited" in late[0]:
                late.append(recv(ws))
            assert "prediction" in late[-1], late


def test_hop_one_megabyte_messages(server):
    """Before: hop 1 and one 1 MB message (500k samples) blocked the event loop for 3.6 s."""
    samples = "[" + ",".join(["1", "0"] * 250_000) + "]"  # 500k samples of a square wave (not silence)
    flood = '{"samples": {"sound": ' + samples + "}}"
    assert len(flood) < 1 << 20
    before = rss_mb(server)
    with Liveness(server), connect(server) as ws:
        ws.send(json.dumps({"start": {"hop": 1}}))
        for _ in range(6):
            ws.send(flood)
            error = recv(ws)["error"]
            assert "windows due in one message, over the limit" in error and "'sound'" in error, error
        ws.send(json.dumps({"samples": {"sound": [0.1] * WINDOW}}))  # the stream goes on
        assert recv(ws)["window_end"] == WINDOW
    with Liveness(server), connect(server) as ws:  # a hop under the bound: 5000 windows due, 2 cut
        ws.send(json.dumps({"start": {"hop": 100}}))
        for _ in range(4):
            ws.send(flood)
        got = [recv(ws)]
        while got[-1].get("window_end") != 2_000_000:
            got.append(recv(ws))
        # each message cut only the last 2 of its 5000 windows (--stream-max-pending 2); the rest are counted
        assert all(m["window_end"] % 500_000 in (0, 499_900) for m in got) and len(got) <= 8, got
        due = (500_000 - WINDOW) // 100 + 1 + 3 * 5000  # the first message fills the window first
        assert max(m.get("dropped", 0) for m in got) == due - len(got), got
    assert rss_mb(server) - before < 150, (before, rss_mb(server))


def test_origin_allow_list(server):
    from websockets.exceptions import InvalidStatus

    with Liveness(server):
        for origin in ("http://evil.example", "null", "http://127.0.0.1:1", "https://allowed.example"):
            with pytest.raises(InvalidStatus) as refused:
                connect(server, origin=origin)
            assert refused.value.response.status_code == 403, origin
        for origin in (None, f"http://127.0.0.1:{server.port}", ALLOWED):  # not a browser; the page; listed
            with connect(server, origin=origin) as ws:
                ws.send(json.dumps({"start": {"hop": "x"}}))
                assert "hop" in recv(ws)["error"]


def test_key_as_subprotocol_not_url(server):
    from websockets.exceptions import InvalidStatus

    token = base64.urlsafe_b64encode(FAST.encode()).decode().rstrip("=")
    with connect(server, key=None, subprotocols=["polyfuse.v1", f"key.{token}"],
                 origin=f"http://127.0.0.1:{server.port}") as ws:
        assert ws.subprotocol == "polyfuse.v1"  # what the browser requires to keep the connection
        ws.send(json.dumps({"start": {"hop": "x"}}))
        assert "hop" in recv(ws)["error"]
    with pytest.raises(InvalidStatus) as refused:
        connect(server, key=None, subprotocols=["polyfuse.v1", "key.d3Jvbmcta2V5LXdyb25nLWtleQ"])
    assert refused.value.response.status_code == 403
    page = httpx.get(server.url + "/static/live.js", timeout=10).text
    assert "searchParams" not in page and "key." in page  # the page keeps the key out of the URL


def test_nesting_and_vanishing_clients(server):
    """Before: deep nesting (RecursionError) and a client gone mid-send dropped the stream with a
    traceback in the server log; the module's fixture asserts the log has none."""
    before = rss_mb(server)
    with Liveness(server), connect(server) as ws:
        ws.send(json.dumps({"start": {"hop": WINDOW}}))
        for deep in ("[" * 200_000 + "]" * 200_000, '{"samples": ' + '{"a": ' * 100_000 + "1" + "}" * 100_001):
            ws.send(deep)
            assert "nested too deeply" in recv(ws)["error"]
        ws.send(json.dumps({"samples": {"sound": [[[[1.0]]]] * 10}}))
        assert "'sound'" in recv(ws)["error"]
        ws.send(json.dumps({"samples": {"sound": [0.1] * WINDOW}}))
        assert recv(ws)["window_end"] == WINDOW  # still open, still predicting
    with Liveness(server):
        for _ in range(10):  # windows due, then the client vanishes without a close handshake
            with connect(server, close_timeout=0.1) as ws:
                ws.send(json.dumps({"start": {"hop": 100}}))
                ws.send(json.dumps({"samples": {"sound": [0.3] * (WINDOW + 400)}}))
                ws.socket.shutdown(socket.SHUT_RDWR)
        time.sleep(1.0)
    assert rss_mb(server) - before < 100
    metrics = httpx.get(server.url + "/metrics", headers={"x-api-key": FAST}, timeout=10).text
    assert "polyfuse_open_streams 0.0" in metrics


def test_allowed_origins_flag_is_checked(tmp_path, capsys):
    from polyfuse.cli.main import main
    from polyfuse.serve.stream_access import parse_origins

    assert parse_origins("https://App.example.com, http://x.example:8080/") == (
        "https://app.example.com:443", "http://x.example:8080")
    for bad in ("app.example.com", "ftp://x.example", "https://x.example/path"):  # refused before the model loads
        assert main(["serve", str(tmp_path / "no-model"), "--allowed-origins", bad]) == 2
        assert "--allowed-origins" in capsys.readouterr().err

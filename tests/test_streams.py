"""Real-time streams: StreamWindows (hop, window, bad samples), Runtime.stream on a tiny exported
timeseries model, and /v2/stream over a real WebSocket to a running `polyfuse serve`."""
from __future__ import annotations

import json
import time

import httpx
import numpy as np
import pytest

from polyfuse.errors import BadInputError
from polyfuse.preprocess.streams import StreamWindows
from polyfuse.spec.schema import load_spec
from tests.serving import Server
from tests.test_timeseries import make_table, wave
from tests.test_timeseries import spec as ts_spec

KEY = "stream-test-key-0123456789"
LENGTH, HOP = 16, 8


def small_spec():
    s, _ = load_spec({"inputs": {"imu": {"type": "timeseries", "channels": 2, "sample_rate": 50, "length": 6},
                                 "mic": {"type": "audio", "sample_rate": 100, "max_seconds": 0.1},
                                 "age": {"type": "number"}},
                      "outputs": {"y": {"type": "number"}}})
    return s


def test_windows_hop_and_ring():
    w = StreamWindows(small_spec(), hop=2, context={"age": 41})
    x = np.arange(40, dtype=np.float32).reshape(20, 2)
    w.push("mic", np.zeros(10))
    assert w.push("imu", x[:5]) == 0  # windows not full yet (6 steps)
    assert list(w.ready()) == []
    assert w.push("imu", x[5:11]) == 3  # full at 6; records at the hop boundaries 6, 8 and 10
    got = list(w.ready_with_ends())
    assert [e for e, _ in got] == [6, 8, 10]
    end, rec = got[-1]
    assert end == 10 and np.array_equal(rec["imu"], x[4:10]) and rec["age"] == 41 and rec["mic"].shape == (10,)
    w.push("imu", x[11:20])  # wraps the ring several times
    *_, (end, rec) = w.ready_with_ends()
    assert end == 20 and np.array_equal(rec["imu"], x[14:20])
    w.push("imu", [[np.nan, 1.0]])  # NaN is a gap, as in files
    assert w.samples == 21


def test_windows_every_hop_exactly():
    w = StreamWindows(small_spec(), hop=3)
    w.push("mic", np.ones(10))
    x = np.random.default_rng(0).standard_normal((30, 2)).astype(np.float32)
    ends = []
    for i in range(0, 30, 7):  # chunks that do not line up with the hop
        w.push("imu", x[i:i + 7])
        for end, rec in w.ready_with_ends():
            ends.append(end)
            assert np.array_equal(rec["imu"], x[end - 6:end])
    assert ends == [6, 9, 12, 15, 18, 21, 24, 27, 30]


def test_windows_bad_input_and_bounded_pending():
    w = StreamWindows(small_spec(), hop=1, max_pending=2)
    with pytest.raises(BadInputError, match="'imu'.*expected \\[steps, 2\\]"):
        w.push("imu", [[1.0, 2.0, 3.0]])
    with pytest.raises(BadInputError, match="unknown stream input 'gyro'"):
        w.push("gyro", [[1.0, 2.0]])
    with pytest.raises(BadInputError, match="'imu'.*not numeric"):
        w.push("imu", [["a", "b"]])
    with pytest.raises(BadInputError, match="hop"):
        StreamWindows(small_spec(), hop=0)
    with pytest.raises(BadInputError, match="unknown inputs"):
        StreamWindows(small_spec(), hop=1, context={"nope": 1})
    w.push("mic", np.zeros(10))
    w.push("imu", np.zeros((10, 2)))  # 5 records due, 2 kept: the latest
    assert w.dropped == 3 and [e for e, _ in w.ready_with_ends()] == [9, 10]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    import polyfuse
    from polyfuse.deploy.exporter import export

    folder = tmp_path_factory.mktemp("stream")
    table = make_table(folder, n=30)
    out = folder / "model"
    polyfuse.train(ts_spec(table, length=LENGTH, epochs=2), out=out, show_progress=False)
    export(out, data=table)
    return out


@pytest.fixture(scope="module")
def series():
    rng = np.random.default_rng(3)
    return np.concatenate([wave("slow", rng), wave("fast", rng)])  # 128 steps, 2 channels


def test_runtime_stream_equals_predict(exported, series):
    from polyfuse.runtime import Runtime

    rt = Runtime(exported)
    chunks = ({"motion": series[i:i + 5]} for i in range(0, len(series), 5))
    got = list(rt.stream(chunks, hop=HOP))
    assert [g["window_end"] for g in got] == list(range(LENGTH, len(series) + 1, HOP))
    want = rt.predict([{"motion": series[e - LENGTH:e]} for e in range(LENGTH, len(series) + 1, HOP)])
    for g, p in zip(got, want):
        assert g["label"] == p["label"] and abs(g["label_probability"] - p["label_probability"]) < 1e-6


@pytest.fixture(scope="module")
def server(exported, tmp_path_factory):
    logs = tmp_path_factory.mktemp("log")
    s = Server(exported, ["--api-key-env", "STREAM_KEY", "--stream-idle-timeout", "3", "--stream-max-pending", "1",
                          "--stream-max-open", "2",
                          "--stream-max-message-kb", "64", "--audit-log", str(logs / "audit.jsonl")], logs,
               env={"STREAM_KEY": KEY})
    s.audit = logs / "audit.jsonl"
    yield s
    s.stop()


def connect(server, key=KEY, path="/v2/stream"):
    from websockets.sync.client import connect as ws_connect

    url = f"ws://127.0.0.1:{server.port}{path}"
    return ws_connect(url, additional_headers={"x-api-key": key} if key else None, open_timeout=10)


def recv(ws):
    return json.loads(ws.recv(timeout=20))


def open_streams(server) -> float:
    text = httpx.get(server.url + "/metrics", headers={"x-api-key": KEY}, timeout=10).text
    return float(next(line.split()[1] for line in text.splitlines() if line.startswith("polyfuse_open_streams ")))


def test_ws_predictions_every_hop_and_errors(server, exported, series):
    from polyfuse.runtime import Runtime

    rt = Runtime(exported)
    with connect(server) as ws:
        ws.send(json.dumps({"samples": {"motion": series[:4].tolist()}}))
        assert "start" in recv(ws)["error"]  # before start: an error, the connection stays
        ws.send(json.dumps({"start": {"hop": HOP}}))
        ws.send(json.dumps({"samples": {"motion": series[:LENGTH].tolist()}}))
        first = recv(ws)
        assert first["window_end"] == LENGTH
        ends = [first]
        for i in range(LENGTH, 48, HOP):
            ws.send(json.dumps({"samples": {"motion": series[i:i + HOP].tolist()}}))
            if i == 24:  # bad messages get errors; the stream goes on
                ws.send("not json")
                ws.send(json.dumps({"samples": {"motion": [[1.0, 2.0, 3.0]]}}))
                ws.send(json.dumps({"samples": {"gyro": [[1.0, 2.0]]}}))
                # the window's prediction is computed beside them: it may come before, between or after the errors
                got = [recv(ws) for _ in range(4)]
                errors = [g["error"] for g in got if "error" in g]
                assert len(errors) == 3 and "JSON" in errors[0] and "'motion'" in errors[1] and "gyro" in errors[2]
                ends += [g for g in got if "error" not in g]
                continue
            ends.append(recv(ws))
        assert open_streams(server) == 1
    assert [e["window_end"] for e in ends] == [16, 24, 32, 40, 48]
    want = rt.predict([{"motion": series[e["window_end"] - LENGTH:e["window_end"]]} for e in ends])
    for got, p in zip(ends, want):
        assert got["prediction"]["label"] == p["label"]
        assert abs(got["prediction"]["label_probability"] - p["label_probability"]) < 1e-5
    for _ in range(50):  # state freed on disconnect
        if open_streams(server) == 0:
            break
        time.sleep(0.1)
    assert open_streams(server) == 0
    for _ in range(50):  # each stream prediction is in the audit log, with the key's id
        lines = server.audit.read_text().splitlines() if server.audit.exists() else []
        if len(lines) >= 5:
            break
        time.sleep(0.1)
    assert sum('"stream-' in line and '"default"' in line for line in lines) >= 5


def test_ws_backpressure_drops_to_latest_window(server, series):
    with connect(server, path="/stream") as ws:
        ws.send(json.dumps({"start": {"hop": HOP}}))
        ws.send(json.dumps({"samples": {"motion": series[:LENGTH + 4 * HOP].tolist()}}))  # 5 windows at once
        got = recv(ws)
        assert got["window_end"] == LENGTH + 4 * HOP and got["dropped"] == 4  # --stream-max-pending 1
        ws.send(json.dumps({"samples": {"motion": series[48:56].tolist()}}))
        got = recv(ws)
        assert got["window_end"] == 56 and "dropped" not in got


def test_ws_limits_and_keys(server):
    from websockets.exceptions import ConnectionClosed, InvalidStatus

    with connect(server) as ws:  # idle: closed with 1001 after --stream-idle-timeout
        ws.send(json.dumps({"start": {"hop": HOP}}))
        t0 = time.monotonic()
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=20)
        assert closed.value.rcvd.code == 1001 and 2 < time.monotonic() - t0 < 10
    with connect(server) as ws:  # a message over --stream-max-message-kb: 1009
        ws.send(json.dumps({"samples": {"motion": [[0.5, 0.5]] * 8000}}))
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=20)
        assert closed.value.rcvd.code == 1009
    with connect(server) as one, connect(server) as two:  # --stream-max-open 2: a third waits its turn
        with connect(server) as three:
            with pytest.raises(ConnectionClosed) as closed:
                three.recv(timeout=20)
            assert closed.value.rcvd.code == 1013 and "try again later" in closed.value.rcvd.reason
        for ws in (one, two):
            ws.send(json.dumps({"start": {"hop": "x"}}))
            assert "hop" in recv(ws)["error"]  # the two open ones are served
    with pytest.raises(InvalidStatus):
        connect(server, key=None)
    with pytest.raises(InvalidStatus):
        connect(server, key="wrong-key-wrong-key")
    from websockets.sync.client import connect as ws_connect

    with ws_connect(f"ws://127.0.0.1:{server.port}/v2/stream?key={KEY}", open_timeout=10) as ws:
        ws.send(json.dumps({"start": {"hop": "x"}}))
        assert "hop" in recv(ws)["error"]
    for _ in range(50):
        if open_streams(server) == 0:
            break
        time.sleep(0.1)
    assert open_streams(server) == 0


@pytest.mark.parametrize("field,flag", [("stream_max_open", "--stream-max-open"),
                                        ("stream_max_pending", "--stream-max-pending"),
                                        ("stream_idle_s", "--stream-idle-timeout")])
def test_stream_limits_must_be_positive(field, flag):
    from polyfuse.errors import PolyfuseError
    from polyfuse.serve.config import ServeConfig

    with pytest.raises(PolyfuseError, match=f"{flag} must be positive"):
        ServeConfig(**{field: 0})

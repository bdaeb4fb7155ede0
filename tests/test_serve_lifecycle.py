"""`polyfuse serve` under load and at the end of its life, as deployed (a real subprocess, real HTTP):
overload answered 503 with Retry-After, per-request timeouts (504), the access log flushed at
shutdown, and draining in-flight requests on SIGTERM within a bounded time.
"""

import asyncio
import json
import signal
import time
from pathlib import Path

import httpx
import pytest

from tests.serving import GOOD, Server, as_json, assert_ready, toy_records


@pytest.fixture(scope="module")
def logs(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("serve-logs")


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



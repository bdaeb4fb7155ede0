"""serve_load.py's load clients: closed loop, open loop on a fixed schedule and a mixed valid/malformed loop,
all over a minimal raw-socket HTTP/1.1 client, each bounded in requests and in time."""
from __future__ import annotations

import asyncio
import json
import random
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import HOST, percentile_ms  # noqa: E402
from serve_load_model import Payloads  # noqa: E402


@dataclass
class Result:
    latencies: list[float] = field(default_factory=list)  # seconds, 200s
    statuses: dict[str, int] = field(default_factory=dict)  # "200", "503", "timeout", "error:ConnectError"...
    by_status_lat: dict[str, list[float]] = field(default_factory=dict)
    wrong_label: int = 0
    checked: int = 0
    unexpected: list[str] = field(default_factory=list)
    elapsed: float = 0.0
    sent: int = 0

    def add(self, status: str, latency: float) -> None:
        self.statuses[status] = self.statuses.get(status, 0) + 1
        self.by_status_lat.setdefault(status, []).append(latency)
        if status == "200":
            self.latencies.append(latency)

    @property
    def ok(self) -> int:
        return self.statuses.get("200", 0)

    @property
    def rps(self) -> float:
        return self.ok / self.elapsed if self.elapsed else 0.0

    def pct(self, q: float, status: str = "200") -> float:
        return percentile_ms(self.by_status_lat.get(status) or [], q)

    def max_ms(self, status: str) -> float:
        lat = self.by_status_lat.get(status) or []
        return max(lat) * 1e3 if lat else float("nan")


async def closed_loop(url: str, p: Payloads, clients: int, duration: float, max_requests: int,
                      timeout: float = 10.0, check_labels: bool = True) -> Result:
    """``clients`` workers, each sending its next request when the last is answered, until ``duration`` s or
    ``max_requests`` requests; 200s are checked against the label of the record sent. Over RawHTTP: with
    httpx, the client's own CPU (about 1 ms a request, on the same cores) capped what was measured."""
    res = Result()
    counter = iter(range(max_requests))
    raw = RawHTTP(int(url.rsplit(":", 1)[1]))
    requests = [raw.request(b) for b in p.single]
    t0 = time.perf_counter()
    end = t0 + duration

    async def worker() -> None:
        for i in counter:
            if time.perf_counter() >= end:
                return
            k = i % len(requests)
            t = time.perf_counter()
            try:
                status, body = await asyncio.wait_for(raw.send(requests[k]), timeout)
            except asyncio.TimeoutError:
                res.add("timeout", time.perf_counter() - t)
                continue
            except (OSError, asyncio.IncompleteReadError) as e:
                res.add(f"error:{type(e).__name__}", time.perf_counter() - t)
                continue
            res.add(str(status), time.perf_counter() - t)
            res.sent += 1
            if status == 200 and check_labels:
                res.checked += 1
                preds = json.loads(body)["predictions"]
                if len(preds) != 1 or str(preds[0].get(p.target)) != p.expected[k]:
                    res.wrong_label += 1

    try:
        await asyncio.gather(*(worker() for _ in range(clients)))
    finally:
        raw.close()
    res.elapsed = time.perf_counter() - t0
    return res


async def open_loop(url: str, p: Payloads, rate: float, duration: float, max_requests: int, connections: int,
                    timeout: float) -> tuple[Result, Result, float]:
    """Requests on a fixed schedule (i / rate), whatever the answers, over at most ``connections`` connections
    (a semaphore here, so the HTTP client's pool never holds a queue). A request that finds no free connection
    within ``timeout`` of its scheduled time is "unsent"; one sent and not answered within ``timeout`` is a
    "timeout". Returns (latency from the scheduled time, latency from the send, the rate achieved)."""
    sched, sent = Result(), Result()
    lags: list[float] = []
    n = max(1, min(int(rate * duration), max_requests))
    free = asyncio.Semaphore(connections)
    raw = RawHTTP(int(url.rsplit(":", 1)[1]))
    requests = [raw.request(b) for b in p.single]
    try:

        async def one(i: int, scheduled: float) -> None:
            try:
                await asyncio.wait_for(free.acquire(), max(0.0, scheduled + timeout - time.perf_counter()))
            except asyncio.TimeoutError:
                sched.add("unsent", time.perf_counter() - scheduled)
                return
            t = time.perf_counter()
            try:
                status = str((await asyncio.wait_for(raw.send(requests[i % len(requests)]), timeout))[0])
            except asyncio.TimeoutError:
                status = "timeout"
            except (OSError, asyncio.IncompleteReadError) as e:
                status = f"error:{type(e).__name__}"
            finally:
                free.release()
            now = time.perf_counter()
            sched.add(status, now - scheduled)
            sent.add(status, now - t)

        stop = asyncio.Event()

        async def lag_monitor() -> None:  # how late this (client) event loop wakes up: its own saturation
            while not stop.is_set():
                t = time.perf_counter()
                await asyncio.sleep(0.01)
                lags.append(time.perf_counter() - t - 0.01)

        monitor = asyncio.create_task(lag_monitor())
        tasks = []
        t0 = time.perf_counter()
        for i in range(n):
            scheduled = t0 + i / rate
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(i, scheduled)))
        offered = n / max(time.perf_counter() - t0, 1e-9)
        await asyncio.gather(*tasks)
        sched.elapsed = sent.elapsed = time.perf_counter() - t0
        sched.sent, sent.sent = n, sum(sent.statuses.values())
        stop.set()
        await monitor
    finally:
        raw.close()
    sched.by_status_lat["client-loop-lag"] = lags
    return sched, sent, offered


class RawHTTP:
    """A minimal HTTP/1.1 keep-alive client over asyncio streams for the load steps: requests are pre-encoded
    bytes and only the status line and Content-Length are parsed. httpx spends about a millisecond of
    client CPU per request, on the cores the server needs: with it, the client was what saturated (it
    measured 77 req/s where this client measures over 800 from the same server)."""

    def __init__(self, port: int):
        self.port = port
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    def request(self, body: bytes, ctype: str = "application/json") -> bytes:
        return (f"POST /predict HTTP/1.1\r\nhost: {HOST}:{self.port}\r\ncontent-type: {ctype}\r\n"
                f"content-length: {len(body)}\r\n\r\n").encode() + body

    async def send(self, request: bytes) -> tuple[int, bytes]:
        """Send one pre-encoded request; (status, body). A connection that fails or is cancelled is closed."""
        reader, writer = self.idle.pop() if self.idle else await asyncio.open_connection(HOST, self.port)
        try:
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            m = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head)
            body = await reader.readexactly(int(m.group(1)) if m else 0)
        except BaseException:
            writer.close()
            raise
        if re.search(rb"(?i)\r\nconnection:\s*close", head):
            writer.close()
        else:
            self.idle.append((reader, writer))
        return int(head[9:12]), body

    def close(self) -> None:
        for _, writer in self.idle:
            writer.close()
        self.idle.clear()


MIX = (("json-single", 0.55), ("json-multi", 0.15), ("multipart", 0.10), ("malformed", 0.20))


async def mixed_loop(url: str, p: Payloads, clients: int, count: int, max_seconds: float, seed: int,
                     on_progress=None) -> Result:
    """``count`` mixed requests from ``clients`` closed-loop workers (bounded by ``max_seconds``);
    valid ones must get 200, malformed ones a 4xx (anything else is recorded as unexpected)."""
    rng = random.Random(seed)
    kinds, weights = zip(*MIX)
    plan = []
    for _ in range(count):
        kind = rng.choices(kinds, weights)[0]
        if kind == "json-single":
            plan.append((kind, p.single[rng.randrange(len(p.single))], "application/json", 200))
        elif kind == "json-multi":
            k = rng.randint(2, 8)
            start = rng.randrange(len(p.records) - k)
            plan.append((kind, json.dumps({"records": p.records[start:start + k]}).encode(), "application/json", 200))
        elif kind == "multipart":
            body, ctype = p.multipart[rng.randrange(len(p.multipart))]
            plan.append((kind, body, ctype, 200))
        else:
            name, body, ctype = p.malformed[rng.randrange(len(p.malformed))]
            plan.append((f"malformed:{name}", body, ctype, 400))
    res = Result()
    raw = RawHTTP(int(url.rsplit(":", 1)[1]))
    it = iter(enumerate(plan))
    try:
        t0 = time.perf_counter()
        end = t0 + max_seconds

        async def worker() -> None:
            for i, (kind, body, ctype, want) in it:
                if time.perf_counter() >= end:
                    return
                t = time.perf_counter()
                try:
                    status = str((await asyncio.wait_for(raw.send(raw.request(body, ctype)), 10.0))[0])
                except asyncio.TimeoutError:
                    status = "timeout"
                except (OSError, asyncio.IncompleteReadError) as e:
                    status = f"error:{type(e).__name__}"
                res.add(status, time.perf_counter() - t)
                res.sent += 1
                good = status == "200" if want == 200 else status.startswith("4")
                if not good and len(res.unexpected) < 50:
                    res.unexpected.append(f"{kind} -> {status}")
                if on_progress and res.sent % 100 == 0:
                    on_progress(res.sent)

        await asyncio.gather(*(worker() for _ in range(clients)))
        res.elapsed = time.perf_counter() - t0
    finally:
        raw.close()
    return res


def fmt_status(res: Result) -> str:
    total = sum(res.statuses.values()) or 1
    return ", ".join(f"{k}: {v} ({v / total:.1%})" for k, v in sorted(res.statuses.items()))

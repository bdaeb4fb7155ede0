"""Load test of `polyfuse serve`, measured in one run against baselines measured in the same run.

    .venv/bin/python benchmarks/serve_load.py [--quick] [--duration 8] [--clients 32] [--mem-requests 20000]

1. dynamic batching vs batching off (--max-batch 1): 32 closed-loop clients, interleaved rounds
   (batched, off, batched, off), medians: throughput ratio, p50/p99, and p99 against max-delay + 2x one
   batch's service time (the larger of /metrics' mean and a full batch timed in-process with the server's
   model threads), on two models:
   1a. the avdigits model, where preprocessing is most of a request and the model ~0.1 ms a record: the
       target is that batching never costs (>= 0.95x; the server runs singles where a batch does not pay);
       the p99 bound is shown, not judged (32 clients wait on preprocessing whatever the batch time);
   1b. a network-bound model (the demo spec with a 512-wide BiGRU over 128 transcript tokens, trained
       one epoch into runs/bench-serve-network): targets >= 1.5x and the p99 bound;
2. end to end from raw image+audio records at 8 clients: requests/s against Ludwig's 22 requests/s on
   this machine (target >= 4x); time from Popen to the first 200 (target <= 2 s);
3. overload: the server pinned to all cores but the last, this load client (a light raw-socket HTTP/1.1
   client) to the last; the pinned server's capacity is measured (as many closed-loop clients as its
   --queue-size admits), then 4x it is sent open loop on a fixed arrival schedule: share of 200 vs
   503/429, how quick the refusals are, requests that hang, goodput, RSS;
4. memory: --mem-requests mixed requests (valid JSON single/multi-record, multipart, malformed) after a
   warm-up; RSS growth after the warm-up (target <= 5 %).

--steps 13 runs some steps only; --serve-flags '--threads 1' adds flags to every server (a diagnosis aid).
Every server is a subprocess on a free port of 127.0.0.1 and is killed in `finally`; every request loop
is bounded in count and in time. The model: the avdigits spec trained into runs/bench-serve-av and
exported to ONNX (reused when present); without ../shared/data/avdigits, the demo data and DEMO_SPEC.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import copy
import csv
import json
import os
import random
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

AVDIGITS = REPO.parent / "shared" / "data" / "avdigits"
LUDWIG_RPS = 22.0  # Ludwig serve, same data, 8 clients, this machine (the issue's figure)
PNG = b"\x89PNG"
HOST = "127.0.0.1"  # all traffic stays on the loopback interface


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------- model + data
def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "polyfuse.cli.main", *args], cwd=REPO, capture_output=True, text=True)


def _loads(model_dir: Path) -> bool:
    """Whether the ONNX build there loads with the current code (a stale artifact is retrained)."""
    if not (model_dir / "model.onnx").exists():
        return False
    try:
        from polyfuse.runtime import Runtime

        Runtime(model_dir)
        return True
    except Exception as e:  # noqa: BLE001 - any failure means: rebuild it
        log(f"{model_dir}: does not load ({type(e).__name__}: {str(e)[:160]}); rebuilding it")
        return False


def prepare_model(args: argparse.Namespace) -> tuple[Path, Path, str]:
    """(model dir, test csv, data description): train + export unless a loadable build is there."""
    if args.model_dir:
        data = AVDIGITS / "test.csv" if (AVDIGITS / "test.csv").exists() else None
        if data is None:
            raise SystemExit("--model-dir needs ../shared/data/avdigits for its records")
        if not _loads(Path(args.model_dir)):
            raise SystemExit(f"--model-dir {args.model_dir}: not a loadable polyfuse model directory (train one with "
                             "`polyfuse train avdigits.yaml --out DIR`, then `polyfuse export DIR --to onnx`)")
        return Path(args.model_dir).resolve(), data, f"avdigits (../shared/data), model given by --model-dir"
    if (AVDIGITS / "test.csv").exists():
        out, test_csv, what = REPO / "runs" / "bench-serve-av", AVDIGITS / "test.csv", "avdigits (../shared/data)"
        if args.retrain or not _loads(out):
            log(f"{out}: training avdigits.yaml (about a minute) ...")
            r = _cli("train", "avdigits.yaml", "--out", str(out), "--quiet")
            if r.returncode:
                raise SystemExit(f"training failed:\n{r.stderr[-3000:]}")
    else:
        import polyfuse
        from polyfuse.cli.demo import default_root
        from polyfuse.data.demo import DEMO_SPEC, build_demo_dataset

        log(f"{AVDIGITS} is absent: falling back to the demo data and DEMO_SPEC")
        csv_path = build_demo_dataset(default_root())
        spec = copy.deepcopy(DEMO_SPEC)
        spec["data"].update(train=str(csv_path), test=str(csv_path.with_name("test.csv")))
        out, test_csv, what = REPO / "runs" / "bench-serve-demo", csv_path.with_name("test.csv"), "DEMO data (fallback)"
        if args.retrain or not _loads(out):
            polyfuse.train(spec, out=out, show_progress=False)
    if args.retrain or not (out / "model.onnx").exists() or not _loads(out):
        r = _cli("export", str(out), "--to", "onnx")
        if r.returncode:
            raise SystemExit(f"export failed:\n{r.stderr[-3000:]}")
    return out, test_csv, what


NETWORK_BOUND = {"encoder": "bigru", "dim": 512, "max_length": 128}  # the transcript input of the demo spec


def prepare_network_model(args: argparse.Namespace) -> tuple[Path, Path]:
    """A model whose network, not its preprocessing, dominates a request: the demo spec with its transcript
    read by a 512-wide BiGRU over 128 tokens (a few ms per record at batch 1 on one thread, against well
    under 1 ms of preprocessing). Trained for one epoch: step 1 measures throughput, not accuracy, and every
    answer is still checked against this process's prediction of the same record."""
    import polyfuse
    from polyfuse.cli.demo import default_root
    from polyfuse.data.demo import DEMO_SPEC, build_demo_dataset

    csv_path = build_demo_dataset(default_root())
    out = REPO / "runs" / "bench-serve-network"
    if args.retrain or not _loads(out) or not (out / "model.onnx").exists():
        log(f"{out}: training the network-bound model (one epoch, a minute or two) ...")
        spec = copy.deepcopy(DEMO_SPEC)
        spec["data"].update(train=str(csv_path), test=str(csv_path.with_name("test.csv")))
        spec["inputs"]["transcript"].update(NETWORK_BOUND)
        spec["train"]["epochs"] = 1
        polyfuse.train(spec, out=out, show_progress=False)
        r = _cli("export", str(out), "--to", "onnx")
        if r.returncode:
            raise SystemExit(f"export failed:\n{r.stderr[-3000:]}")
    return out, csv_path.with_name("test.csv")


@dataclass
class Payloads:
    records: list[dict[str, Any]]  # JSON-ready (base64 strings)
    raw_records: list[dict[str, Any]]  # bytes, for the in-process measurement
    labels: list[str]
    target: str = "label"
    expected: list[str] = field(default_factory=list)  # in-process ONNX predictions: what every answer must say
    single: list[bytes] = field(default_factory=list)  # {"records": [one]} bodies, pre-encoded
    multipart: list[tuple[bytes, str]] = field(default_factory=list)  # (body, content-type)
    malformed: list[tuple[str, bytes, str]] = field(default_factory=list)  # (kind, body, content-type)


def load_payloads(model_dir: Path, test_csv: Path, limit: int) -> Payloads:
    from polyfuse.spec.schema import load_spec

    spec, _ = load_spec(model_dir / "spec.yaml")
    inputs = [(spec.column(n), c.type) for n, c in spec.inputs.items()]
    target = next(iter(spec.outputs))
    folder = test_csv.parent
    records, raw_records, labels = [], [], []
    with open(test_csv, newline="") as f:
        for row in list(csv.DictReader(f))[:limit]:
            rec, raw = {}, {}
            for col, kind in inputs:
                value = row.get(col)
                if value in (None, ""):
                    continue
                if kind in ("image", "audio"):
                    data = (folder / value).read_bytes()
                    rec[col], raw[col] = base64.b64encode(data).decode("ascii"), data
                elif kind == "number":
                    rec[col] = raw[col] = float(value)
                else:
                    rec[col] = raw[col] = value
            records.append(rec)
            raw_records.append(raw)
            labels.append(str(row.get(spec.column(target), "")))
    p = Payloads(records, raw_records, labels, target)
    p.single = [json.dumps({"records": [r]}).encode() for r in records]
    for raw in raw_records[:50]:
        files = {k: (k + (".png" if v[:4] == PNG else ".wav"), v) for k, v in raw.items() if isinstance(v, bytes)}
        data = {k: str(v) for k, v in raw.items() if not isinstance(v, bytes)}
        req = httpx.Request("POST", f"http://{HOST}/predict", files=files, data=data or None)
        req.read()
        p.multipart.append((req.content, req.headers["content-type"]))
    media = next((c for c, k in inputs if k in ("image", "audio")), inputs[0][0])
    js = "application/json"
    p.malformed = [
        ("bad json", b'{"records": [', js),
        ("records not a list", b'{"records": "x"}', js),
        ("no records", b'{"records": []}', js),
        ("not an object", b"[1, 2, 3]", js),
        ("unknown field", json.dumps({"records": [{"no_such_input": 1}]}).encode(), js),
        ("bad base64", json.dumps({"records": [{media: "!!not base64!!"}]}).encode(), js),
        ("undecodable media", json.dumps({"records": [{media: base64.b64encode(b"garbage" * 20).decode()}]}).encode(), js),
        ("too many records", json.dumps({"records": [{}] * 65}).encode(), js),
        ("wrong content type", b"hello", "text/plain"),
        ("broken multipart", b"--xyz\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nunterminated",
         "multipart/form-data; boundary=xyz"),
    ]
    return p


# --------------------------------------------------------------------------------------------------- servers
def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def cpu_s(pid: int) -> float:
    """User + system CPU seconds the process has used (all its threads)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return float("nan")


class Server:
    """`polyfuse serve` in a subprocess on a free loopback port; stderr (start-up line, access log) to a file."""

    live: list["Server"] = []
    extra_flags: list[str] = []  # --serve-flags: appended to every server's command line

    def __init__(self, name: str, model_dir: Path, *flags: str, cpus: set[int] | None = None):
        self.name, self.model_dir, self.flags, self.cpus = name, model_dir, list(flags), cpus
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.log_file = tempfile.NamedTemporaryFile(prefix=f"serve-{name}-", suffix=".log", delete=False)
        self.first_200_s = float("nan")
        self.ready_line = ""

    async def start(self, probe: bytes, deadline_s: float = 90.0) -> "Server":
        cmd = [sys.executable, "-m", "polyfuse.cli.main", "serve", str(self.model_dir), "--host", HOST,
               "--port", str(self.port), "--drain", "2", *self.flags, *Server.extra_flags]
        t0 = time.perf_counter()
        pin = (lambda: os.sched_setaffinity(0, self.cpus)) if self.cpus else None
        self.proc = subprocess.Popen(cmd, cwd=REPO, stdout=self.log_file, stderr=subprocess.STDOUT, preexec_fn=pin)
        Server.live.append(self)
        async with httpx.AsyncClient(base_url=self.url, trust_env=False, timeout=10.0) as c:
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"server {self.name} exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
                if time.perf_counter() - t0 > deadline_s:
                    raise RuntimeError(f"server {self.name}: no 200 within {deadline_s} s:\n{self.log()[-3000:]}")
                try:
                    r = await c.post("/predict", content=probe, headers={"content-type": "application/json"})
                    if r.status_code == 200:
                        self.first_200_s = time.perf_counter() - t0
                        break
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.005)
        for _ in range(100):  # the line is printed before the socket serves; give the file a moment
            m = re.search(r"^polyfuse serve: .*ready in .*$", self.log(), re.M)
            if m:
                self.ready_line = m.group(0)
                break
            await asyncio.sleep(0.01)
        return self

    def log(self) -> str:
        try:
            return Path(self.log_file.name).read_text(errors="replace")
        except OSError:
            return ""

    def rss_mb(self) -> float:
        return rss_mb(self.proc.pid) if self.proc else float("nan")

    def cpu_s(self) -> float:
        return cpu_s(self.proc.pid) if self.proc else float("nan")

    def access(self, since: int = 0) -> dict[str, list[float]]:
        """Status -> the server's own times (ms, from the app's first sight of the request) of the /predict
        lines of its access log from character ``since`` on."""
        out: dict[str, list[float]] = {}
        for line in self.log()[since:].splitlines():
            if line.startswith("{") and '"/predict"' in line:
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue
                out.setdefault(str(entry.get("status")), []).append(float(entry.get("ms", "nan")))
        return out

    def problems(self) -> list[str]:
        """Tracebacks and 5xx lines of the access log (other than 503/504 shedding)."""
        text, out = self.log(), []
        if "Traceback" in text:
            out.append(f"{text.count('Traceback')} traceback(s) in the server log")
        fives = re.findall(r'"status": (5\d\d)', text)
        for code in sorted(set(fives)):
            if code not in ("503",):
                out.append(f"{fives.count(code)} x HTTP {code} in the access log")
        return out

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                log(f"server {self.name}: no exit 15 s after SIGTERM; killing it")
                self.proc.kill()
                self.proc.wait(timeout=10)
        if self in Server.live:
            Server.live.remove(self)
        self.log_file.close()
        if self.problems():
            log(f"server {self.name}: its log (with the problems above) is kept at {self.log_file.name}")
        else:
            Path(self.log_file.name).unlink(missing_ok=True)

    @classmethod
    def stop_all(cls) -> None:
        for s in list(cls.live):
            try:
                s.stop()
            except Exception as e:  # noqa: BLE001 - keep stopping the others
                log(f"stopping {s.name}: {e}")
                if s.proc:
                    s.proc.kill()


def metrics(url: str) -> dict[str, float]:
    """`name{labels}` -> value from the Prometheus text of /metrics."""
    r = httpx.get(url + "/metrics", timeout=10, trust_env=False)
    out = {}
    for line in r.text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            try:
                out[key] = float(value)
            except ValueError:
                pass
    return out


# ---------------------------------------------------------------------------------------------- load loops
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
        lat = self.by_status_lat.get(status) or []
        return float(np.percentile(lat, q)) * 1e3 if lat else float("nan")

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


# ------------------------------------------------------------------------------------------------- helpers
def loadavg() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


def med(xs: list[float]) -> float:
    xs = [x for x in xs if x == x]
    return statistics.median(xs) if xs else float("nan")


def reference_predictions(model_dir: Path, p: Payloads) -> float:
    """Fill ``p.expected`` with this process's ONNX predictions (one record at a time); returns their accuracy."""
    from polyfuse.runtime import Runtime

    rt = Runtime(model_dir)
    p.expected = [str(rt.predict([rec])[0][p.target]) for rec in p.raw_records]
    return sum(e == t for e, t in zip(p.expected, p.labels)) / max(1, len(p.labels))


def server_model_threads() -> int | None:
    """The model threads the benchmark's servers run with: ``--threads`` in --serve-flags, else serve's default."""
    from polyfuse.serve.config import ServeConfig

    flags = Server.extra_flags
    return int(flags[flags.index("--threads") + 1]) if "--threads" in flags else ServeConfig().threads


def in_process_batch_ms(model_dir: Path, p: Payloads, n: int, repeats: int) -> tuple[float, float]:
    """Median model time of one batch of ``n`` real records and of one record, in this process (ONNX), with
    the servers' model threads: Runtime's own default (every core) ran the network-bound model's batch of 32
    in 23 ms where the server's one thread takes 32, and so understated the p99 bound's service time."""
    from polyfuse.runtime import Runtime

    rt = Runtime(model_dir, threads=server_model_threads())
    recs = [p.raw_records[i % len(p.raw_records)] for i in range(n)]
    batch, _ = rt.preprocessor.transform(recs)
    single, _ = rt.preprocessor.transform(recs[:1])
    out = []
    for arrays in (batch, single):
        rt.run_arrays(arrays)
        ts = []
        for _ in range(repeats):
            t = time.perf_counter()
            rt.run_arrays(arrays)
            ts.append(time.perf_counter() - t)
        out.append(float(np.median(ts)) * 1e3)
    return out[0], out[1]


def in_process_preprocess_ms(model_dir: Path, p: Payloads, repeats: int) -> float:
    from polyfuse.runtime import Runtime

    rt = Runtime(model_dir)
    ts = []
    for i in range(repeats):
        t = time.perf_counter()
        rt.preprocessor.transform([p.raw_records[i % len(p.raw_records)]])
        ts.append(time.perf_counter() - t)
    return float(np.median(ts)) * 1e3


def fmt_status(res: Result) -> str:
    total = sum(res.statuses.values()) or 1
    return ", ".join(f"{k}: {v} ({v / total:.1%})" for k, v in sorted(res.statuses.items()))


class Table:
    def __init__(self) -> None:
        self.rows: list[tuple[str, str, str, str]] = []

    def add(self, what: str, target: str, measured: str, ok: bool | None) -> None:
        self.rows.append((what, target, measured, "n/a" if ok is None else ("PASS" if ok else "FAIL")))

    def render(self) -> str:
        heads = ("check", "target", "measured", "verdict")
        w = [max(len(r[i]) for r in self.rows + [heads]) for i in range(4)]
        line = lambda r: "  ".join(c.ljust(w[i]) for i, c in enumerate(r)).rstrip()  # noqa: E731
        return "\n".join([line(heads), "  ".join("-" * x for x in w)] + [line(r) for r in self.rows])


# --------------------------------------------------------------------------------------------------- steps
async def step_batching(args, model_dir: Path, p: Payloads, table: Table, starts: list[float], tag: str,
                        what: str, gain_target: bool) -> float:
    """Batched vs batching-off servers of one model. ``gain_target``: the >= 1.5x row applies (a model whose
    network dominates); otherwise only "never below 0.95x" does (batching cannot pay where preprocessing is
    the cost, and the server must notice and not make things worse)."""
    print(f"\n[load average {loadavg()}]")
    print(f"\n== {tag}. dynamic batching vs off, {what}: {args.clients} closed-loop clients, {args.duration:g} s "
          f"each, {args.rounds} interleaved round(s) ==")
    delay = args.max_delay_ms
    on = await Server("batched", model_dir, "--max-batch", str(args.max_batch), "--max-delay-ms", f"{delay:g}"
                      ).start(p.single[0])
    off = await Server("off", model_dir, "--max-batch", "1").start(p.single[0])
    starts += [on.first_200_s, off.first_200_s]
    print(f"server (batched) said: {on.ready_line}")
    m = re.search(r"max batch (\d+)", on.ready_line)
    decided = int(m.group(1)) if m else -1
    if decided == 1 and args.max_batch > 1:
        print(f"  NOTE: asked for --max-batch {args.max_batch}, the server measured that batching does not pay "
              "and runs singles: both servers are then the same")
    print(f"server (off)     said: {off.ready_line}")
    runs: dict[str, list[Result]] = {"batched": [], "off": []}
    cpu_ms: dict[str, list[float]] = {"batched": [], "off": []}  # server CPU per answered request
    try:
        for s in (on, off):  # warm-up, not measured
            await closed_loop(s.url, p, args.clients, args.warmup_s, 100_000, check_labels=False)
        m0 = metrics(on.url)
        max_n = int(args.duration * 5000)  # bound; far above what 2 cores answer
        for rnd in range(args.rounds):
            for name, s in (("batched", on), ("off", off)):
                c0 = s.cpu_s()
                r = await closed_loop(s.url, p, args.clients, args.duration, max_n)
                cpu_ms[name].append((s.cpu_s() - c0) / max(1, r.ok) * 1e3)
                runs[name].append(r)
                print(f"  round {rnd + 1} {name:7s}: {r.rps:7.1f} req/s  p50 {r.pct(50):7.1f} ms  "
                      f"p99 {r.pct(99):7.1f} ms  server CPU {cpu_ms[name][-1]:.2f} ms/request  "
                      f"[{fmt_status(r)}; differing {r.wrong_label}/{r.checked}]")
        m1 = metrics(on.url)
    finally:
        on_problems, off_problems = on.problems(), off.problems()
        on.stop()
        off.stop()
    rps = {k: med([r.rps for r in v]) for k, v in runs.items()}
    p50 = {k: med([r.pct(50) for r in v]) for k, v in runs.items()}
    p99 = {k: med([r.pct(99) for r in v]) for k, v in runs.items()}
    ratio = rps["batched"] / rps["off"] if rps["off"] else float("nan")
    d = lambda key: m1.get(key, 0.0) - m0.get(key, 0.0)  # noqa: E731
    n_obs = d("polyfuse_model_seconds_count")  # one observation per model batch
    batch_ms_metrics = d("polyfuse_model_seconds_sum") / n_obs * 1e3 if n_obs else float("nan")
    rows_per_batch = d("polyfuse_batch_rows_sum") / n_obs if n_obs else float("nan")
    b32_ms, b1_ms = in_process_batch_ms(model_dir, p, args.max_batch, 30 if not args.quick else 10)
    pre_ms = in_process_preprocess_ms(model_dir, p, 40 if not args.quick else 10)
    service_ms = max(batch_ms_metrics if batch_ms_metrics == batch_ms_metrics else 0.0, b32_ms)
    bound = delay + 2 * service_ms
    print(f"median: batched {rps['batched']:.1f} req/s vs off {rps['off']:.1f} req/s = {ratio:.2f}x; "
          f"p50 {p50['batched']:.1f} vs {p50['off']:.1f} ms; p99 {p99['batched']:.1f} vs {p99['off']:.1f} ms")
    print(f"server CPU per answered request (all threads, /proc/PID/stat): batched {med(cpu_ms['batched']):.2f} ms "
          f"vs off {med(cpu_ms['off']):.2f} ms")
    print(f"batch service time: /metrics polyfuse_model_seconds mean {batch_ms_metrics:.2f} ms over {n_obs:.0f} "
          f"batches of {rows_per_batch:.1f} rows on average; in-process ONNX ({server_model_threads()} thread(s), as "
          f"the server) batch of {args.max_batch} "
          f"{b32_ms:.2f} ms, batch of 1 {b1_ms:.3f} ms; preprocessing one raw record in-process {pre_ms:.2f} ms")
    print(f"p99 bound = max-delay {delay:g} ms + 2 x {service_ms:.2f} ms = {bound:.1f} ms; batched p99 "
          f"{p99['batched']:.1f} ms (closed loop: latency ~ clients / throughput = "
          f"{args.clients / rps['batched'] * 1e3 if rps['batched'] else float('nan'):.0f} ms by Little's law)")
    wrong = {k: sum(r.wrong_label for r in v) for k, v in runs.items()}
    checked = {k: sum(r.checked for r in v) for k, v in runs.items()}
    print(f"answers that differ from the in-process prediction of the same record: batched {wrong['batched']} of "
          f"{checked['batched']}, off {wrong['off']} of {checked['off']}")
    for prob in on_problems + off_problems:
        print(f"  SERVER PROBLEM: {prob}")
    if gain_target:
        table.add(f"{tag} batching throughput vs off", ">= 1.5x",
                  f"{ratio:.2f}x ({rps['batched']:.0f} vs {rps['off']:.0f} req/s)", ratio >= 1.5)
    table.add(f"{tag} batching never slower", ">= 0.95x", f"{ratio:.2f}x ({rps['batched']:.0f} vs {rps['off']:.0f} "
              "req/s)", ratio >= 0.95)
    # The issue ties the p99 bound to the 1.5x target ("throughput >= 1.5x ..., with p99 <= ..."): a model where
    # batching is meant to pay. Where preprocessing is the cost (1a), 32 closed-loop clients wait on
    # preprocessing (Little's law above) whatever the model's batch time, so that row is shown, not judged.
    table.add(f"{tag} batched p99 vs delay + 2x batch", f"<= {bound:.1f} ms" if gain_target else "informational",
              f"p99 {p99['batched']:.1f} ms (p50 {p50['batched']:.1f}; off p99 {p99['off']:.1f}; bound "
              f"{bound:.1f})", p99["batched"] <= bound if gain_target else None)
    table.add(f"{tag} server's own batching decision", f"max batch {args.max_batch}", f"max batch {decided}", None)
    table.add(f"{tag} answers = in-process prediction", "0 differ (batched and off)",
              f"{wrong['batched']} of {checked['batched']} / {wrong['off']} of {checked['off']}",
              wrong["batched"] == 0 and wrong["off"] == 0)
    return rps["batched"]


async def step_e2e(args, model_dir: Path, p: Payloads, table: Table, starts: list[float]) -> None:
    print(f"\n[load average {loadavg()}]")
    print(f"\n== 2. end to end from raw image+audio records, {args.e2e_clients} clients, {args.duration:g} s; "
          f"cold start x{args.cold_starts} ==")
    cold = []
    for i in range(args.cold_starts):
        s = await Server(f"cold{i}", model_dir).start(p.single[0])
        cold.append(s.first_200_s)
        if i < args.cold_starts - 1:
            s.stop()
    print(f"Popen -> first 200: {', '.join(f'{x:.2f}' for x in cold)} s; server said: {s.ready_line}")
    try:
        await closed_loop(s.url, p, args.e2e_clients, args.warmup_s, 100_000, check_labels=False)
        r = await closed_loop(s.url, p, args.e2e_clients, args.duration, int(args.duration * 5000))
    finally:
        problems = s.problems()
        s.stop()
    starts += cold
    ratio = r.rps / LUDWIG_RPS
    print(f"{r.rps:.1f} req/s = {ratio:.2f}x Ludwig's {LUDWIG_RPS:g} req/s; p50 {r.pct(50):.1f} ms p99 "
          f"{r.pct(99):.1f} ms [{fmt_status(r)}; answers differing from in-process {r.wrong_label}/{r.checked}]")
    for prob in problems:
        print(f"  SERVER PROBLEM: {prob}")
    table.add(f"2 e2e req/s at {args.e2e_clients} clients vs Ludwig", ">= 4x (88 req/s)",
              f"{ratio:.2f}x ({r.rps:.0f} req/s, p50 {r.pct(50):.0f} / p99 {r.pct(99):.0f} ms)", ratio >= 4)
    table.add("2 Popen -> first 200", "<= 2 s", f"median {med(cold):.2f} s (min {min(cold):.2f})", med(cold) <= 2)


def split_cores() -> tuple[set[int] | None, set[int] | None]:
    """(server CPUs, client CPUs) for step 3: the load client gets the last core to itself, so that sending 4x
    the server's capacity is not limited by the server taking the client's CPU (and the reverse)."""
    if not hasattr(os, "sched_getaffinity"):
        return None, None
    cpus = sorted(os.sched_getaffinity(0))
    return (set(cpus[:-1]), {cpus[-1]}) if len(cpus) >= 2 else (None, None)


async def step_overload(args, model_dir: Path, p: Payloads, table: Table, capacity: float) -> None:
    server_cpus, client_cpus = split_cores()
    print(f"\n[load average {loadavg()}]")
    mine = os.sched_getaffinity(0) if client_cpus else None
    s = await Server("overload", model_dir, "--queue-size", str(args.overload_queue), cpus=server_cpus
                     ).start(p.single[0])
    try:
        if client_cpus:
            os.sched_setaffinity(0, client_cpus)
            # the server has fewer cores here than in step 1: measure its capacity as pinned
            # as many clients as the server admits: more would be refused and retry at once, and a retry
            # storm measures how fast the server refuses, not how fast it answers
            clients = min(args.clients, args.overload_queue)
            await closed_loop(s.url, p, clients, args.warmup_s, 100_000, check_labels=False)
            capacity = (await closed_loop(s.url, p, clients, max(2.0, args.duration / 2), 100_000)).rps
            print(f"server pinned to CPU {sorted(server_cpus)}, this load client to CPU {sorted(client_cpus)}; "
                  f"the pinned server's capacity (closed loop, {clients} clients): {capacity:.0f} req/s")
        else:
            await closed_loop(s.url, p, 8, args.warmup_s, 100_000, check_labels=False)
        rate = args.overload_factor * capacity
        print(f"\n== 3. overload: {args.overload_factor:g}x capacity ({capacity:.0f} req/s) = {rate:.0f} req/s open "
              f"loop for {args.overload_s:g} s over at most {args.overload_conns} connections, --queue-size "
              f"{args.overload_queue}, client timeout {args.client_timeout:g} s ==")
        rss0 = s.rss_mb()
        mark = len(s.log())
        r, sent, offered = await open_loop(s.url, p, rate, args.overload_s, args.overload_max, args.overload_conns,
                                           args.client_timeout)
        await asyncio.sleep(1.0)
        rss1 = s.rss_mb()
        seen = s.access(mark)
        after = await closed_loop(s.url, p, 4, 1.0, 2000)  # does it still answer normally afterwards?
    finally:
        if mine:
            os.sched_setaffinity(0, mine)
        problems = s.problems()
        s.stop()
    total = sum(r.statuses.values()) or 1
    shed = r.statuses.get("503", 0) + r.statuses.get("429", 0)
    shed_lat = sum((sent.by_status_lat.get(k, []) for k in ("503", "429")), [])  # from the send: server time
    shed_p99 = float(np.percentile(shed_lat, 99)) * 1e3 if shed_lat else float("nan")
    shed_max = max(shed_lat) * 1e3 if shed_lat else float("nan")
    timeouts, unsent = r.statuses.get("timeout", 0), r.statuses.get("unsent", 0)
    goodput = r.ok / r.elapsed if r.elapsed else 0.0
    print(f"offered {offered:.0f} req/s ({r.sent} requests; target {rate:.0f}); {fmt_status(r)}")
    lag = r.by_status_lat.pop("client-loop-lag", [])
    lag_p99 = float(np.percentile(lag, 99)) * 1e3 if lag else float("nan")
    srv = lambda code, q: float(np.percentile(seen[code], q)) if seen.get(code) else float("nan")  # noqa: E731
    print(f"the server's access log has {sum(len(v) for v in seen.values())} of them: "
          + ", ".join(f"{k}: {len(v)} (server-side p50 {srv(k, 50):.0f} ms, p99 {srv(k, 99):.0f} ms, max "
                      f"{max(v):.0f} ms)" for k, v in sorted(seen.items())))
    print(f"this client's event loop woke late by p99 {lag_p99:.0f} ms, max {max(lag, default=0) * 1e3:.0f} ms "
          "(time the client itself adds to every figure below)")
    print(f"200: {r.ok / total:.1%}, from the send p50 {sent.pct(50):.0f} ms p99 {sent.pct(99):.0f} ms, from the "
          f"schedule p50 {r.pct(50):.0f} ms p99 {r.pct(99):.0f} ms; goodput {goodput:.0f} req/s "
          f"({goodput / capacity:.2f}x capacity)")
    print(f"503/429: {shed / total:.1%}, from the send p99 {shed_p99:.1f} ms max {shed_max:.1f} ms; 504: "
          f"{r.statuses.get('504', 0)}; sent and unanswered in {args.client_timeout:g} s: {timeouts}; never sent "
          f"(all {args.overload_conns} connections busy for {args.client_timeout:g} s): {unsent}")
    print(f"server RSS before {rss0:.1f} MB, after {rss1:.1f} MB ({(rss1 - rss0) / rss0:+.1%}); afterwards "
          f"{after.rps:.0f} req/s [{fmt_status(after)}]")
    for prob in problems:
        print(f"  SERVER PROBLEM: {prob}")
    excess = max(0.0, 1 - capacity / offered) if offered else 0.0  # the share a server at capacity must refuse
    table.add("3 overload: excess refused (503/429)", f">= {excess / 2:.0%} (half the excess), 0 x 504",
              f"{shed / total:.1%} refused, {r.ok / total:.1%} 200, {r.statuses.get('504', 0)} x 504",
              shed / total >= excess / 2 and not r.statuses.get("504"))
    table.add("3 overload: 503s are quick", "p99 <= 250 ms", f"p99 {shed_p99:.0f} ms, max {shed_max:.0f} ms "
              f"(server-side p99 {srv('503', 99):.0f} ms)", bool(shed_lat) and shed_p99 <= 250)
    table.add("3 overload: nothing hangs", f"0 unanswered, 0 unsent ({args.client_timeout:g} s)",
              f"{timeouts} unanswered, {unsent} unsent", timeouts == 0 and unsent == 0)
    table.add("3 overload: goodput (200s per second)", "informational", f"{goodput:.0f} req/s = "
              f"{goodput / capacity:.2f}x the pinned capacity", None)
    table.add("3 overload: RSS", "informational", f"{rss0:.0f} -> {rss1:.0f} MB", None)


async def step_memory(args, model_dir: Path, p: Payloads, table: Table) -> None:
    print(f"\n[load average {loadavg()}]")
    print(f"\n== 4. memory: {args.mem_warmup} warm-up + {args.mem_requests} mixed requests "
          f"({', '.join(f'{k} {w:.0%}' for k, w in MIX)}), {args.mem_clients} clients, "
          f"at most {args.mem_max_s:g} s ==")
    s = await Server("memory", model_dir).start(p.single[0])
    samples: list[tuple[int, float]] = []
    try:
        w = await mixed_loop(s.url, p, args.mem_clients, args.mem_warmup, args.mem_max_s, seed=1)
        await asyncio.sleep(1.0)
        rss0 = s.rss_mb()
        samples.append((0, rss0))
        step = max(100, args.mem_requests // 4000 * 100)  # ~40 samples

        def progress(n: int) -> None:
            if n % step == 0:
                samples.append((n, s.rss_mb()))
        r = await mixed_loop(s.url, p, args.mem_clients, args.mem_requests, args.mem_max_s, seed=2,
                             on_progress=progress)
        await asyncio.sleep(1.0)
        rss1 = s.rss_mb()
        samples.append((r.sent + 1, rss1))  # after the run, settled
    finally:
        problems = s.problems()
        s.stop()
    growth = (rss1 - rss0) / rss0
    done = r.sent
    print(f"warm-up: {w.sent} requests [{fmt_status(w)}]; RSS after warm-up {rss0:.1f} MB")
    print(f"{done} requests in {r.elapsed:.0f} s ({done / r.elapsed:.0f} req/s) [{fmt_status(r)}]")
    shown = samples[:: max(1, len(samples) // 10)]
    shown += [] if shown[-1] is samples[-1] else [samples[-1]]
    print("RSS (MB) by requests done: " + ", ".join(f"{n}: {v:.1f}" for n, v in shown))
    half = len(samples) // 2  # a leak shows as a trend across the run, not in one sample's noise
    first, second = med([v for _, v in samples[:half]]), med([v for _, v in samples[half:]])
    slope = float(np.polyfit([n for n, _ in samples], [v for _, v in samples], 1)[0]) * 10_000 if half else 0.0
    trend = (second - first) / first if half else float("nan")
    print(f"RSS trend: median of the second half {second:.1f} MB vs first half {first:.1f} MB ({trend:+.2%}); "
          f"linear fit {slope:+.2f} MB per 10,000 requests ({len(samples)} samples)")
    print(f"RSS after {done}: {rss1:.1f} MB = {growth:+.2%} after warm-up")
    if done / r.elapsed < 200:
        print(f"  NOTE: {done / r.elapsed:.0f} req/s is below the few hundred req/s this step was sized for, so it "
              f"took {r.elapsed:.0f} s; --mem-requests sets the count")
    if done < args.mem_requests:
        print(f"  NOTE: stopped at the {args.mem_max_s:g} s bound after {done} of {args.mem_requests} requests")
    if r.unexpected:
        print(f"  UNEXPECTED answers ({len(r.unexpected)} shown): {r.unexpected[:10]}")
    for prob in problems:
        print(f"  SERVER PROBLEM: {prob}")
    table.add(f"4 RSS growth after {done} mixed requests", "<= 5 %", f"{growth:+.2%} ({rss0:.0f} -> {rss1:.0f} MB)",
              growth <= 0.05 and done >= args.mem_requests)
    table.add("4 RSS trend over the run", "informational", f"{trend:+.2%} 2nd vs 1st half, {slope:+.2f} MB/10k req",
              None)
    table.add("4 every answer as expected", "200 valid / 4xx malformed", f"{len(r.unexpected)} unexpected",
              not r.unexpected)


async def run(args: argparse.Namespace) -> None:
    model_dir, test_csv, what = prepare_model(args)
    p = load_payloads(model_dir, test_csv, args.records)
    ref_acc = reference_predictions(model_dir, p)
    print(f"model {model_dir.relative_to(REPO)} (ONNX), data: {what}, {len(p.records)} records from "
          f"{test_csv} (in-process accuracy {ref_acc:.4f}); machine: {os.cpu_count()} CPUs; python {sys.version.split()[0]}, httpx {httpx.__version__}")
    load0 = loadavg()
    print(f"load average (1/5/15 min) at start: {load0} on {os.cpu_count()} CPUs: other work on the machine skews "
          "every figure below")
    table, starts = Table(), []
    capacity = float("nan")
    t0 = time.perf_counter()
    try:
        if "1" in args.steps:
            capacity = await step_batching(args, model_dir, p, table, starts, "1a",
                                           f"{model_dir.name} (preprocessing-bound)", gain_target=False)
            net_dir, net_csv = prepare_network_model(args)
            net_p = load_payloads(net_dir, net_csv, args.records)
            reference_predictions(net_dir, net_p)
            print(f"\nnetwork-bound model {net_dir.relative_to(REPO)}: the demo spec with transcript {NETWORK_BOUND}")
            await step_batching(args, net_dir, net_p, table, starts, "1b",
                                f"{net_dir.name} (network-bound: BiGRU over 128 tokens)", gain_target=True)
        if "2" in args.steps:
            await step_e2e(args, model_dir, p, table, starts)
        if "3" in args.steps:
            if capacity != capacity:
                capacity = args.capacity
            await step_overload(args, model_dir, p, table, capacity)
        if "4" in args.steps:
            await step_memory(args, model_dir, p, table)
    finally:
        Server.stop_all()
    print(f"\n== summary ({time.perf_counter() - t0:.0f} s; load average at start {load0}, at end {loadavg()}; all servers started: Popen -> first 200 "
          f"{', '.join(f'{x:.2f}' for x in starts)} s) ==")
    print(table.render())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small counts: a smoke run of a minute or two")
    ap.add_argument("--duration", type=float, default=8.0, help="seconds per closed-loop measurement")
    ap.add_argument("--clients", type=int, default=32, help="closed-loop clients in step 1")
    ap.add_argument("--e2e-clients", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=2, help="interleaved batched/off rounds in step 1")
    ap.add_argument("--max-batch", type=int, default=32)
    ap.add_argument("--max-delay-ms", type=float, default=5.0)
    ap.add_argument("--cold-starts", type=int, default=3)
    ap.add_argument("--overload-factor", type=float, default=4.0)
    ap.add_argument("--overload-s", type=float, default=5.0)
    ap.add_argument("--overload-max", type=int, default=6000, help="bound on overload requests")
    ap.add_argument("--overload-queue", type=int, default=8, help="--queue-size of the overload server")
    ap.add_argument("--overload-conns", type=int, default=256, help="client connection limit in step 3")
    ap.add_argument("--client-timeout", type=float, default=12.0, help="per request in step 3 (server's is 10 s)")
    ap.add_argument("--capacity", type=float, default=200.0, help="req/s for step 3 when step 1 is skipped")
    ap.add_argument("--mem-requests", type=int, default=20_000)
    ap.add_argument("--mem-warmup", type=int, default=1_000)
    ap.add_argument("--mem-clients", type=int, default=8)
    ap.add_argument("--mem-max-s", type=float, default=600.0, help="time bound of step 4")
    ap.add_argument("--records", type=int, default=200, help="test rows used as payloads")
    ap.add_argument("--steps", default="1234", help="which steps to run, e.g. 14")
    ap.add_argument("--retrain", action="store_true")
    ap.add_argument("--model-dir", default=None, help="an exported avdigits model to serve instead (no training)")
    ap.add_argument("--serve-flags", default="", help="extra flags for every server, e.g. '--runtime torch'")
    args = ap.parse_args()
    Server.extra_flags = args.serve_flags.split()
    args.warmup_s = 1.0
    if args.quick:
        args.duration, args.rounds, args.cold_starts, args.warmup_s = min(args.duration, 2.0), 1, 1, 0.5
        args.overload_s, args.mem_requests, args.mem_warmup = min(args.overload_s, 2.0), 600, 100
    try:
        asyncio.run(run(args))
    finally:
        Server.stop_all()


if __name__ == "__main__":
    main()

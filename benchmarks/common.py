"""What several benchmarks share: the repository's paths, the polyfuse CLI and training in a subprocess,
`polyfuse serve` on a free loopback port, load generated from a process of its own, process figures read
from /proc, interleaved timing, and the figures table that prints each figure as it is measured.

Importing it puts the repository first on sys.path, so that a script run as
``python benchmarks/x.py`` measures this checkout's polyfuse, not an installed one.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Iterator

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
AVDIGITS = DATA / "avdigits"
HOST = "127.0.0.1"  # all traffic stays on the loopback interface
POLYFUSE = [sys.executable, "-m", "polyfuse"]

sys.path.insert(0, str(REPO))


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------- CLI and training
def cli(*args: object, cwd: Path | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`polyfuse ARGS` in a subprocess, output captured; a failure ends the benchmark with its stderr."""
    done = subprocess.run([*POLYFUSE, *map(str, args)], capture_output=True, text=True, cwd=cwd, env=env)
    if done.returncode != 0:
        raise SystemExit(f"polyfuse {' '.join(map(str, args[:2]))} failed:\n{done.stderr[-3000:]}")
    return done


def train_spec(spec: dict, folder: Path, name: str, *extra: str,
               env: dict[str, str] | None = None) -> tuple[dict, float, float]:
    """`polyfuse train` of ``spec`` (written to folder/name.yaml) into folder/name, in a subprocess so that its
    peak RSS is its own; (metrics, peak RSS in GiB, wall seconds)."""
    import yaml

    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    log_path = folder / f"{name}.log"
    t = time.perf_counter()
    with open(log_path, "wb") as out:  # a file, not a pipe: os.wait4 below reaps the child and reads its rusage
        proc = subprocess.Popen([*POLYFUSE, "train", str(path), "--out", str(folder / name), "--quiet", *extra],
                                stdout=out, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"training {name} failed:\n{log_path.read_text()[-3000:]}")
    metrics = json.loads((folder / name / "metrics.json").read_text())
    return metrics, usage.ru_maxrss / 2**20, time.perf_counter() - t  # KiB -> GiB


# ------------------------------------------------------------------------------------------------- servers
def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def serve_command(model_dir: Path, port: int, *flags: str) -> list[str]:
    return [*POLYFUSE, "serve", str(model_dir), "--host", HOST, "--port", str(port), *flags]


def wait_ready(url: str, timeout_s: float, proc: subprocess.Popen | None = None) -> bool:
    """Poll /v2/health/ready until it answers 200 (True), ``proc`` exits or ``timeout_s`` pass (False)."""
    import httpx  # here: the scripts that only time things need none of the serving extras

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return False
        try:
            if httpx.get(url + "/v2/health/ready", timeout=2, trust_env=False).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    return False


def start_server(model_dir: Path, *flags: str, log_path: Path | None = None, cwd: Path | None = None,
                 env: dict[str, str] | None = None, timeout_s: float = 120.0) -> tuple[subprocess.Popen, str]:
    """`polyfuse serve` in a subprocess on a free loopback port, output to ``log_path`` (or nowhere), once it
    reports ready: (process, base URL). Raises RuntimeError, the server killed, if it exits or is not ready."""
    port = free_port()
    with (open(log_path, "wb") if log_path else contextlib.nullcontext(subprocess.DEVNULL)) as out:
        proc = subprocess.Popen(serve_command(model_dir, port, *flags), stdout=out, stderr=subprocess.STDOUT,
                                cwd=cwd, env=env)
    url = f"http://{HOST}:{port}"
    if wait_ready(url, timeout_s, proc):
        return proc, url
    exited = proc.poll()
    stop_server(proc)
    tail = log_path.read_text(errors="replace")[-3000:] if log_path else ""
    if exited is not None:
        raise RuntimeError(f"server exited with {exited}:\n{tail}")
    raise RuntimeError(f"server not ready in {timeout_s:g} s:\n{tail}")


def stop_server(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait(10)


@contextlib.contextmanager
def running_server(model_dir: Path, *flags: str, **options: Any) -> Iterator[tuple[subprocess.Popen, str]]:
    """``start_server`` for the length of a ``with``: the server is killed however the block ends."""
    proc, url = start_server(model_dir, *flags, **options)
    try:
        yield proc, url
    finally:
        stop_server(proc)


def _apart_main(fn: Callable, args: tuple, started: Any, stop: Any, results: Any) -> None:
    results.put(asyncio.run(fn(*args, started=started, stop=stop)))


@contextlib.contextmanager
def apart(fn: Callable, *args: Any, start_timeout_s: float = 60.0) -> Iterator[SimpleNamespace]:
    """Run the coroutine function ``fn(*args, started=, stop=)`` in a process of its own for a ``with``:
    the block begins once ``fn`` sets ``started``, ``stop`` is set when it ends, and ``fn``'s return value
    is then in the yielded namespace's ``value``. Attackers are other machines: sending 16 MB bodies from
    the measuring process held its GIL, so the normal clients' latencies measured the client too."""
    ctx = multiprocessing.get_context("spawn")
    started, stop, results = ctx.Event(), ctx.Event(), ctx.Queue()
    proc = ctx.Process(target=_apart_main, args=(fn, args, started, stop, results), daemon=True)
    proc.start()
    out = SimpleNamespace(value=None)
    try:
        if not started.wait(start_timeout_s):
            raise RuntimeError(f"{fn.__name__} did not start within {start_timeout_s:g} s")
        yield out
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            out.value = results.get(timeout=90)
        proc.join(10)
        if proc.is_alive():
            proc.kill()


async def wait_for(event: Any) -> None:
    """Await a multiprocessing Event without blocking the event loop."""
    await asyncio.get_running_loop().run_in_executor(None, event.wait)


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def cpu_s(pid: int, thread: str | None = None) -> float:
    """User + system CPU seconds of a process (its threads included), or of its threads named ``thread``
    (as the OS shows them), from /proc. Raises OSError where the process is gone."""
    stats = [Path(f"/proc/{pid}/stat")] if thread is None else [
        t / "stat" for t in Path(f"/proc/{pid}/task").iterdir() if (t / "comm").read_text().strip() == thread]
    total = 0
    for stat in stats:
        fields = stat.read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


# -------------------------------------------------------------------------------------------------- timing
def interleaved_ms(runs: dict[str, Callable[[Any], Any]], batches: list[Any], rounds: int = 3) -> dict[str, float]:
    """Median milliseconds per batch of each ``runs`` entry over ``rounds`` interleaved rounds of all ``batches``:
    the machines are shared, so each contender runs in turn, several rounds, and the median round counts."""
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            t = time.perf_counter()
            for b in batches:
                run(b)
            times[name].append((time.perf_counter() - t) / len(batches))
    return {k: statistics.median(v) * 1000 for k, v in times.items()}


def percentile_ms(seconds: list[float], q: float) -> float:
    """The ``q``th percentile of latencies in seconds, in milliseconds; NaN for none."""
    return float(np.percentile(seconds, q)) * 1e3 if seconds else float("nan")


# ------------------------------------------------------------------------------------------------- figures
class Figures:
    """One line per figure as soon as it is measured (a long run shows its progress), its target and verdict
    beside it; ``summary`` counts the targets met and missed."""

    def __init__(self, what_width: int, value_width: int, target_width: int):
        self.widths = (what_width, value_width, target_width)
        self.verdicts: list[bool | None] = []

    def header(self) -> None:
        w, v, t = self.widths
        print(f"{'figure':<{w}} {'value':>{v}}  {'target':<{t}}", flush=True)

    def record(self, what: str, value: str, target: str = "", ok: bool | None = None) -> None:
        self.verdicts.append(ok)
        w, v, t = self.widths
        mark = "" if ok is None else ("PASS" if ok else "FAIL")
        print(f"{what:<{w}} {value:>{v}}  {target:<{t}} {mark}", flush=True)

    def summary(self) -> None:
        met, missed = self.verdicts.count(True), self.verdicts.count(False)
        print(f"\n{met} targets met, {missed} missed")


class Liveness:
    """Polls /v2/health/live every ~50 ms from a thread for a ``with``; a poll that fails or times out (2 s)
    counts with the time it took, so a frozen server shows as seconds, not as a gap."""

    def __init__(self, url: str):
        self.url, self.latencies, self.failed = url + "/v2/health/live", [], 0
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        import httpx

        with httpx.Client(timeout=2, trust_env=False) as client:
            while not self.done.is_set():
                t0 = time.perf_counter()
                try:
                    ok = client.get(self.url).status_code == 200
                except httpx.HTTPError:
                    ok = False
                took = time.perf_counter() - t0
                self.latencies.append(took)
                self.failed += not ok
                self.done.wait(max(0.0, 0.05 - took))

    def __enter__(self) -> "Liveness":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.done.set()
        self.thread.join(5)

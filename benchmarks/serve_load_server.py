"""serve_load.py's servers: `polyfuse serve` subprocesses that it times from Popen to the first 200, reads
from /proc and its access log, and always stops; and the Prometheus figures of /metrics."""
from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import HOST, REPO, cpu_s, free_port, log, rss_mb, serve_command  # noqa: E402


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
        cmd = serve_command(self.model_dir, self.port, "--drain", "2", *self.flags, *Server.extra_flags)
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
        try:
            return cpu_s(self.proc.pid) if self.proc else float("nan")
        except (OSError, IndexError, ValueError):  # exited: a figure of NaN, not a lost step
            return float("nan")

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


def server_model_threads() -> int | None:
    """The model threads the benchmark's servers run with: ``--threads`` in --serve-flags, else serve's default."""
    from polyfuse.serve.config import ServeConfig

    flags = Server.extra_flags
    return int(flags[flags.index("--threads") + 1]) if "--threads" in flags else ServeConfig().threads

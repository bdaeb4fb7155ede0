"""Adversarial load on `polyfuse serve`, printed as ratios against baselines measured in the same run.

    .venv/bin/python benchmarks/attack.py [--duration 8] [--rounds 2] [--normal 4] [--attackers 4] [--old REV]

1. normal traffic alone: --normal closed-loop clients each sending one avdigits record at a time, on
   this code and on the code before the hardening (--old, exported with `git archive` into a temp dir,
   nothing in the repository touched), in interleaved rounds: req/s ratio new/old (target >= 0.95);
2. under attack: the same normal clients while --attackers clients send, back to back, the costliest
   requests the default limits allow -- 2 clips of 59 s at 2 ch x 192 kHz (the rate limit), 5 PNGs of
   4096 x 4096 (the pixel limit; 250 MB decoded, under --max-decode-mb), and a ~15 MB body of 64 records
   with 180 KB images (the body limit) -- in rounds interleaved with rounds without them: normal p99
   under attack / without (target <= 3) and the normal requests answered 5xx (target 0);
3. memory: RSS after start-up, then after 100 of those worst-case requests (4 at a time): ratio
   (target <= 1.5).

The model is serve_load.py's (avdigits trained into runs/bench-serve-av, or the demo data's); every
server is a subprocess on 127.0.0.1, killed in `finally`; every loop is bounded in time.
The costliest text (de-identification) and /v2/stream requests: benchmarks/attack_text_stream.py.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import io
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Iterator

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, percentile_ms, rss_mb, running_server  # noqa: E402
from serve_load_model import load_payloads, prepare_model  # noqa: E402

from tests.test_serve_attacks import flac  # noqa: E402  (the test corpus's generator: one definition)

OLD_DEFAULT = "7067f30"  # the last commit before the hardening (issue 11)


@contextlib.contextmanager
def warm_server(code: Path, model_dir: Path, p, args) -> Iterator[tuple[subprocess.Popen, str]]:
    """`polyfuse serve` from the code in ``code`` (a checkout) on a free loopback port, warmed up by 2 s of
    normal traffic (not measured), for a ``with``: (process, URL); its log is kept in a temp file."""
    with tempfile.NamedTemporaryFile(prefix="serve-attack-", suffix=".log", delete=False) as f:
        log_path = Path(f.name)
    with running_server(model_dir, log_path=log_path, cwd=code, env={**os.environ, "PYTHONPATH": str(code)}) as run:
        asyncio.run(normal_clients(run[1], p.single, args.normal, 2.0))
        yield run


def old_code(rev: str) -> Path:
    """The repository at ``rev``, exported into a temp dir (read-only use of git)."""
    out = Path(tempfile.mkdtemp(prefix="polyfuse-old-"))
    archive = subprocess.run(["git", "archive", rev], cwd=REPO, capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(out, filter="data")
    return out


# ------------------------------------------------------------------------------------------- worst-case bodies
def _png(img) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def worst_bodies(image_col: str, audio_col: str) -> dict[str, bytes]:
    """The costliest requests the default limits let through, by what they exhaust."""
    from PIL import Image

    b64 = lambda data: base64.b64encode(data).decode()  # noqa: E731
    clip = b64(flac(192000, 2, 59))
    big = b64(_png(Image.new("RGB", (4096, 4096), (90, 30, 200))))
    noise = np.random.default_rng(0).integers(0, 256, (245, 245, 3), dtype=np.uint8)
    mid = b64(_png(Image.fromarray(noise)))
    return {
        "audio at the rate limit": json.dumps({"records": [{audio_col: clip}] * 2}).encode(),
        "images at the pixel limit": json.dumps({"records": [{image_col: big}] * 5}).encode(),
        "body at the size limit": json.dumps({"records": [{image_col: mid}] * 64}).encode(),
    }


# ------------------------------------------------------------------------------------------- load loops
async def normal_clients(url: str, bodies: list[bytes], clients: int, duration: float) -> tuple[list[float], list[int]]:
    """Closed loop: (latencies of the 2xx answers, every status)."""
    latencies, statuses = [], []
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits, trust_env=False) as c:
        end = time.perf_counter() + duration

        async def one(k: int) -> None:
            i = k
            while time.perf_counter() < end:
                t = time.perf_counter()
                try:
                    r = await c.post("/predict", content=bodies[i % len(bodies)],
                                     headers={"content-type": "application/json"})
                    status = r.status_code
                except httpx.HTTPError:
                    status = 0
                statuses.append(status)
                if status == 200:
                    latencies.append(time.perf_counter() - t)
                i += clients

        await asyncio.gather(*[one(k) for k in range(clients)])
    return latencies, statuses


async def attackers(url: str, bodies: list[bytes], clients: int, stop: asyncio.Event | None = None,
                    count: int | None = None) -> list[int]:
    """Send the worst-case bodies back to back until ``stop`` is set or ``count`` have been sent."""
    statuses: list[int] = []
    sent = 0
    async with httpx.AsyncClient(base_url=url, timeout=60, trust_env=False) as c:
        async def one(k: int) -> None:
            nonlocal sent
            i = k
            while not (stop and stop.is_set()) and (count is None or sent < count):
                sent += 1
                try:
                    r = await c.post("/predict", content=bodies[i % len(bodies)],
                                     headers={"content-type": "application/json"})
                    statuses.append(r.status_code)
                except httpx.HTTPError:
                    statuses.append(0)
                i += 1

        await asyncio.gather(*[one(k) for k in range(clients)])
    return statuses


async def under_attack(url: str, normal: list[bytes], worst: list[bytes], args) -> tuple[list[float], list[int], list[int]]:
    stop = asyncio.Event()
    attack = asyncio.create_task(attackers(url, worst, args.attackers, stop))
    await asyncio.sleep(1.0)  # the attack is under way before normal traffic is measured
    latencies, statuses = await normal_clients(url, normal, args.normal, args.duration)
    stop.set()
    return latencies, statuses, await attack


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=8.0, help="seconds per measured round")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--normal", type=int, default=4, help="closed-loop normal clients")
    ap.add_argument("--attackers", type=int, default=4)
    ap.add_argument("--old", default=OLD_DEFAULT, help="git revision of the code before the hardening")
    ap.add_argument("--memory-requests", type=int, default=100)
    ap.add_argument("--steps", default="123", help="which steps to run, e.g. 3")
    args = ap.parse_args()
    args.model_dir, args.retrain = None, False

    model_dir, test_csv, what = prepare_model(args)
    p = load_payloads(model_dir, test_csv, 200)
    from polyfuse.spec.schema import load_spec

    spec, _ = load_spec(model_dir / "spec.yaml")
    cols = {c.type: spec.column(n) for n, c in spec.inputs.items()}
    worst = worst_bodies(cols["image"], cols["audio"])
    print(f"model: {what}; normal clients {args.normal}, attackers {args.attackers}, {args.duration:g} s rounds, "
          f"{args.rounds} rounds each; load {os.getloadavg()[0]:.2f}")
    print("worst-case bodies: " + ", ".join(f"{k} ({len(v) / 1e6:.1f} MB)" for k, v in worst.items()))

    if "1" in args.steps:
        step_normal(args, model_dir, p)
    if "2" in args.steps:
        step_attack(args, model_dir, p, worst)
    if "3" in args.steps:
        step_memory(args, model_dir, p, worst)


def step_normal(args, model_dir: Path, p) -> None:
    """1. normal traffic alone, this code against the code before the hardening"""
    old = old_code(args.old)
    rps: dict[str, list[float]] = {"new": [], "old": []}
    for _ in range(args.rounds):
        for tag, code in (("new", REPO), ("old", old)):
            with warm_server(code, model_dir, p, args) as (_, url):
                lat, _ = asyncio.run(normal_clients(url, p.single, args.normal, args.duration))
                rps[tag].append(len(lat) / args.duration)
    new_rps, old_rps = statistics.median(rps["new"]), statistics.median(rps["old"])
    print(f"1. normal traffic, no attacker: {new_rps:.1f} req/s vs {old_rps:.1f} before the hardening ({args.old}): "
          f"ratio {new_rps / old_rps:.2f} (target >= 0.95); rounds new {[round(x, 1) for x in rps['new']]}, "
          f"old {[round(x, 1) for x in rps['old']]}")


def step_attack(args, model_dir: Path, p, worst: dict[str, bytes]) -> None:
    """2. normal traffic under attack and not, interleaved on one server"""
    with warm_server(REPO, model_dir, p, args) as (_, url):
        calm, hit, fives, attack_statuses = [], [], 0, []
        for _ in range(args.rounds):
            lat, _st = asyncio.run(normal_clients(url, p.single, args.normal, args.duration))
            calm.append(percentile_ms(lat, 99))
            lat, st, att = asyncio.run(under_attack(url, p.single, list(worst.values()), args))
            hit.append(percentile_ms(lat, 99))
            fives += sum(1 for x in st if x >= 500 or x == 0)
            attack_statuses += att
        calm_p99, hit_p99 = statistics.median(calm), statistics.median(hit)
        counts = {code: attack_statuses.count(code) for code in sorted(set(attack_statuses))}
        print(f"2. normal p99 under attack {hit_p99:.1f} ms vs {calm_p99:.1f} ms without: ratio "
              f"{hit_p99 / calm_p99:.2f} (target <= 3); normal requests answered 5xx or not at all: {fives} (target 0); "
              f"attackers' statuses {counts}")


def step_memory(args, model_dir: Path, p, worst: dict[str, bytes]) -> None:
    """3. RSS after worst-case requests against RSS after start-up"""
    with warm_server(REPO, model_dir, p, args) as (proc, url):
        time.sleep(0.5)
        start = rss_mb(proc.pid)
        statuses = asyncio.run(attackers(url, list(worst.values()), 4, count=args.memory_requests))
        time.sleep(1.0)
        after = rss_mb(proc.pid)
        counts = {code: statuses.count(code) for code in sorted(set(statuses))}
        print(f"3. RSS after {len(statuses)} worst-case requests {after:.0f} MB vs {start:.0f} MB after start-up: ratio "
              f"{after / start:.2f} (target <= 1.5); their statuses {counts}")


if __name__ == "__main__":
    main()

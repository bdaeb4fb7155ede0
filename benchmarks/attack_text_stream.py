"""The costliest TEXT and STREAM requests against `polyfuse serve`, as ratios against baselines measured in the
same run (the security issue's targets; benchmarks/attack.py does the same for images, audio and bodies).

    .venv/bin/python benchmarks/attack_text_stream.py [--duration 8] [--rounds 3] [--normal 4] [--attackers 4]
                                                      [--old b530070] [--out DIR]

The model (trained once into runs/bench-attack-text-stream, reused after) has a text input with
`deidentify: true`, so every request's text goes through the de-identification rules, a `timeseries` input,
so /v2/stream serves it, and a number. Normal clients send one ordinary record per /predict.

1. normal traffic alone, this code against --old (exported with `git archive`, run from the temp dir):
   req/s ratio (target >= 0.95);
2. per round, one fresh server, three phases of --duration s: calm; `stream` (--attackers WebSockets sending
   1 MB sample messages, the --stream-max-message-kb default, back to back, half with hop 1, half with the
   smallest hop such a message may make due); `text+stream` (half the attackers POST 16 MB bodies of 64
   records whose texts are adversarial for the de-identification rules, half stream with such a text as the
   stream's context, de-identified with every window). /v2/health/live is polled every 50 ms in each phase.
   Targets: normal p99 under attack <= 3x calm, no normal request answered 5xx or not at all, liveness p99
   <= 100 ms, RSS after the round <= 1.5x after start-up, no traceback in the server log.

Attackers run from a process of their own (another machine, in effect). Every request has a timeout,
attackers stop with their phase, servers are subprocesses on 127.0.0.1 killed in `finally`.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import re
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Iterator

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from attack import attackers, normal_clients, old_code, warm_server  # noqa: E402
from common import REPO, Figures, Liveness, apart, log, percentile_ms, rss_mb, running_server, train_spec, wait_for  # noqa: E402

OLD_DEFAULT = "b530070"  # the last commit before /v2/stream was hardened (sec-streams)
CACHE = REPO / "runs" / "bench-attack-text-stream"
BODY_LIMIT = 16 << 20  # serve's --max-body-mb default: the largest /predict body it reads
MAX_RECORDS = 64  # --max-records default
MESSAGE_LIMIT = 1 << 20  # --stream-max-message-kb default: the largest stream message it reads
LENGTH = 16  # steps per window of the model's series
LIVE_MS = 100.0
PHASES = ("calm", "stream", "text+stream")

# texts that make rule-based de-identification backtrack or rescan, each as long as asked
ADVERSARIAL = {
    "address": lambda n: "Calle " + "della " * max(1, (n - 7) // 6) + "1",
    "dotted": lambda n: "a." * (n // 2),
    "phone": lambda n: ("+" + "1" * 30 + " ") * (n // 32),
    "digits": lambda n: "1" * n,
    "digit-spaces": lambda n: "1 " * (n // 2),
}


# ------------------------------------------------------------------------------------------------ the model
def make_table(folder: Path, n: int = 120) -> Path:
    """Rows of a short note (some with PII, so training de-identifies too), a 2-channel series whose frequency
    is the label, and a number."""
    import pandas as pd

    rng = np.random.default_rng(0)
    notes = {"slow": "steady walk, call +44 20 7946 0958", "fast": "running fast, mail jo@example.com",
             "mid": "cycling at a medium pace"}
    rows = []
    for i in range(n):
        label = list(notes)[i % 3]
        t = np.arange(64) / 64 * {"slow": 1, "mid": 2.5, "fast": 5}[label] * 2 * np.pi
        x = np.stack([np.sin(t), np.cos(t)], 1) + 0.1 * rng.standard_normal((64, 2))
        np.save(folder / f"s{i}.npy", x.astype(np.float32))
        rows.append({"note": notes[label], "motion": f"s{i}.npy", "age": float(rng.integers(20, 80)), "label": label})
    table = folder / "table.csv"
    pd.DataFrame(rows).to_csv(table, index=False)
    return table


def prepare_model() -> Path:
    """The cached model, trained (few epochs, small dims: its speed is not what is measured) when absent."""
    model = CACHE / "model"
    if (model / "manifest.json").exists():
        return model
    CACHE.mkdir(parents=True, exist_ok=True)
    log(f"training the benchmark model into {model}")
    table = make_table(CACHE)
    spec = {"data": {"train": str(table), "split": {"valid": 0.2, "test": 0.2, "seed": 0}},
            "inputs": {"note": {"type": "text", "deidentify": True, "encoder": "ngram", "dim": 16, "buckets": 4096,
                                "max_length": 32},
                       "motion": {"type": "timeseries", "channels": 2, "sample_rate": 64, "length": LENGTH,
                                  "encoder": "cnn1d", "dim": 16},
                       "age": {"type": "number"}},
            "outputs": {"label": {"type": "category"}},
            "train": {"epochs": 3, "batch_size": 16, "lr": 3e-3, "seed": 0, "threads": 1, "baseline": False,
                      "calibrate": False}}
    train_spec(spec, CACHE, "model")
    return model


# ------------------------------------------------------------------------------------------------ the bodies
def normal_bodies(n: int = 30) -> list[bytes]:
    rng = np.random.default_rng(1)
    out = []
    for i in range(n):
        series = np.round(rng.standard_normal((LENGTH, 2)), 3).tolist()
        record = {"note": f"short clean note number {i}", "motion": series, "age": float(30 + i)}
        out.append(json.dumps({"records": [record]}).encode())
    return out


def text_bodies() -> list[bytes]:
    """One body per adversarial kind, each led by a different kind (records are decoded in order): 64 records,
    each text as long as the body limit allows."""
    kinds = list(ADVERSARIAL)
    per = (BODY_LIMIT - 4096) // MAX_RECORDS - len('{"note": ""}, ')
    texts = {k: ADVERSARIAL[k](per)[:per] for k in kinds}
    bodies = []
    for lead in range(len(kinds)):
        records = [{"note": texts[kinds[(lead + i) % len(kinds)]]} for i in range(MAX_RECORDS)]
        body = json.dumps({"records": records}).encode()
        assert len(body) <= BODY_LIMIT, len(body)
        bodies.append(body)
    return bodies


def stream_messages(hostile: bool) -> dict[str, str]:
    """The start messages (hop 1; the smallest hop a full message may use without being refused) and one
    sample message just under the message limit: a square wave, so the windows are not all alike."""
    from polyfuse.serve.stream import MAX_DUE_PER_MESSAGE

    steps = (MESSAGE_LIMIT - 64) // len("[1,0],")
    samples = '{"samples": {"motion": [' + ",".join(["[1,0]", "[0,1]"] * (steps // 2)) + "]}}"
    assert len(samples) <= MESSAGE_LIMIT
    note = ADVERSARIAL["address"](MESSAGE_LIMIT - 256) if hostile else "a clean note"
    start = lambda hop: json.dumps({"start": {"hop": hop, "context": {"note": note, "age": 41.0}}})  # noqa: E731
    out = {"hop 1": start(1), f"hop {math.ceil(steps / MAX_DUE_PER_MESSAGE)}":
           start(math.ceil(steps / MAX_DUE_PER_MESSAGE)), "samples": samples}
    assert all(len(m) <= MESSAGE_LIMIT for m in out.values())
    return out


# ------------------------------------------------------------------------------------------------ clients
def gist(error: str) -> str:
    """An error message without its numbers, so that the same refusal is counted once."""
    return re.sub(r"\d+", "N", error)[:120]


async def stream_attacker(url: str, start: str, samples: str, tally: Counter, open_ws: set) -> None:
    """Open a stream, send ``start`` then ``samples`` back to back, reconnect when closed; until cancelled.
    Counts the server's answers, close codes and refused handshakes in ``tally``; the open connection is in
    ``open_ws`` so that the phase can abort it (cancelling alone can leave it waiting to drain a full socket)."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed, InvalidStatus

    async def read(ws) -> None:
        with contextlib.suppress(ConnectionClosed):
            async for msg in ws:
                body = json.loads(msg)
                tally["prediction" if "prediction" in body else "error: " + gist(str(body.get("error")))] += 1

    ws_url = url.replace("http://", "ws://") + "/v2/stream"
    while True:
        reader = ws = None
        try:
            async with connect(ws_url, open_timeout=5, close_timeout=1, max_size=None, compression=None) as ws:
                open_ws.add(ws)
                reader = asyncio.create_task(read(ws))
                await ws.send(start)
                while True:
                    await asyncio.wait_for(ws.send(samples), 10)  # backpressure: waits while the server is busy
                    tally["messages sent"] += 1
        except ConnectionClosed as e:
            tally[f"closed {e.rcvd.code if e.rcvd else 'without a close frame'}"] += 1
        except InvalidStatus as e:
            tally[f"handshake {e.response.status_code}"] += 1
        except (OSError, TimeoutError) as e:
            tally[f"client {type(e).__name__}"] += 1
            await asyncio.sleep(0.2)
        finally:
            open_ws.discard(ws)
            if reader is not None:
                reader.cancel()


async def stop_streams(tasks: list[asyncio.Task], open_ws: set) -> None:
    """Abort the attackers' connections (a TCP reset: nothing waits on the server), then their tasks."""
    for ws in list(open_ws):
        ws.transport.abort()
    for t in tasks:
        t.cancel()
    _, stuck = await asyncio.wait(tasks, timeout=5) if tasks else (None, ())
    if stuck:
        log(f"  {len(stuck)} stream attacker(s) did not stop within 5 s; left behind")


async def attack(url: str, kind: str, n_attackers: int, texts: list[bytes], streams: dict[str, dict[str, str]],
                 started: Any, stop: Any) -> Counter:
    """The ``kind`` attack until ``stop`` (in a process of its own, see common.apart); the attackers' tally."""
    n_text = 0 if kind != "text+stream" else n_attackers // 2
    msgs = streams["hostile" if kind == "text+stream" else "clean"]
    starts = [v for k, v in msgs.items() if k.startswith("hop")]
    tally: Counter = Counter()
    halt = asyncio.Event()
    text_task = asyncio.create_task(attackers(url, texts, n_text, halt)) if n_text else None
    open_ws: set = set()
    ws_tasks = [asyncio.create_task(stream_attacker(url, starts[k % 2], msgs["samples"], tally, open_ws))
                for k in range(n_attackers - n_text)]
    started.set()
    await wait_for(stop)
    halt.set()  # text attackers end after their request in flight (attack.py's 60 s timeout bounds it)
    await stop_streams(ws_tasks, open_ws)
    if text_task is not None:
        tally.update(f"predict HTTP {s}" if s else "predict no answer" for s in await text_task)
    return tally


async def phase(url: str, normal: list[bytes], kind: str, args, texts: list[bytes],
                streams: dict[str, dict[str, str]]) -> tuple[list[float], list[int], Counter]:
    """Normal clients for --duration s while the ``kind`` attack runs from another process (started 1 s
    before them)."""
    if kind == "calm":
        return *await normal_clients(url, normal, args.normal, args.duration), Counter()
    with apart(attack, url, kind, args.attackers, texts, streams) as result:
        await asyncio.sleep(1.0)  # the attack is under way before normal traffic is measured
        latencies, statuses = await normal_clients(url, normal, args.normal, args.duration)
    return latencies, statuses, result.value or Counter({"attack process returned nothing": 1})


# ------------------------------------------------------------------------------------------------ the steps
@contextlib.contextmanager
def logged_server(model_dir: Path, normal: list[bytes], args) -> Iterator[tuple[int, str, Path]]:
    """A warm server of this code whose log is kept (attack.py's warm_server hides it): (pid, URL, log)."""
    log_path = Path(tempfile.mkstemp(prefix="serve-attack-ts-", suffix=".log")[1])
    with running_server(model_dir, log_path=log_path) as (proc, url):
        asyncio.run(normal_clients(url, normal, args.normal, 2.0))
        yield proc.pid, url, log_path


def recovery_s(url: str, limit_s: float) -> float:
    """Seconds until liveness answers within LIVE_MS again; inf past ``limit_s``."""
    t0 = time.perf_counter()
    with httpx.Client(timeout=1, trust_env=False) as client:
        while time.perf_counter() - t0 < limit_s:
            t = time.perf_counter()
            with contextlib.suppress(httpx.HTTPError):
                if client.get(url + "/v2/health/live").status_code == 200 and time.perf_counter() - t < LIVE_MS / 1e3:
                    return time.perf_counter() - t0
            time.sleep(0.05)
    return math.inf


def attack_round(args, model_dir: Path, normal: list[bytes], texts: list[bytes], streams) -> dict:
    """One fresh server, the phases in order (the one that may wedge it last), its RSS and log checked."""
    out: dict = {}
    with logged_server(model_dir, normal, args) as (pid, url, log_path):
        time.sleep(0.5)
        out["rss"] = [rss_mb(pid)]
        for kind in PHASES:
            with Liveness(url) as live:
                lat, st, tally = asyncio.run(phase(url, normal, kind, args, texts, streams))
            # no answer at all is worse than any latency (a NaN would make the median meaningless)
            out[kind] = {"p99": percentile_ms(lat, 99) if lat else math.inf, "rps": len(lat) / args.duration,
                         "bad": sum(1 for s in st if s == 0 or s >= 500), "live": percentile_ms(live.latencies, 99),
                         "live_failed": live.failed, "tally": tally}
            log(f"  {kind}: p99 {out[kind]['p99']:.1f} ms, {out[kind]['rps']:.1f} req/s, liveness p99 "
                f"{out[kind]['live']:.0f} ms; attackers {dict(tally)}")
        time.sleep(1.0)
        out["rss"].append(rss_mb(pid))
        out["recovery"] = recovery_s(url, args.recover)
        text = log_path.read_text(errors="replace")
        out["tracebacks"] = text.count("Traceback")
    return out


def normal_rps(args, model_dir: Path, normal: list[bytes]) -> tuple[list[float], list[float], str]:
    """Normal req/s of this code and of --old, interleaved rounds of fresh servers; a note if --old fails."""
    old = old_code(args.old)
    p = SimpleNamespace(single=normal)  # what attack.py's warm_server warms up with
    rps: dict[str, list[float]] = {"new": [], "old": []}
    for _ in range(args.rounds):
        for tag, code in (("new", REPO), ("old", old)):
            try:
                with warm_server(code, model_dir, p, args) as (_, url):
                    lat, _ = asyncio.run(normal_clients(url, normal, args.normal, args.duration))
            except RuntimeError as e:  # start_server's: it exited or was never ready; its log tail says why
                return rps["new"], [], f"{args.old} cannot serve this model: {str(e).strip().splitlines()[-1]}"
            rps[tag].append(len(lat) / args.duration)
    return rps["new"], rps["old"], ""


# ------------------------------------------------------------------------------------------------ the table
def report(args, new: list[float], old: list[float], note: str, rounds: list[dict]) -> None:
    med = lambda key, phase_: statistics.median(r[phase_][key] for r in rounds)  # noqa: E731
    f = Figures(44, 14, 10)
    print()
    f.header()
    if old:
        ratio = statistics.median(new) / statistics.median(old)
        f.record(f"normal req/s new / old ({args.old})", f"{ratio:.2f}", ">= 0.95", ratio >= 0.95)
        f.record("  normal req/s new, old", f"{statistics.median(new):.1f}, {statistics.median(old):.1f}")
    else:
        f.record(f"normal req/s new / old ({args.old})", "n/a", ">= 0.95")
        print(f"  {note}")
    calm = med("p99", "calm")
    f.record("normal p99 calm (ms)", f"{calm:.1f}")
    f.record("liveness p99 calm (ms)", f"{med('live', 'calm'):.1f}", f"<= {LIVE_MS:g}", med("live", "calm") <= LIVE_MS)
    for kind in PHASES[1:]:
        hit = med("p99", kind)
        f.record(f"[{kind}] normal p99 under attack (ms)", f"{hit:.1f}")
        f.record(f"[{kind}] p99 ratio attack / calm", f"{hit / calm:.2f}", "<= 3", hit / calm <= 3)
        bad = sum(r[kind]["bad"] for r in rounds)
        f.record(f"[{kind}] normal 5xx or no answer", f"{bad}", "0", bad == 0)
        live = med("live", kind)
        f.record(f"[{kind}] liveness p99 (ms)", f"{live:.1f}", f"<= {LIVE_MS:g}", live <= LIVE_MS)
    rss = max(r["rss"][1] / r["rss"][0] for r in rounds)
    f.record("server RSS after / before (worst round)", f"{rss:.2f}", "<= 1.5", rss <= 1.5)
    f.record("  RSS MB before, after (round 1)", f"{rounds[0]['rss'][0]:.0f}, {rounds[0]['rss'][1]:.0f}")
    tracebacks = sum(r["tracebacks"] for r in rounds)
    f.record("tracebacks in the server logs", f"{tracebacks}", "0", tracebacks == 0)
    worst = max(r["recovery"] for r in rounds)
    f.record("liveness back under 100 ms after (s)", "never" if worst == math.inf else f"{worst:.1f}",
             f"<= {args.recover:g}")
    f.summary()
    for kind in PHASES[1:]:
        total = sum((r[kind]["tally"] for r in rounds), Counter())
        print(f"attackers [{kind}]: {dict(total.most_common())}")
    print("liveness polls failed or timed out (2 s): " + ", ".join(
        f"{k} {sum(r[k]['live_failed'] for r in rounds)}" for k in PHASES))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=8.0, help="seconds per measured phase")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--normal", type=int, default=4, help="closed-loop normal clients")
    ap.add_argument("--attackers", type=int, default=4)
    ap.add_argument("--old", default=OLD_DEFAULT, help="git revision of the code before the security change")
    ap.add_argument("--recover", type=float, default=10.0, help="seconds a server gets to answer liveness again")
    ap.add_argument("--out", type=Path, default=None, help="also write the measured figures here (figures.json)")
    args = ap.parse_args()

    model_dir = prepare_model()
    normal, texts = normal_bodies(), text_bodies()
    streams = {"clean": stream_messages(False), "hostile": stream_messages(True)}
    print(f"model {model_dir.relative_to(REPO)}; normal clients {args.normal}, attackers {args.attackers}, "
          f"{args.duration:g} s phases, {args.rounds} rounds; load {os.getloadavg()[0]:.2f}")
    print(f"text bodies: {len(texts)} x {len(texts[0]) / 1e6:.1f} MB ({MAX_RECORDS} records, kinds "
          f"{', '.join(ADVERSARIAL)}); stream messages: {len(streams['clean']['samples']) / 1e6:.2f} MB, starts "
          f"{', '.join(k for k in streams['clean'] if k.startswith('hop'))}")
    log("1. normal req/s, this code against the old")
    new, old, note = normal_rps(args, model_dir, normal)
    rounds = []
    for i in range(args.rounds):
        log(f"2. attack round {i + 1}")
        rounds.append(attack_round(args, model_dir, normal, texts, streams))
    report(args, new, old, note, rounds)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "figures.json").write_text(json.dumps(
            {"rps_new": new, "rps_old": old, "old_note": note, "rounds": rounds}, default=str, indent=1))


if __name__ == "__main__":
    main()

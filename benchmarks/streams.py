"""Real-time streams: 50 concurrent WebSocket streams against one `polyfuse serve`, in one run.

A small sensor model (2 channels at 50 Hz, 60-step windows, cnn1d) is trained and exported; the
server runs it on the torch-free runtime. Each of ``--streams`` clients sends, in real time, one
hop of samples (10 steps = 200 ms) per message and waits for nothing: predictions arrive on their
own. Latency is measured per window, from the moment the message completing the window is sent to
the moment its prediction arrives; a sample's wait is at most one hop longer (it arrived earliest in
the hop). The server's RSS is read from /proc at the first and the last tenth of the run.

Targets (issue 14): p99 sample-to-prediction <= hop + 20 ms; RSS flat over 10,000 windows.

    PYTHONPATH=. python benchmarks/streams.py [--streams 50] [--windows 10000]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import rss_mb, running_server  # noqa: E402

RATE, LENGTH, HOP = 50, 60, 10  # windows end on multiples of the hop


def wave(label: str, rng: np.random.Generator, steps: int) -> np.ndarray:
    f = {"slow": 1.0, "fast": 4.0}[label]
    t = np.arange(steps) / RATE
    return np.stack([np.sin(2 * np.pi * f * t + rng.uniform(0, 6)), np.cos(2 * np.pi * f * t)], 1).astype(np.float32)


def train(root: Path) -> Path:
    import polyfuse
    from polyfuse.deploy.exporter import export

    rng = np.random.default_rng(0)
    rows = []
    for i in range(80):
        label = ("slow", "fast")[i % 2]
        np.save(root / f"s{i}.npy", wave(label, rng, LENGTH) + 0.1 * rng.standard_normal((LENGTH, 2)).astype(np.float32))
        rows.append({"motion": f"s{i}.npy", "label": label})
    pd.DataFrame(rows).to_csv(root / "table.csv", index=False)
    spec = {"data": {"train": str(root / "table.csv"), "split": {"valid": 0.2, "seed": 0}},
            "inputs": {"motion": {"type": "timeseries", "channels": 2, "sample_rate": RATE, "length": LENGTH,
                                  "encoder": "cnn1d", "dim": 32}},
            "outputs": {"label": {"type": "category"}},
            "train": {"epochs": 3, "batch_size": 16, "seed": 0, "threads": 1, "baseline": False, "calibrate": False}}
    polyfuse.train(spec, out=root / "model", show_progress=False)
    export(root / "model")
    return root / "model"


def client(port: int, windows: int, seed: int, latencies: list[float], errors: list[str]) -> None:
    from websockets.sync.client import connect

    rng = np.random.default_rng(seed)
    series = wave(("slow", "fast")[seed % 2], rng, LENGTH + windows * HOP)
    sent: dict[int, float] = {}
    try:
        with connect(f"ws://127.0.0.1:{port}/v2/stream", open_timeout=30, max_size=2**20) as ws:
            ws.send(json.dumps({"start": {"hop": HOP}}))

            def read() -> None:
                for _ in range(windows + 1):
                    msg = json.loads(ws.recv(timeout=60))
                    if "error" in msg:
                        errors.append(msg["error"])
                        continue
                    at = sent.get(msg["window_end"])
                    if at is None:
                        errors.append(f"stream {seed}: a prediction for window end {msg['window_end']} never sent")
                        continue
                    latencies.append(time.perf_counter() - at)

            reader = threading.Thread(target=read)
            first = LENGTH - HOP
            ws.send(json.dumps({"samples": {"motion": series[:first].tolist()}}))
            reader.start()
            start = time.perf_counter() + rng.uniform(0, HOP / RATE)  # streams out of phase
            for k in range(windows + 1):
                end = first + (k + 1) * HOP
                time.sleep(max(0.0, start + k * HOP / RATE - time.perf_counter()))
                sent[end] = time.perf_counter()
                ws.send(json.dumps({"samples": {"motion": series[end - HOP:end].tolist()}}))
            reader.join(timeout=120)
    except Exception as e:  # a failed stream is reported, not hidden
        errors.append(f"stream {seed}: {type(e).__name__}: {e}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--streams", type=int, default=50)
    ap.add_argument("--windows", type=int, default=10_000, help="windows in all streams together")
    args = ap.parse_args()
    per_stream = max(1, args.windows // args.streams)
    with tempfile.TemporaryDirectory() as tmp:
        model = train(Path(tmp))
        with running_server(model, "--stream-max-pending", "4", log_path=Path(tmp) / "serve.log",
                            env={**os.environ, "OMP_NUM_THREADS": "1"}) as (proc, url):
            port = int(url.rsplit(":", 1)[1])
            latencies: list[float] = []
            errors: list[str] = []
            threads = [threading.Thread(target=client, args=(port, per_stream, i, latencies, errors))
                       for i in range(args.streams)]
            seconds = per_stream * HOP / RATE
            rss = []
            started = time.perf_counter()
            for t in threads:
                t.start()
            time.sleep(seconds * 0.1)
            rss.append(rss_mb(proc.pid))
            time.sleep(max(0.0, seconds * 0.9 - (time.perf_counter() - started)))
            rss.append(rss_mb(proc.pid))
            for t in threads:
                t.join()
    ms = np.asarray(latencies) * 1000
    hop_ms = HOP / RATE * 1000
    p50, p99 = np.percentile(ms, [50, 99]) if ms.size else (float("nan"),) * 2
    print(f"{args.streams} streams x {per_stream} windows ({len(ms)} predictions, {len(errors)} errors), "
          f"window {LENGTH} steps, hop {HOP} steps = {hop_ms:.0f} ms, {os.cpu_count()} CPUs")
    for e in errors[:3]:
        print(f"  error: {e}")
    print(f"window-complete -> prediction: p50 {p50:.1f} ms, p99 {p99:.1f} ms; a sample's worst wait "
          f"p99 {hop_ms + p99:.0f} ms (target <= hop + 20 = {hop_ms + 20:.0f} ms: {'PASS' if p99 <= 20 else 'FAIL'})")
    growth = rss[1] - rss[0]
    print(f"server RSS at 10% / 90% of the run: {rss[0]:.0f} / {rss[1]:.0f} MB ({growth:+.0f} MB; "
          f"flat within 10%: {'PASS' if abs(growth) <= 0.1 * rss[0] else 'FAIL'})")


if __name__ == "__main__":
    main()

"""Issue 14's targets from one run: BasicMotions here, then the other time benchmarks in turn
(``--all``), each in its own process, and one table of every target's verdict at the end.

BasicMotions (aeon): accelerometer and gyroscope time series, alone and fused.

40 train / 40 test recordings of 100 steps (10 Hz) x 3 channels per sensor, 4 activities
(standing, walking, running, badminton). Each recording's sensors are written as NPY files in a
temp dir and read through the `timeseries` input. Prints test accuracy of each sensor alone and
of both fused (mean of ``--seeds`` seeds, with each seed's figure).

    python benchmarks/temporal.py [--encoder cnn1d] [--epochs 60] [--seeds 3]
    python benchmarks/temporal.py --all     # + video.py, avvideo.py, streams.py, sequence.py (~25 min on 2 cores)
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

import polyfuse

SENSORS = {"accel": slice(0, 3), "gyro": slice(3, 6)}
HERE = Path(__file__).resolve().parent
OTHERS = ("video.py", "avvideo.py", "streams.py", "sequence.py")  # decode speed, AV digits, streams, ONNX


def write_tables(root: Path) -> tuple[Path, Path]:
    from aeon.datasets import load_basic_motions

    paths = []
    for split in ("train", "test"):
        X, y = load_basic_motions(split=split)  # [n, 6, 100]
        rows = []
        for i, (x, label) in enumerate(zip(X, y)):
            row = {"label": str(label)}
            for name, chans in SENSORS.items():
                np.save(root / f"{split}{i}_{name}.npy", x[chans].T.astype(np.float32))  # [steps, channels]
                row[name] = f"{split}{i}_{name}.npy"
            rows.append(row)
        paths.append(root / f"{split}.csv")
        pd.DataFrame(rows).to_csv(paths[-1], index=False)
    return paths[0], paths[1]


def spec(train: Path, test: Path, inputs: list[str], encoder: str, epochs: int, seed: int) -> dict:
    return {"data": {"train": str(train), "test": str(test), "split": {"valid": 0.2, "seed": seed}},
            "inputs": {n: {"type": "timeseries", "channels": 3, "sample_rate": 10, "length": 100,
                           "encoder": encoder, "dim": 64, "augment": {"jitter": 0.05, "scale": 0.1}}
                       for n in inputs},
            "fusion": {"method": "concat", "dim": 64, "modality_dropout": 0.2 if len(inputs) > 1 else 0.0},
            "outputs": {"label": {"type": "category"}},
            "train": {"epochs": epochs, "batch_size": 8, "lr": 2e-3, "early_stopping": None, "seed": seed,
                      "baseline": False}}


def basic_motions(encoder: str, epochs: int, seeds: int) -> list[str]:
    """Each sensor alone and both fused; returns the verdict line."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        train, test = write_tables(root)
        frame = pd.read_csv(test)
        print(f"BasicMotions: {len(pd.read_csv(train))} train / {len(frame)} test, encoder {encoder}, "
              f"{epochs} epochs, seeds 0..{seeds - 1}")
        results = {}
        for label, inputs in (("accelerometer", ["accel"]), ("gyroscope", ["gyro"]), ("fused", ["accel", "gyro"])):
            accs, started = [], time.perf_counter()
            for seed in range(seeds):
                model = polyfuse.train(spec(train, test, inputs, encoder, epochs, seed),
                                       out=root / f"{label}{seed}", show_progress=False)
                pred = model.predict(frame[inputs], folder=root)["label"].astype(str).to_numpy()
                accs.append(float((pred == frame["label"].astype(str).to_numpy()).mean()))
            results[label] = float(np.mean(accs))
            print(f"  {label:14s} test accuracy {results[label]:.3f}  (per seed {', '.join(f'{a:.3f}' for a in accs)}; "
                  f"{time.perf_counter() - started:.0f} s)")
        best = max(results["accelerometer"], results["gyroscope"])
        ok = results["fused"] >= 0.95 and results["fused"] >= best
        line = (f"target BasicMotions fused >= 0.95 and >= the better sensor ({best:.3f}): {results['fused']:.3f} "
                f"{'PASS' if ok else 'FAIL'}")
        print(line)
        return [line]


def run_other(script: str) -> list[str]:
    """One benchmark in its own process (output passed through); returns its target lines."""
    print(f"\n=== benchmarks/{script}", flush=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE.parent), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen([sys.executable, str(HERE / script)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env)
    verdicts = []
    for line in proc.stdout:  # type: ignore[union-attr]
        print(line, end="", flush=True)
        if "PASS" in line or "FAIL" in line:
            verdicts.append(f"[{script}] {line.strip()}")
    if proc.wait() != 0:
        verdicts.append(f"[{script}] exited with {proc.returncode}: FAIL")
    return verdicts


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--encoder", default="cnn1d")
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--all", action="store_true", help="then run " + ", ".join(OTHERS) + " and sum up")
    args = ap.parse_args()
    started = time.perf_counter()
    verdicts = [f"[temporal.py] {v}" for v in basic_motions(args.encoder, args.epochs, args.seeds)]
    if args.all:
        for script in OTHERS:
            verdicts += run_other(script)
        print(f"\n=== every target of issue 14, from this run ({(time.perf_counter() - started) / 60:.0f} min):")
        for v in verdicts:
            print("  " + v)


if __name__ == "__main__":
    main()

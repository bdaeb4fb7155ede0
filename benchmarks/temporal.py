"""BasicMotions (aeon): accelerometer and gyroscope time series, alone and fused.

40 train / 40 test recordings of 100 steps (10 Hz) x 3 channels per sensor, 4 activities
(standing, walking, running, badminton). Each recording's sensors are written as NPY files in a
temp dir and read through the `timeseries` input. Prints test accuracy of each sensor alone and
of both fused (mean of ``--seeds`` seeds, with each seed's figure).

    python benchmarks/temporal.py [--encoder cnn1d] [--epochs 60] [--seeds 3]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

import polyfuse

SENSORS = {"accel": slice(0, 3), "gyro": slice(3, 6)}


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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--encoder", default="cnn1d")
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--seeds", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        train, test = write_tables(root)
        frame = pd.read_csv(test)
        print(f"BasicMotions: {len(pd.read_csv(train))} train / {len(frame)} test, encoder {args.encoder}, "
              f"{args.epochs} epochs, seeds 0..{args.seeds - 1}")
        results = {}
        for label, inputs in (("accelerometer", ["accel"]), ("gyroscope", ["gyro"]), ("fused", ["accel", "gyro"])):
            accs, started = [], time.perf_counter()
            for seed in range(args.seeds):
                model = polyfuse.train(spec(train, test, inputs, args.encoder, args.epochs, seed),
                                       out=root / f"{label}{seed}", show_progress=False)
                pred = model.predict(frame[inputs], folder=root)["label"].astype(str).to_numpy()
                accs.append(float((pred == frame["label"].astype(str).to_numpy()).mean()))
            results[label] = float(np.mean(accs))
            print(f"  {label:14s} test accuracy {results[label]:.3f}  (per seed {', '.join(f'{a:.3f}' for a in accs)}; "
                  f"{time.perf_counter() - started:.0f} s)")
        best = max(results["accelerometer"], results["gyroscope"])
        print(f"fused - best single sensor: {results['fused'] - best:+.3f}; target fused >= 0.95 and >= best single: "
              f"{'met' if results['fused'] >= 0.95 and results['fused'] >= best else 'NOT met'}")


if __name__ == "__main__":
    main()

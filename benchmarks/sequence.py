"""MM-RNN sequence fusion: ONNX fp32 against torch eager at batch 1 and 32, in one run.

Two generated sensor streams (a 3-channel 64-step and a 6-channel 100-step stream, sine against
square waves) and a number, fused with `fusion: {method: sequence}` on a 16-step grid, are trained
for a few epochs and exported. Then the same preprocessed batches run through the torch model
(``Model.run_arrays``, eager, 1 thread) and the torch-free Runtime (ONNX Runtime, 1 thread),
interleaved in blocks because the machine is shared. Target (issue 14): ONNX fp32 >= 2x torch eager.

    PYTHONPATH=. python benchmarks/sequence.py [--rnn gru|lstm]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).parent))
from common import interleaved_ms  # noqa: E402

STREAMS = {"accel": (64, 3), "gyro": (100, 6)}


def stream(kind: str, steps: int, channels: int, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(steps)[:, None] / steps
    s = np.sin(2 * np.pi * rng.uniform(2, 4) * t + rng.uniform(0, 2 * np.pi, channels))
    x = np.sign(s) if kind == "square" else s
    return (x + 0.2 * rng.standard_normal((steps, channels))).astype(np.float32)


def make_table(folder: Path, n: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        label = ("sine", "square")[i % 2]
        row = {"n": float(rng.standard_normal()), "label": label}
        for name, (steps, channels) in STREAMS.items():
            np.save(folder / f"{name}{i}.npy", stream(label, steps, channels, rng))
            row[name] = f"{name}{i}.npy"
        rows.append(row)
    pd.DataFrame(rows).to_csv(folder / "table.csv", index=False)
    return folder / "table.csv"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rnn", default="gru")
    args = ap.parse_args()
    import torch

    import polyfuse
    from polyfuse.deploy.exporter import export
    from polyfuse.runtime import Runtime

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        table = make_table(root, 200)
        spec = {"data": {"train": str(table), "split": {"valid": 0.2, "seed": 0}},
                "inputs": {**{name: {"type": "timeseries", "channels": c, "length": s, "encoder": "cnn1d", "dim": 64}
                              for name, (s, c) in STREAMS.items()}, "n": {"type": "number", "dim": 8}},
                "fusion": {"method": "sequence", "rnn": args.rnn, "steps": 16, "dim": 64},
                "outputs": {"label": {"type": "category"}},
                "train": {"epochs": 3, "batch_size": 32, "seed": 0, "threads": 1, "baseline": False}}
        model = polyfuse.train(spec, out=root / "model", show_progress=False)
        export(root / "model")
        rt = Runtime(root / "model", threads=1)
        frame = pd.read_csv(table)
        records = frame[["accel", "gyro", "n"]].to_dict("records")
        results = {}
        for size in (1, 32):
            batches = [model.preprocessor.transform([records[(i + j) % len(records)] for j in range(size)], root)[0]
                       for i in range(0, 32 * size, size)]
            med = interleaved_ms({"torch": model.run_arrays, "onnx": rt.run_arrays}, batches, rounds=5)
            results[size] = med["torch"] / med["onnx"]
            print(f"batch {size:2d}: torch eager {med['torch']:.2f} ms, ONNX fp32 {med['onnx']:.2f} ms: "
                  f"{results[size]:.2f}x")
        print(f"target ONNX fp32 >= 2x torch eager ({args.rnn}, 16 steps): batch 1 {results[1]:.2f}x "
              f"{'PASS' if results[1] >= 2 else 'FAIL'}")


if __name__ == "__main__":
    main()

"""Ray Data batch prediction against local batch predict on the same 50,000 rows, in one run.

Rows follow the toy table's pattern with text, a number and a category (no media, to keep it fast):
a small model is trained on 1,000 of them and exported to ONNX; then both engines predict all rows
with the torch-free runtime. Prints rows/s of each, their ratio (target >= 0.8x), with Ray's start-up
counted and not, and whether the outputs are identical.

    PYTHONPATH=. python benchmarks/scale_ray.py [--rows 50000]
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

os.environ.setdefault("OMP_NUM_THREADS", "1")
CLASSES = ["cat", "dog", "owl"]


def make_rows(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    k = np.arange(n) % 3
    words = np.array(["the", "a", "small", "big", "quiet", "loud"])
    notes = [f"{rng.choice(words)} {CLASSES[c]}ish {rng.choice(words)} {rng.choice(words)}" for c in k]
    return pd.DataFrame({"id": np.arange(n) + 10_000, "note": notes, "weight": k * 2 + rng.normal(0, 0.8, n),
                         "color": rng.choice(["red", "green", "blue"], n), "label": [CLASSES[c] for c in k]})


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=50_000)
    args = parser.parse_args()

    import polyfuse
    from polyfuse.deploy.batch import predict_table
    from polyfuse.deploy.exporter import export
    from polyfuse.runtime import Runtime
    from polyfuse.scale import init_ray
    from polyfuse.scale.ray_data import predict_ray
    from polyfuse.threads import single_threaded_blas, usable_cpus

    single_threaded_blas()
    root = Path(tempfile.mkdtemp(prefix="polyfuse-scale-ray-"))
    make_rows(1000, seed=1).to_csv(root / "train.csv", index=False)
    table = root / "rows.csv"
    make_rows(args.rows).drop(columns="label").to_csv(table, index=False)
    spec = {"data": {"train": str(root / "train.csv"), "split": {"valid": 0.2, "seed": 0}},
            "inputs": {"note": {"type": "text", "max_length": 8, "buckets": 4096, "max_ngrams": 64, "dim": 32},
                       "weight": {"type": "number", "dim": 8}, "color": {"type": "category", "dim": 8}},
            "fusion": {"method": "concat", "dim": 32}, "outputs": {"label": {"type": "category"}},
            "train": {"epochs": 2, "batch_size": 64, "seed": 0, "threads": 1, "baseline": False}}
    model_dir = root / "model"
    polyfuse.train(spec, out=model_dir, show_progress=False)
    export(model_dir)
    cpus = usable_cpus()
    print(f"{args.rows} rows, {cpus} CPUs; model: text + number + category, ONNX fp32")

    t = time.perf_counter()
    rt = Runtime(model_dir)
    predict_table(rt.spec, rt.preprocessor, rt.run_arrays, table, root / "local.csv", show_progress=False)
    local_s = time.perf_counter() - t

    t = time.perf_counter()
    init_ray()
    init_s = time.perf_counter() - t
    t = time.perf_counter()
    counts = predict_ray(model_dir, table, root / "ray")
    ray_s = time.perf_counter() - t

    local = pd.read_csv(root / "local.csv", keep_default_na=False, dtype=str)
    got = pd.read_parquet(root / "ray").sort_values("row").reset_index(drop=True)
    got["label_probability"] = [f"{p:.6f}" for p in got["label_probability"]]
    got = got.astype(object).where(got.notna(), "").astype(str)
    identical = got.equals(local)

    rate = lambda s: args.rows / s  # noqa: E731
    print(f"local predict  : {local_s:6.2f} s  {rate(local_s):8.0f} rows/s")
    print(f"ray data       : {ray_s:6.2f} s  {rate(ray_s):8.0f} rows/s  ({counts['shards']} shards; "
          f"ray start-up {init_s:.2f} s more)")
    print(f"ratio ray/local: {local_s / ray_s:.2f}x without start-up, {local_s / (ray_s + init_s):.2f}x with it "
          f"(target >= 0.8x)")
    print(f"outputs identical: {identical} ({counts['rows']} rows, {counts['bad']} bad)")
    import ray

    ray.shutdown()


if __name__ == "__main__":
    main()

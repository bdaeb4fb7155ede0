"""What the zoo costs and gives through `init`'s presets, figures from one run (the zoo issue's targets).

    .venv/bin/python benchmarks/zoo_presets.py [--set mvsa] [--rows 200]

On one real set (../shared/data), each spec as `polyfuse init` writes it, no edits:
1. `--preset fast` (no pretrained inputs): training wall time and test accuracy;
2. `--preset medium` with the zoo installed (e5 beside the text, EfficientNet-Lite0 beside the photo):
   training wall time with a cold cache (a fresh POLYFUSE_CACHE: the zoo's conversion and the embedding
   pass included) and again with the cache it left (warm); targets <= 3x and <= 1.2x the fast run;
3. that model exported (fp32 ONNX, dynamic int8, static int8 calibrated on the training table): the exports'
   own parity checks, batch-1 latency of each int8 build against fp32 in the torch-free runtime on ``--rows``
   test records (target >= 1.5x), and the test accuracy of each (target: int8 loses <= 1 point).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DATA, cli, interleaved_ms  # noqa: E402


def run(name: str, preset: str, tmp: Path, env: dict, tag: str) -> dict:
    folder = DATA / name
    spec = yaml.safe_load(cli("init", folder / "train.csv", "--target", "label", "--preset", preset, env=env).stdout)
    spec["data"]["train"] = str(folder / "train.csv")
    path = tmp / f"{tag}.yaml"
    path.write_text(yaml.safe_dump(spec))
    started = time.perf_counter()
    cli("train", path, "--out", tmp / tag, "--quiet", env=env)
    wall = time.perf_counter() - started
    cli("evaluate", tmp / tag, folder / "test.csv", "--out", tmp / f"{tag}.json", env=env)
    accuracy = json.loads((tmp / f"{tag}.json").read_text())["outputs"]["label"]["accuracy"]
    zoo = sorted(k for k, v in spec["inputs"].items() if isinstance(v.get("encoder"), dict))
    return {"wall_s": wall, "accuracy": accuracy, "zoo_inputs": zoo}


def exported(name: str, model: Path, rows: int) -> dict:
    """Both int8 builds beside fp32: dynamic (matrix products only) and static (every convolution and matrix
    product, ranges calibrated on training rows); a build refused by its parity gate is reported as refused."""
    import subprocess

    from common import POLYFUSE
    from polyfuse.runtime import Runtime

    folder = DATA / name
    cli("export", model, "--data", folder / "test.csv")
    builds = {"dynamic": ["--quantize", "dynamic"], "static": ["--quantize", "static", "--calibration", folder / "train.csv"]}
    refused = {}
    for kind, flags in builds.items():
        done = subprocess.run([*POLYFUSE, "export", str(model), *map(str, flags), "--data", str(folder / "test.csv")],
                              capture_output=True, text=True)
        if done.returncode != 0:
            refused[kind] = done.stderr.strip().splitlines()[-1][:300]
    checks = json.loads((model / "exports.json").read_text())
    test = pd.read_csv(folder / "test.csv")
    out = {"parity": {k: v.get("verification", {}).get("passed") for k, v in checks.items()}, "refused": refused}
    runtimes = {v: Runtime(model, variant=v) for v in ("fp32", "int8-dynamic", "int8-static")
                if v == "fp32" or v.split("-")[1] not in refused}
    for variant, rt in runtimes.items():
        predicted = [r["label"] for r in rt.predict(test.drop(columns=["label"]).to_dict("records"), folder=folder)]
        out[f"{variant}_accuracy"] = float((pd.Series(predicted).astype(str) == test["label"].astype(str)).mean())
    records = test.head(rows).drop(columns=["label"]).to_dict("records")
    ms = interleaved_ms({k: (lambda r, rt=rt: rt.predict_proba([r], folder=folder)) for k, rt in runtimes.items()},
                        records, rounds=3)
    return {**out, **{f"{k}_ms": v for k, v in ms.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", default="mvsa")
    parser.add_argument("--rows", type=int, default=200)
    args = parser.parse_args()
    if not (DATA / args.set / "train.csv").exists():
        raise SystemExit(f"{DATA / args.set} is absent (see ../shared/data/README.md)")
    import os

    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        env = {**os.environ, "POLYFUSE_CACHE": str(tmp / "cache")}
        fast = run(args.set, "fast", tmp, env, "fast")
        print(f"fast: {fast['wall_s']:.0f} s, test accuracy {fast['accuracy']:.4f}", flush=True)
        cold = run(args.set, "medium", tmp, env, "medium-cold")
        print(f"medium, cold cache ({', '.join(cold['zoo_inputs']) or 'no zoo inputs'}): {cold['wall_s']:.0f} s = "
              f"{cold['wall_s'] / fast['wall_s']:.2f}x fast (target <= 3x), accuracy {cold['accuracy']:.4f}", flush=True)
        warm = run(args.set, "medium", tmp, env, "medium-warm")
        print(f"medium, warm cache: {warm['wall_s']:.0f} s = {warm['wall_s'] / fast['wall_s']:.2f}x fast "
              f"(target <= 1.2x), accuracy {warm['accuracy']:.4f}", flush=True)
        ex = exported(args.set, tmp / "medium-warm", args.rows)
        print(f"export parity: {ex['parity']}; refused: {ex['refused'] or 'none'}")
        for variant in ("fp32", "int8-dynamic", "int8-static"):
            if f"{variant}_ms" in ex:
                print(f"  {variant}: batch-1 {ex[f'{variant}_ms']:.1f} ms = {ex['fp32_ms'] / ex[f'{variant}_ms']:.2f}x "
                      f"fp32 (target >= 1.5x), test accuracy {ex[f'{variant}_accuracy']:.4f} "
                      f"({100 * (ex['fp32_accuracy'] - ex[f'{variant}_accuracy']):+.1f} points lost, target <= 1)")

if __name__ == "__main__":
    main()

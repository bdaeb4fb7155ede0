"""The int8 embedding pass against the fp32 one, figures from one run (the zoo issue's speed item).

    .venv/bin/python benchmarks/int8_pass.py [--set zhtext] [--set mvsa]

On each real set (../shared/data): the spec `polyfuse init --preset medium` writes (e5 beside each text
column, EfficientNet-Lite0 beside each photo), trained twice with a fresh embedding cache each time:
every pretrained input with `embed_with: torch`, then with `embed_with: onnx-int8`. Reported: each
backbone's pass in seconds (the int8 one includes its one-off export, quantization and gate), the
gate's cosines, and the test accuracy of both models. The zoo's conversions are warmed first.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DATA, cli  # noqa: E402


def train(name: str, spec: dict, engine: str, tmp: Path) -> dict:
    spec = json.loads(json.dumps(spec))
    spec["data"]["cache_dir"] = str(tmp / f"cache-{engine}")
    for cfg in spec["inputs"].values():
        if isinstance(cfg.get("encoder"), dict):
            cfg["encoder"]["embed_with"] = engine
    path = tmp / f"{engine}.yaml"
    path.write_text(yaml.safe_dump(spec))
    started = time.perf_counter()
    cli("train", path, "--out", tmp / engine, "--quiet")
    wall = time.perf_counter() - started
    cli("evaluate", tmp / engine, DATA / name / "test.csv", "--out", tmp / f"{engine}.json")
    accuracy = json.loads((tmp / f"{engine}.json").read_text())["outputs"]["label"]["accuracy"]
    cache = json.loads((tmp / engine / "metrics.json").read_text()).get("pretrained_cache", {})
    return {"wall_s": wall, "accuracy": accuracy, "passes": cache}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", action="append", dest="sets")
    args = parser.parse_args()
    for name in args.sets or ["zhtext", "mvsa"]:
        if not (DATA / name / "train.csv").exists():
            print(f"{name}: {DATA / name} is absent (see ../shared/data/README.md); skipped")
            continue
        spec = yaml.safe_load(cli("init", DATA / name / "train.csv", "--target", "label", "--preset", "medium").stdout)
        spec["data"]["train"] = str(DATA / name / "train.csv")
        with tempfile.TemporaryDirectory() as t:
            runs = {engine: train(name, spec, engine, Path(t)) for engine in ("torch", "onnx-int8")}
        fp32, int8 = runs["torch"], runs["onnx-int8"]
        for key, a in fp32["passes"].items():
            b = int8["passes"].get(key, {})
            gate = b.get("int8_parity", {})
            print(f"{name} {key}: {a['rows']} rows, fp32 pass {a['seconds']:.0f} s, int8 pass {b.get('seconds', 0):.0f} s "
                  f"({b.get('engine')}) = {a['seconds'] / max(b.get('seconds', 0), 1e-9):.2f}x; gate cosine mean "
                  f"{gate.get('mean_cos')}, min {gate.get('min_cos')}", flush=True)
        print(f"{name}: training {fp32['wall_s']:.0f} s fp32 vs {int8['wall_s']:.0f} s int8 = "
              f"{fp32['wall_s'] / int8['wall_s']:.2f}x; test accuracy fp32 {fp32['accuracy']:.4f}, int8 "
              f"{int8['accuracy']:.4f} ({100 * (int8['accuracy'] - fp32['accuracy']):+.1f} points)", flush=True)


if __name__ == "__main__":
    main()

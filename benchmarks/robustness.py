"""Robust fusion on ../shared/data/avdigits: does the fused model stay at least as good as the
single-input model that still has clean data when the other input is noisy or missing?

    .venv/bin/python benchmarks/robustness.py [--fusion gated] [--seeds 3] [--seed 0] [--out runs/bench-robust]

For each training seed, trains (a) the fused model of avdigits.yaml with a robust configuration
(fusion method ``--fusion``, default gated when the spec accepts it else concat;
fusion.modality_dropout 0.5; fusion.alone_loss 1.0; image augment noise 0.8; audio augment
noise_snr_db [-5, 20]; both noises on half the training examples, ``--noise-p``), (b) an image-only
and (c) an audio-only model (the same spec with one input removed, so trained the same way), then reports on test.csv, each target with its measured figure and PASS/FAIL:

* clean fused accuracy >= 0.98;
* images noised (sigma 0.6) and images missing: fused accuracy >= audio-only accuracy - 1 point;
* audio at -5 dB SNR and audio missing: fused accuracy >= image-only accuracy - 1 point;
* expected calibration error after temperature scaling, when metrics.json has ``calibration``
  (target <= 0.03; "n/a" when absent).

A point is 2 of the 200 test rows, about the spread between training seeds, so with ``--seeds`` > 1
the targets are judged on the means over seeds (each seed's figures are printed too).
Skips with a message where the data is absent.
"""
from __future__ import annotations

import argparse
import copy
import math
import sys
import tempfile
import time
import typing
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import AVDIGITS, REPO  # noqa: E402

import polyfuse  # noqa: E402
from polyfuse.evaluate import robustness  # noqa: E402
from polyfuse.spec.schema import FusionSpec  # noqa: E402

CLEAN_TARGET = 0.98
MARGIN = 0.01  # "minus 1 point"
IMAGE_SIGMA, AUDIO_SNR = 0.6, -5.0


def fusion_methods() -> tuple[str, ...]:
    """The fusion methods this polyfuse's spec accepts (read from the schema, not assumed)."""
    return typing.get_args(FusionSpec.model_fields["method"].annotation)


def base_spec(threads: int | None) -> dict[str, Any]:
    """avdigits.yaml with its table paths made absolute (specs given as dicts resolve from the cwd)."""
    spec = yaml.safe_load((REPO / "avdigits.yaml").read_text())
    for key in ("train", "valid", "test"):
        if spec["data"].get(key):
            spec["data"][key] = str((REPO / spec["data"][key]).resolve())
    # test.csv holds the same four speakers as train.csv, so validate on a random 10 % rather than on
    # one held-out speaker: early stopping would otherwise tune for a speaker the test barely has
    spec["data"]["split"] = {"valid": 0.1, "seed": 0}
    if threads:
        spec.setdefault("train", {})["threads"] = threads
    return spec


def robust_spec(spec: dict[str, Any], fusion: str, dropout: float, alone: float, noise_p: float) -> dict[str, Any]:
    spec = copy.deepcopy(spec)
    # the missing-input targets ask every input's branch to answer well on its own: modality dropout
    # trains that by chance, the alone loss on every batch
    spec["fusion"] = {**spec.get("fusion", {}), "method": fusion, "modality_dropout": dropout, "alone_loss": alone}
    spec["inputs"]["image"].setdefault("augment", {})["noise"] = 0.8  # per image, sigma drawn from [0, 0.8]
    spec["inputs"]["audio"].setdefault("augment", {})["noise_snr_db"] = [-5.0, 20.0]
    for name in ("image", "audio"):  # the rest stay clean: the missing targets need each branch good on clean data
        spec["inputs"][name]["augment"]["noise_p"] = noise_p
    return spec


def without(spec: dict[str, Any], name: str) -> dict[str, Any]:
    spec = copy.deepcopy(spec)
    del spec["inputs"][name]
    return spec


def train(spec: dict[str, Any], out: Path, what: str, reuse: bool = False) -> Any:
    if reuse and (out / "manifest.json").exists():
        print(f"reusing {what} from {out}", flush=True)
        return polyfuse.load(out)
    t0 = time.perf_counter()
    model = polyfuse.train(spec, out=out, show_progress=False)
    print(f"trained {what} in {time.perf_counter() - t0:.0f} s ({len(model.history)} epochs)", flush=True)
    return model


def level_score(report: dict[str, Any], name: str, corruption: str, level: float) -> float:
    curve = report["curves"][name][corruption]
    levels = [math.inf if x is None else x for x in curve["levels"]]
    return curve["scores"]["label"][levels.index(level)]


def missing_score(report: dict[str, Any], name: str) -> float:
    return next(e["scores"]["label"] for e in report["missing"]["entries"] if e["missing"] == [name])


def ece_after(model: Any) -> float | None:
    """Test-split ECE after temperature scaling (validation split when there is no test one)."""
    entry = (model.metrics.get("calibration") or {}).get("label")
    if not entry:
        return None
    value = entry.get("test_ece_after", entry.get("valid_ece_after"))
    return None if value is None else float(value)


def row(what: str, measured: float | None, target: float | None, higher: bool = True) -> str:
    if measured is None:
        return f"  {what:<52}{'n/a':>9}"
    if target is None:
        return f"  {what:<52}{measured:>9.4f}   (no target; for information)"
    ok = measured >= target if higher else measured <= target
    return f"  {what:<52}{measured:>9.4f}   {'>=' if higher else '<='} {target:.4f}   {'PASS' if ok else 'FAIL'}"


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"needs at least 1, got {value}")
    return value


def share(text: str) -> float:
    value = float(text)
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"needs a share in (0, 1], got {value:g}")
    return value


def _args(methods: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fusion", default="gated" if "gated" in methods else "concat", choices=methods)
    parser.add_argument("--modality-dropout", type=float, default=0.5)
    parser.add_argument("--alone-loss", type=float, default=1.0, help="fusion.alone_loss (0 turns it off)")
    parser.add_argument("--noise-p", type=share, default=0.5,
                        help="augment.noise_p of both inputs: the share of training examples noised (measured: with "
                             "1.0 the audio branch never saw clean audio and fell 7-12 points short on it)")
    parser.add_argument("--early-stopping", type=int, default=None, help="train.early_stopping (default: the spec's)")
    parser.add_argument("--reuse-single", action="store_true", help="load the single-input models already in --out")
    parser.add_argument("--seed", type=int, default=0, help="robustness seed (corruption draws)")
    parser.add_argument("--seeds", type=positive, default=3, help="training seeds; the targets are judged on the means")
    parser.add_argument("--threads", type=int, default=None, help="torch threads for training")
    parser.add_argument("--out", default=None, help="keep the three artifacts here (default: a temporary folder)")
    return parser.parse_args()


def _one_seed(spec: dict, root: Path, test: Path, args: argparse.Namespace) -> tuple[dict, dict]:
    """Train the fused and both single-input models for one seed; (figures, robustness report)."""
    fused = train(spec, root / "fused", "fused")
    image_only = train(without(spec, "audio"), root / "image-only", "image-only", args.reuse_single)
    audio_only = train(without(spec, "image"), root / "audio-only", "audio-only", args.reuse_single)
    t0 = time.perf_counter()
    report = robustness.run(fused, test, seed=args.seed)
    robustness.write(report, root / "fused")
    print(f"robustness of the fused model in {time.perf_counter() - t0:.1f} s "
          f"(robustness.json/.png written into {root / 'fused'})\n")
    print(robustness.format_table(report))
    figures = {
        "clean": report["outputs"]["label"]["clean"],
        "image_noised": level_score(report, "image", "noise", IMAGE_SIGMA),
        "image_missing": missing_score(report, "image"),
        "audio_noised": level_score(report, "audio", "noise", AUDIO_SNR),
        "audio_missing": missing_score(report, "audio"),
        "image_only": image_only.evaluate(test)["outputs"]["label"]["accuracy"],
        "audio_only": audio_only.evaluate(test)["outputs"]["label"]["accuracy"],
        "ece": ece_after(fused),
    }
    return figures, report


def _print_targets(runs: list[dict], report: dict, test: Path, fusion: str) -> None:
    # a point is 2 of test.csv's 200 rows, about the spread between training seeds: with several seeds the
    # targets are judged on the means
    f = {k: (None if any(r[k] is None for r in runs) else sum(r[k] for r in runs) / len(runs)) for k in runs[0]}
    spread = lambda k: "" if len(runs) < 2 else f" (seeds: {', '.join(f'{r[k]:.3f}' for r in runs)})"  # noqa: E731
    what = f"mean of {len(runs)} training seeds" if len(runs) > 1 else "one training seed"
    print(f"\nsingle-input models on test.csv: image-only {f['image_only']:.4f}{spread('image_only')}, "
          f"audio-only {f['audio_only']:.4f}{spread('audio_only')}\n")
    print(f"targets on {test.name} ({report['rows']} rows; fusion {fusion}; {what}):")
    print(row("clean fused accuracy", f["clean"], CLEAN_TARGET) + spread("clean"))
    print(row(f"images noised sigma={IMAGE_SIGMA}: fused vs audio-only - 1 pt", f["image_noised"],
              f["audio_only"] - MARGIN) + spread("image_noised"))
    print(row("images missing: fused vs audio-only - 1 pt", f["image_missing"], f["audio_only"] - MARGIN)
          + spread("image_missing"))
    print(row(f"audio at {AUDIO_SNR:g} dB SNR: fused vs image-only - 1 pt", f["audio_noised"], f["image_only"] - MARGIN)
          + spread("audio_noised"))
    print(row("audio missing: fused vs image-only - 1 pt", f["audio_missing"], f["image_only"] - MARGIN)
          + spread("audio_missing"))
    print(row("ECE after temperature scaling (fused, test)", f["ece"], 0.03, higher=False)
          + (spread("ece") if f["ece"] is not None else ""))


def main() -> None:
    methods = fusion_methods()
    args = _args(methods)
    if not (AVDIGITS / "train.csv").exists():
        print(f"skipped: {AVDIGITS} is absent")
        return
    base = base_spec(args.threads)
    if args.early_stopping:
        base["train"]["early_stopping"] = args.early_stopping
    fused_spec = robust_spec(base, args.fusion, args.modality_dropout, args.alone_loss, args.noise_p)
    print(f"fusion: {args.fusion} (accepted: {', '.join(methods)}); options: "
          f"fusion={fused_spec['fusion']}, image.augment={fused_spec['inputs']['image']['augment']}, "
          f"audio.augment={fused_spec['inputs']['audio']['augment']}; single-input models: the same spec "
          "minus one input", flush=True)
    test = AVDIGITS / "test.csv"
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for train_seed in range(args.seeds):
            root = (Path(args.out) if args.out else Path(tmp)) / (f"seed{train_seed}" if args.seeds > 1 else "")
            spec = copy.deepcopy(fused_spec)
            spec["train"]["seed"] = train_seed
            print(f"\n==== training seed {train_seed} ====", flush=True)
            figures, report = _one_seed(spec, root, test, args)
            runs.append(figures)
            print(f"\nseed {train_seed}: " + ", ".join(f"{k} {v:.4f}" for k, v in figures.items() if v is not None))
    _print_targets(runs, report, test, args.fusion)


if __name__ == "__main__":
    main()

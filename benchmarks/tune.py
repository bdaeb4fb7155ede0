"""Experiments, figures from one run (the experiments issue's targets).

    .venv/bin/python benchmarks/tune.py [--sets mvsa zhtext] [--trials 20] [--time-limit 1800] [--parts search tracking]

Search, per set (../shared/data; init's fast preset, no hand edits):
1. the default spec trained once: its test accuracy;
2. `polyfuse tune` with `--suggest`'s space, ``--trials`` within ``--time-limit`` seconds: the best trial's
   test accuracy (target: >= the default + 1 point) and the search's wall time;
3. the same search with the pruner off (optuna's NopPruner in place of successive halving), same trials:
   wall time (target: the pruned search >= 2x faster).

Tracking, on the first set: the default spec trained untracked, tracked to a local SQLite store, and with a
dead tracking server's URI, interleaved three times; seconds each (targets: tracking <= +3 %, a dead URI
<= +5 s).
"""
from __future__ import annotations

import argparse
import json
import socket
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DATA, cli  # noqa: E402


def fast_spec(name: str, tmp: Path) -> Path:
    folder = DATA / name
    spec = yaml.safe_load(cli("init", folder / "train.csv", "--target", "label", "--preset", "fast").stdout)
    spec["data"]["train"], spec["data"]["test"] = str(folder / "train.csv"), str(folder / "test.csv")
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_accuracy(model: Path) -> float:
    return json.loads((model / "metrics.json").read_text())["test"]["outputs"]["label"]["accuracy"]


def search(name: str, tmp: Path, trials: int, limit: float, pruned: bool) -> dict:
    """One search, in this process; the unpruned one swaps the pruner for optuna's NopPruner."""
    import optuna

    from polyfuse.experiments import tune

    spec = fast_spec(name, tmp)
    space = yaml.safe_load(cli("tune", spec, "--suggest").stdout)
    out = tmp / f"{name}-tune-{'pruned' if pruned else 'full'}"
    original = optuna.pruners.SuccessiveHalvingPruner
    if not pruned:
        optuna.pruners.SuccessiveHalvingPruner = lambda **_: optuna.pruners.NopPruner()  # the same search, unpruned
    started = time.perf_counter()
    try:
        summary = tune.tune(spec, space, trials, out, time_limit=limit)
    finally:
        optuna.pruners.SuccessiveHalvingPruner = original
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "summary": summary, "best_test": test_accuracy(Path(summary["best"]["model"]))}


def dead_uri() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def tracking(name: str, tmp: Path, rounds: int = 3) -> dict[str, float]:
    spec = fast_spec(name, tmp)
    seconds: dict[str, list[float]] = {"untracked": [], "tracked": [], "dead uri": []}
    for r in range(rounds):
        for kind, extra in (("untracked", []), ("tracked", ["--track", f"sqlite:///{tmp / 'mlflow.db'}"]),
                            ("dead uri", ["--track", dead_uri()])):
            t = time.perf_counter()
            cli("train", spec, "--out", tmp / f"{name}-{kind.replace(' ', '-')}-{r}", "--quiet", *extra)
            seconds[kind].append(time.perf_counter() - t)
    return {k: sorted(v)[len(v) // 2] for k, v in seconds.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", nargs="*", default=["mvsa", "zhtext"])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--time-limit", type=float, default=1800)
    parser.add_argument("--parts", nargs="*", default=["search", "tracking"], choices=["search", "tracking"])
    args = parser.parse_args()
    sets = [s for s in args.sets if (DATA / s / "train.csv").exists()]
    for s in set(args.sets) - set(sets):
        print(f"{s}: absent ({DATA / s}); skipped")
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        if "search" in args.parts:
            print("| set | default test acc | best trial test acc (target >= +1 pt) | trials done / pruned | "
                  "search s, pruned / not (target >= 2x) |\n| --- | --- | --- | --- | --- |")
            for name in sets:
                spec = fast_spec(name, tmp)
                cli("train", spec, "--out", tmp / f"{name}-default", "--quiet")
                default = test_accuracy(tmp / f"{name}-default")
                on = search(name, tmp, args.trials, args.time_limit, pruned=True)
                off = search(name, tmp, args.trials, args.time_limit, pruned=False)
                gain, speed = 100 * (on["best_test"] - default), off["seconds"] / on["seconds"]
                print(f"| {name} | {default:.4f} | {on['best_test']:.4f} ({gain:+.1f} pt, "
                      f"{'PASS' if gain >= 1 else 'FAIL'}) | {on['summary']['complete']} / {on['summary']['pruned']} | "
                      f"{on['seconds']:.0f} / {off['seconds']:.0f} = {speed:.2f}x ({'PASS' if speed >= 2 else 'FAIL'}) |",
                      flush=True)
        if "tracking" in args.parts and sets:
            s = tracking(sets[0], tmp)
            over, dead = s["tracked"] / s["untracked"] - 1, s["dead uri"] - s["untracked"]
            print(f"\ntracking on {sets[0]} (median of 3, interleaved): untracked {s['untracked']:.1f} s, tracked "
                  f"{s['tracked']:.1f} s ({100 * over:+.1f} %, target <= +3 %: {'PASS' if over <= 0.03 else 'FAIL'}), "
                  f"dead URI {s['dead uri']:.1f} s ({dead:+.1f} s, target <= +5 s: {'PASS' if dead <= 5 else 'FAIL'})")


if __name__ == "__main__":
    main()

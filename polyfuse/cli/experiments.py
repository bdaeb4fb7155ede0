"""`polyfuse tune` and `polyfuse leaderboard`: search spec settings with Optuna, and rank the runs."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml

from polyfuse.cli.args import positive_int
from polyfuse.errors import SpecError
from polyfuse.extras import require


def cmd_tune(args: argparse.Namespace) -> None:
    require("train", "polyfuse tune")
    if args.suggest:
        from polyfuse.experiments.tune import suggest_space
        from polyfuse.spec.schema import load_spec

        text = yaml.safe_dump(suggest_space(load_spec(args.spec)[0]), sort_keys=False)
        if args.space:
            Path(args.space).write_text(text)
            print(f"wrote {args.space}")
        else:
            print(text, end="")
        return
    require("experiments", "polyfuse tune", modules=("optuna",))
    if not args.space or not args.out:
        raise SpecError("polyfuse tune needs --space SPACE.yaml and --out DIR (or --suggest to write a space)")
    space = yaml.safe_load(Path(args.space).read_text())
    if not isinstance(space, dict) or not space:
        raise SpecError(f"{args.space}: expected a mapping of spec fields to ranges or choices")
    if args.engine == "ray":
        require("ray", "polyfuse tune --engine ray", modules=("ray",))
        from polyfuse.scale.ray_tune import tune_ray

        summary = tune_ray(args.spec, space, args.trials, args.out, time_limit=args.time_limit, address=args.address,
                           refit=args.refit)
    else:
        from polyfuse.experiments.tune import tune

        summary = tune(args.spec, space, args.trials, args.out, time_limit=args.time_limit, refit=args.refit)
    print(json.dumps(summary, indent=1))


def cmd_leaderboard(args: argparse.Namespace) -> None:
    from polyfuse.experiments.leaderboard import leaderboard, render, write_csv

    rows = leaderboard(args.folder, sort=args.sort)
    print(render(rows))
    if args.csv:
        write_csv(rows, args.csv)
        print(f"wrote {args.csv}")


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tune", help="search spec settings (Optuna TPE with a median pruner; resumable)")
    p.add_argument("spec")
    p.add_argument("--space", default=None, help="YAML of spec fields: loguniform(a, b), uniform(a, b), int(a, b) or "
                   "a list of choices (with --suggest: where to write one)")
    p.add_argument("--trials", type=positive_int, default=20)
    p.add_argument("--time-limit", type=float, default=None, help="seconds for the whole search")
    p.add_argument("--out", default=None, help="the search's folder: study.db, trial-NNN models, best.yaml, tune.json")
    p.add_argument("--refit", action="store_true", help="train the best spec again on the training and validation rows")
    p.add_argument("--suggest", action="store_true", help="write a sensible space for the spec and stop")
    p.add_argument("--engine", choices=["optuna", "ray"], default="optuna",
                   help="ray: Ray Tune (OptunaSearch + ASHA), trials in parallel on a Ray cluster")
    p.add_argument("--address", default=None, help="with --engine ray: the cluster's address (default: a local Ray)")
    p.set_defaults(fn=cmd_tune)

    p = sub.add_parser("leaderboard", help="every model under a folder in one table, best first")
    p.add_argument("folder")
    p.add_argument("--sort", default="valid", help="a column: valid (default), test, train_seconds, weights_mb, batch1_ms")
    p.add_argument("--csv", default=None, help="also write the table as CSV")
    p.set_defaults(fn=cmd_leaderboard)

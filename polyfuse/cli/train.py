"""`polyfuse train`, `polyfuse evaluate` and `polyfuse robustness`: a model from a spec, and its scores."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from polyfuse.cli import privacy
from polyfuse.cli.args import bars, positive_int
from polyfuse.extras import require


def cmd_train(args: argparse.Namespace) -> None:
    require("train", "polyfuse train")
    from polyfuse.estimator import train
    from polyfuse.evaluate import report

    if args.nproc and args.nproc > 1 and "WORLD_SIZE" not in os.environ:  # start the ranks, then stop here
        from polyfuse.training.distributed import launch

        argv = [args.spec, "--out", args.out] + (["--resume"] if args.resume else []) + (["--quiet"] if args.quiet else [])
        argv += (["--track", args.track] if args.track else []) + (["--tensorboard", args.tensorboard] if args.tensorboard else [])
        raise SystemExit(launch(argv, args.nproc))
    spec, base = args.spec, None
    if args.track or args.tensorboard:  # the flags win over the spec's train.tracking
        from polyfuse.spec.schema import TrackingSpec, load_spec

        spec, base = load_spec(args.spec)
        old = spec.train.tracking or TrackingSpec()
        spec.train.tracking = TrackingSpec(mlflow=_store(args.track) if args.track else old.mlflow,
                                           experiment=old.experiment, tensorboard=args.tensorboard or old.tensorboard)
    model = train(spec, out=args.out, resume=args.resume, show_progress=bars(args), base=base)
    if os.environ.get("RANK", "0") != "0":
        return  # a torchrun rank other than 0: rank 0 reports
    for split in ("test", "valid"):
        if split in model.metrics:
            print(report.summary(model.metrics[split], model.spec, title=f"{split} split"))
            break
    for table in (report.ensemble_table(model.metrics), report.baseline_table(model.metrics, model.spec)):
        if table:
            print(table)
    print(f"trained in {model.metrics['train_seconds']:.1f} s; model saved to {args.out}")


def _store(track: str) -> str:
    """--track's URI; bare --track is a SQLite store in the working directory."""
    from polyfuse.training.tracking import DEFAULT_STORE

    return f"sqlite:///{Path(DEFAULT_STORE).resolve()}" if track == "default" else track


def cmd_evaluate(args: argparse.Namespace) -> None:
    require("train", "polyfuse evaluate")
    from polyfuse.estimator import load
    from polyfuse.evaluate import report

    model = load(args.model, key_env=args.key_env, verify_key=args.verify_key)
    result = model.evaluate(args.data, on_bad_row=args.on_bad_row)
    print(report.summary(result, model.spec, title=f"{args.data}: {result['rows']} rows"))
    for bad in result["bad_rows"]:
        print(f"skipped {bad}", file=sys.stderr)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1, default=str))


def cmd_robustness(args: argparse.Namespace) -> None:
    require("train", "polyfuse robustness")
    from polyfuse.estimator import load, set_threads
    from polyfuse.evaluate import robustness

    set_threads(args.threads)
    result = robustness.run(load(args.model), args.data, seed=args.seed, rows=args.rows)
    print(robustness.format_table(result))
    written = robustness.write(result, args.model, out=args.out)
    print("wrote " + ", ".join(str(p) for p in written))


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a model from a spec")
    p.add_argument("spec")
    p.add_argument("--out", required=True, help="artifact directory to write")
    p.add_argument("--resume", action="store_true", help="continue from <out>.checkpoint")
    p.add_argument("--nproc", type=positive_int, default=None,
                   help="data-parallel processes on this machine (torchrun + DDP; gloo on CPU, NCCL on GPU)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--track", nargs="?", const="default", default=None, metavar="URI",
                   help="log the run to MLflow: a tracking server's http(s) URI, file:/path or sqlite:///path.db "
                   "(bare --track: ./mlflow.db, artifacts in ./mlruns); a server that is down is reported once and training goes on")
    p.add_argument("--tensorboard", default=None, metavar="DIR", help="write TensorBoard event files here")
    p.set_defaults(fn=cmd_train)

    p = sub.add_parser("evaluate", help="metrics of a saved model on a labelled table")
    p.add_argument("model")
    p.add_argument("data")
    p.add_argument("--out", help="also write the metrics as JSON here")
    p.add_argument("--on-bad-row", choices=["skip", "error"], default="skip")
    privacy.add_key_options(p)
    p.set_defaults(fn=cmd_evaluate)

    p = sub.add_parser("robustness", help="accuracy under corrupted and missing inputs: curves, table, JSON, PNG")
    p.add_argument("model")
    p.add_argument("data", help="labelled table to evaluate on")
    p.add_argument("--seed", type=int, default=0, help="seeds the row sample and every corruption")
    p.add_argument("--rows", type=positive_int, default=1000, help="evaluate at most this many rows (a seeded sample)")
    p.add_argument("--out", default=None,
                   help="write the JSON here (and the PNG beside it) instead of into the model directory")
    p.add_argument("--threads", type=positive_int, default=None, help="torch threads (default: all cores)")
    p.set_defaults(fn=cmd_robustness)

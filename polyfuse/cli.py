"""The `polyfuse` command line: init, schema, train, evaluate, predict, demo."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from polyfuse.errors import PolyfuseError


def cmd_init(args: argparse.Namespace) -> None:
    import yaml

    from polyfuse.infer_spec import guess_spec

    print(yaml.safe_dump(guess_spec(args.table), sort_keys=False), end="")


def cmd_schema(args: argparse.Namespace) -> None:
    from polyfuse.spec import json_schema

    print(json.dumps(json_schema(), indent=1))


def cmd_train(args: argparse.Namespace) -> None:
    from polyfuse import report
    from polyfuse.estimator import train

    model = train(args.spec, out=args.out, resume=args.resume, show_progress=not args.quiet)
    for split in ("test", "valid"):
        if split in model.metrics:
            print(report.summary(model.metrics[split], model.spec, title=f"{split} split"))
            break
    print(f"trained in {model.metrics['train_seconds']:.1f} s; model saved to {args.out}")


def cmd_evaluate(args: argparse.Namespace) -> None:
    from polyfuse import report
    from polyfuse.estimator import load

    model = load(args.model)
    result = model.evaluate(args.data, on_bad_row=args.on_bad_row)
    print(report.summary(result, model.spec, title=f"{args.data}: {result['rows']} rows"))
    for bad in result["bad_rows"]:
        print(f"skipped {bad}", file=sys.stderr)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1, default=str))


def cmd_predict(args: argparse.Namespace) -> None:
    from polyfuse.batch import predict_table
    from polyfuse.estimator import load

    model = load(args.model)
    counts = predict_table(model, args.data, args.out, chunk_rows=args.chunk_rows, id_column=args.id_column,
                           show_progress=not args.quiet)
    print(f"{counts['rows']} rows predicted, {counts['bad']} bad rows (see the 'error' column) -> {args.out}")


def cmd_demo(args: argparse.Namespace) -> None:
    from polyfuse.demo import run_demo

    run_demo(root=args.data_dir, out=Path(args.out), epochs=args.epochs, show_progress=not args.quiet)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="polyfuse", description="Multimodal fusion models from raw tables.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("init", help="guess a spec from a table's columns (prints YAML)")
    p.add_argument("table")
    p.set_defaults(fn=cmd_init)

    p = sub.add_parser("schema", help="print the JSON Schema of the spec")
    p.set_defaults(fn=cmd_schema)

    p = sub.add_parser("train", help="train a model from a spec")
    p.add_argument("spec")
    p.add_argument("--out", required=True, help="artifact directory to write")
    p.add_argument("--resume", action="store_true", help="continue from <out>.checkpoint")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(fn=cmd_train)

    p = sub.add_parser("evaluate", help="metrics of a saved model on a labelled table")
    p.add_argument("model")
    p.add_argument("data")
    p.add_argument("--out", help="also write the metrics as JSON here")
    p.add_argument("--on-bad-row", choices=["skip", "error"], default="skip")
    p.set_defaults(fn=cmd_evaluate)

    p = sub.add_parser("predict", help="predict every row of a table into a CSV")
    p.add_argument("model")
    p.add_argument("data")
    p.add_argument("--out", required=True)
    p.add_argument("--chunk-rows", type=int, default=512)
    p.add_argument("--id-column", default=None, help="column copied into the output (default: 'id' if present)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(fn=cmd_predict)

    p = sub.add_parser("demo", help="build the embedded demo data, train, and show fusion vs single inputs")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--data-dir", default=None, help="where the demo data is built (default: ~/.cache/polyfuse/demo)")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(fn=cmd_demo)

    args = parser.parse_args(argv)
    try:
        args.fn(args)
    except PolyfuseError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())

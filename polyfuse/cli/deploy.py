"""`polyfuse export` (verified ONNX / int8 / torch.export builds), `polyfuse bench` (every runtime side by side)
and `polyfuse distill` (a small student from a large teacher)."""
from __future__ import annotations

import argparse
import json

from polyfuse.cli.args import positive_int
from polyfuse.extras import EXTRAS, require


def cmd_export(args: argparse.Namespace) -> None:
    require("train", "polyfuse export", modules=(*EXTRAS["train"][1], "onnx", "onnxscript"))
    from polyfuse.deploy.exporter import export

    entry = export(args.model, to=args.to, quantize=args.quantize, calibration=args.calibration, data=args.data,
                   force=args.force, per_channel=not args.per_tensor)
    print(json.dumps(entry, indent=1))


def cmd_bench(args: argparse.Namespace) -> None:
    require("train", "polyfuse bench")
    from polyfuse.deploy.bench import run_bench

    run_bench(args.model, args.data, repeats=args.repeats, threads=args.threads)


def cmd_distill(args: argparse.Namespace) -> None:
    require("train", "polyfuse distill")
    from polyfuse.cli.args import bars
    from polyfuse.deploy.distill import distill

    model = distill(args.teacher, args.student, out=args.out, unlabelled=args.unlabelled,
                    temperature=args.temperature, alpha=args.alpha, show_progress=bars(args))
    d = model.metrics["distillation"]
    own = next(iter(model.metrics.get("test", {}).get("outputs", {}).values()), {})
    for k, v in d["teacher_test"].items():
        if k in own:
            print(f"test {k}: teacher {v:.4f}, student {own[k]:.4f} ({100 * (own[k] - v):+.1f} points)")
    print(f"student saved to {args.out}/")


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="write a verified ONNX / int8 / torch.export build into the model directory")
    p.add_argument("model")
    p.add_argument("--to", choices=["onnx", "torch-export"], default="onnx")
    p.add_argument("--quantize", choices=["dynamic", "static"], default=None)
    p.add_argument("--calibration", default=None, help="table of rows to calibrate static int8 on (default: training)")
    p.add_argument("--data", default=None, help="labelled table to verify on (default: the validation split)")
    p.add_argument("--per-tensor", action="store_true", help="int8 scales per tensor instead of per channel")
    p.add_argument("--force", action="store_true", help="write even if verification fails (recorded in the card)")
    p.set_defaults(fn=cmd_export)

    p = sub.add_parser("bench", help="every runtime side by side: size, load, cold start, latency, throughput, accuracy")
    p.add_argument("model")
    p.add_argument("--data", required=True, help="labelled table to measure accuracy and latency on")
    p.add_argument("--repeats", type=positive_int, default=3)
    p.add_argument("--threads", type=positive_int, default=None)
    p.set_defaults(fn=cmd_bench)

    p = sub.add_parser("distill", help="train a small student on a teacher model's softened outputs")
    p.add_argument("teacher", help="the teacher's model directory")
    p.add_argument("--student", default="fast", help="fast (init's fast preset on the teacher's table) or a spec file")
    p.add_argument("--out", required=True)
    p.add_argument("--unlabelled", default=None, help="a table with the inputs and no target: the teacher labels it")
    p.add_argument("--temperature", type=float, default=2.0, help="the teacher's logits are divided by it")
    p.add_argument("--alpha", type=float, default=0.7, help="the teacher's share of each target (the label's: 1 - it)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(fn=cmd_distill)

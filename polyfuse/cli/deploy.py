"""`polyfuse export` (verified ONNX / int8 / torch.export builds), `polyfuse bench` (every runtime side by side)
`polyfuse distill` (a small student from a large teacher) and `polyfuse compress` (structured pruning)."""
from __future__ import annotations

import argparse
import json

from polyfuse.cli.args import positive_int
from polyfuse.extras import EXTRAS, require


def cmd_export(args: argparse.Namespace) -> None:
    require("train", "polyfuse export", modules=(*EXTRAS["train"][1], "onnx", "onnxscript"))
    from polyfuse.deploy.exporter import export

    entry = export(args.model, to=args.to, quantize=args.quantize, calibration=args.calibration, data=args.data,
                   force=args.force, per_channel=not args.per_tensor, with_preprocessing=args.with_preprocessing)
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


def cmd_compress(args: argparse.Namespace) -> None:
    require("edge", "polyfuse compress --prune")
    from polyfuse.deploy.prune import compress

    model = compress(args.model, prune=args.prune, out=args.out, epochs=args.epochs, max_loss=args.max_loss)
    p = model.metrics["pruning"]
    (m0, m1), (p0, p1), (l0, l1) = p["macs_per_row"], p["parameters"], p["latency_ms_batch1"]
    print(f"MACs per row {m0:,} -> {m1:,} ({1 - m1 / m0:.0%} fewer); parameters {p0:,} -> {p1:,}; "
          f"torch batch-1 {l0:.2f} -> {l1:.2f} ms")
    for name, (before, after) in p["score"].items():
        print(f"{p['scored_on']} {name}: {before:.4f} -> {after:.4f} ({100 * (after - before):+.2f} points) after "
              f"{p['finetune_epochs']} fine-tuning epochs")
    print(f"pruned model saved to {args.out}/ (export it as any model: polyfuse export {args.out})")


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="write a verified ONNX / int8 / torch.export build into the model directory")
    p.add_argument("model")
    p.add_argument("--to", choices=["onnx", "torch-export", "executorch", "litert"], default="onnx",
                   help="executorch: a .pte program with the XNNPACK delegate; litert: a .tflite flatbuffer "
                   "(its converter in POLYFUSE_LITERT_PYTHON: `make litert`); both for phones, the edge extra")
    p.add_argument("--quantize", choices=["dynamic", "static"], default=None)
    p.add_argument("--calibration", default=None, help="table of rows to calibrate static int8 on (default: training)")
    p.add_argument("--data", default=None, help="labelled table to verify on (default: the validation split)")
    p.add_argument("--per-tensor", action="store_true", help="int8 scales per tensor instead of per channel")
    p.add_argument("--force", action="store_true", help="write even if verification fails (recorded in the card)")
    p.add_argument("--with-preprocessing", action="store_true",
                   help="a mobile/<to>/ bundle whose graph takes decoded pixels, waveforms and text ids (onnx or "
                   "executorch; fp32), with its input contract, labels and text-id test vectors")
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

    p = sub.add_parser("compress", help="prune the channels of a model's convolutional and linear encoders, "
                       "fine-tune briefly, and keep the result only if its score holds")
    p.add_argument("model")
    p.add_argument("--prune", type=float, required=True, help="share of each prunable layer's channels to remove, "
                   "e.g. 0.5")
    p.add_argument("--out", required=True)
    p.add_argument("--epochs", type=positive_int, default=None, help="fine-tuning epochs (default: a quarter of "
                   "the model's, at least 3)")
    p.add_argument("--max-loss", type=float, default=1.0, help="points of test score the pruned model may lose "
                   "(default 1); more and nothing is written")
    p.set_defaults(fn=cmd_compress)

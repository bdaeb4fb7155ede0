"""`polyfuse predict` (a table to a CSV, locally or on Ray Data) and `polyfuse embed` (to Parquet vectors)."""
from __future__ import annotations

import argparse

from polyfuse.cli import privacy
from polyfuse.cli.args import bars, positive_int
from polyfuse.extras import require


def cmd_predict(args: argparse.Namespace) -> None:
    if args.engine == "ray":
        from polyfuse.scale import require_ray

        require_ray("--engine ray")
        from polyfuse.scale.ray_data import predict_ray

        counts = predict_ray(args.model, args.data, args.out, address=args.address, variant=args.variant,
                             id_column=args.id_column, chunk_rows=args.chunk_rows, key_env=args.key_env,
                             verify_key=args.verify_key)
        print(f"{counts['rows']} rows predicted on Ray, {counts['bad']} bad rows (see the 'error' column) -> "
              f"{args.out} ({counts['shards']} Parquet shards)")
        return
    if args.runtime == "torch":
        require("train", "polyfuse predict --runtime torch",
                hint="`--runtime onnx` runs an exported model with the base install and the tables extra")
    require("tables", "polyfuse predict")  # reads the table file and shows a progress bar
    from polyfuse.deploy.batch import predict_table

    if args.runtime == "torch":
        from polyfuse.estimator import load as load_model

        model = load_model(args.model, key_env=args.key_env, verify_key=args.verify_key)
    else:  # torch is never imported on this path
        from polyfuse.runtime import Runtime

        model = Runtime(args.model, variant=args.variant, threads=args.threads, key_env=args.key_env,
                        verify_key=args.verify_key)
    counts = predict_table(model.spec, model.preprocessor, model.run_arrays, args.data, args.out,
                           chunk_rows=args.chunk_rows, id_column=args.id_column, show_progress=bars(args))
    print(f"{counts['rows']} rows predicted, {counts['bad']} bad rows (see the 'error' column) -> {args.out}")


def cmd_embed(args: argparse.Namespace) -> None:
    require("train", "polyfuse embed")
    from polyfuse.deploy.embed import embed_table
    from polyfuse.estimator import load

    model = load(args.model)
    counts = embed_table(model, args.data, args.out, chunk_rows=args.chunk_rows, id_column=args.id_column,
                         show_progress=bars(args))
    print(f"{counts['rows']} rows embedded (fused: {model.spec.fusion.dim} values; per input: "
          f"{', '.join(f'{n} {c.dim}' for n, c in model.spec.inputs.items())}), {counts['bad']} bad rows -> {args.out}")


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="predict every row of a table into a CSV")
    p.add_argument("model")
    p.add_argument("data")
    p.add_argument("--out", required=True)
    p.add_argument("--chunk-rows", type=positive_int, default=512)
    p.add_argument("--id-column", default=None, help="column copied into the output (default: 'id' if present)")
    p.add_argument("--runtime", choices=["torch", "onnx"], default="torch", help="onnx: the torch-free ONNX Runtime path")
    p.add_argument("--variant", default="fp32", help="with --runtime onnx: fp32, int8, int8-dynamic or int8-static")
    p.add_argument("--threads", type=positive_int, default=None)
    p.add_argument("--engine", choices=["local", "ray"], default="local",
                   help="ray: Ray Data tasks run the torch-free ONNX runtime (one model per worker process); DATA may be a folder of Parquet "
                        "files and --out is a folder of Parquet shards")
    p.add_argument("--address", default=None, help="with --engine ray: an existing cluster (default: a local Ray)")
    p.add_argument("--quiet", action="store_true")
    privacy.add_key_options(p)
    p.set_defaults(fn=cmd_predict)

    p = sub.add_parser("embed", help="fused and per-input embeddings of every row of a table, as Parquet")
    p.add_argument("model")
    p.add_argument("data")
    p.add_argument("--out", required=True, help="Parquet file to write")
    p.add_argument("--chunk-rows", type=positive_int, default=512)
    p.add_argument("--id-column", default=None, help="column copied into the output (default: 'id' if present)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(fn=cmd_embed)

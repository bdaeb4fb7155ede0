"""The `polyfuse` command line: init, schema, train, evaluate, predict, embed, export, bench, serve, k8s, robustness,
demo, keygen, encrypt, sign, audit."""
from __future__ import annotations

import argparse
import os
import json
import sys
from pathlib import Path

from polyfuse.cli.args import non_negative_float, positive_float, positive_int
from polyfuse.errors import PolyfuseError
from polyfuse.extras import EXTRAS, require
from polyfuse.cli import privacy
from polyfuse.threads import single_threaded_blas


def bars(args: argparse.Namespace) -> bool:
    """Progress bars only on a terminal: a log file or pipe gets one line per epoch or step instead
    of thousands of carriage-return updates."""
    return not args.quiet and sys.stderr.isatty()


def cmd_init(args: argparse.Namespace) -> None:
    require("tables", "polyfuse init", modules=("pandas",))
    from polyfuse.autospec.spec_yaml import init_yaml

    print(init_yaml(args.table, target=args.target), end="")


def cmd_schema(args: argparse.Namespace) -> None:
    from polyfuse.spec.schema import json_schema

    print(json.dumps(json_schema(), indent=1))


def cmd_train(args: argparse.Namespace) -> None:
    require("train", "polyfuse train")
    from polyfuse.evaluate import report
    from polyfuse.estimator import train

    if args.nproc and args.nproc > 1 and "WORLD_SIZE" not in os.environ:  # start the ranks, then stop here
        from polyfuse.training.distributed import launch

        argv = [args.spec, "--out", args.out] + (["--resume"] if args.resume else []) + (["--quiet"] if args.quiet else [])
        raise SystemExit(launch(argv, args.nproc))
    model = train(args.spec, out=args.out, resume=args.resume, show_progress=bars(args))
    if os.environ.get("RANK", "0") != "0":
        return  # a torchrun rank other than 0: rank 0 reports
    for split in ("test", "valid"):
        if split in model.metrics:
            print(report.summary(model.metrics[split], model.spec, title=f"{split} split"))
            break
    table = report.baseline_table(model.metrics, model.spec)
    if table:
        print(table)
    print(f"trained in {model.metrics['train_seconds']:.1f} s; model saved to {args.out}")


def cmd_evaluate(args: argparse.Namespace) -> None:
    require("train", "polyfuse evaluate")
    from polyfuse.evaluate import report
    from polyfuse.estimator import load

    model = load(args.model, key_env=args.key_env, verify_key=args.verify_key)
    result = model.evaluate(args.data, on_bad_row=args.on_bad_row)
    print(report.summary(result, model.spec, title=f"{args.data}: {result['rows']} rows"))
    for bad in result["bad_rows"]:
        print(f"skipped {bad}", file=sys.stderr)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1, default=str))


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


def cmd_serve(args: argparse.Namespace) -> None:
    import os

    require("serve", "polyfuse serve")

    from polyfuse.serve.access import check_tls, parse_rate
    from polyfuse.serve.config import ServeConfig
    from polyfuse.serve.server import serve

    check_tls(args.tls_cert, args.tls_key)
    if args.audit_log and args.ray:
        raise PolyfuseError("--audit-log with --ray: every replica would write its own chain into one file; run "
                            "without --ray (or one replica per log) for an audit trail")
    api_key = None
    if args.api_key_env:
        api_key = os.environ.get(args.api_key_env)
        if not api_key:
            raise PolyfuseError(f"--api-key-env {args.api_key_env}: that environment variable is empty or unset")
    cfg = ServeConfig(host=args.host, port=args.port, runtime=args.runtime, variant=args.variant, api_key=api_key,
                      max_batch=args.max_batch, max_delay_ms=args.max_delay_ms, queue_size=args.queue_size,
                      timeout_s=args.timeout, max_body_bytes=args.max_body_mb << 20, max_records=args.max_records,
                      max_pixels=args.max_pixels, max_audio_seconds=args.max_audio_seconds,
                      max_audio_rate=args.max_audio_rate, max_decode_mb=args.max_decode_mb,
                      max_header_bytes=args.max_header_kb << 10, header_timeout_s=args.header_timeout,
                      drain_s=args.drain, threads=args.threads, key_env=args.key_env, verify_key=args.verify_key,
                      api_keys_file=args.api_keys, rate_limit=parse_rate(args.rate_limit) if args.rate_limit else None,
                      audit_log=args.audit_log, audit_max_mb=args.audit_max_mb, tls_cert=args.tls_cert,
                      tls_key=args.tls_key, stream_idle_s=args.stream_idle_timeout,
                      stream_max_message_bytes=args.stream_max_message_kb << 10, stream_max_pending=args.stream_max_pending,
                      stream_max_open=args.stream_max_open)
    if args.ray:
        from polyfuse.scale import require_ray

        require_ray("serve --ray")
        from polyfuse.scale.ray_serve import serve_ray

        serve_ray(args.model, cfg, replicas=args.replicas, autoscale=parse_autoscale(args.autoscale))
        return
    serve(args.model, cfg)


def parse_autoscale(text: str | None) -> tuple[int, int] | None:
    """'MIN,MAX' -> (min, max) replicas."""
    if text is None:
        return None
    try:
        low, high = (int(v) for v in text.split(","))
    except ValueError:
        raise PolyfuseError(f"--autoscale {text!r}: expected MIN,MAX replicas, e.g. 1,4") from None
    if not 0 <= low <= high or high < 1:
        raise PolyfuseError(f"--autoscale {text!r}: expected 0 <= MIN <= MAX and MAX >= 1")
    return low, high


def cmd_k8s(args: argparse.Namespace) -> None:
    from polyfuse.scale.k8s import write_manifests

    written = write_manifests(args.model, args.out, image=args.image, storage_uri=args.storage_uri,
                              replicas=args.replicas, max_replicas=args.max_replicas, cpu=args.cpu, memory=args.memory)
    print("wrote " + ", ".join(str(p) for p in written))


def cmd_robustness(args: argparse.Namespace) -> None:
    require("train", "polyfuse robustness")
    from polyfuse.estimator import load, set_threads
    from polyfuse.evaluate import robustness

    set_threads(args.threads)
    result = robustness.run(load(args.model), args.data, seed=args.seed, rows=args.rows)
    print(robustness.format_table(result))
    written = robustness.write(result, args.model, out=args.out)
    print("wrote " + ", ".join(str(p) for p in written))


def cmd_demo(args: argparse.Namespace) -> None:
    require("train", "polyfuse demo", modules=(*EXTRAS["train"][1], "espeakng_loader"))
    from polyfuse.cli.demo import run_demo

    run_demo(root=args.data_dir, out=Path(args.out), epochs=args.epochs, show_progress=bars(args),
             pretrained=args.pretrained)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="polyfuse", description="Multimodal fusion models from raw tables.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("init", help="write a spec by reading a sample of the table's values and files "
                       "(prints YAML with a comment on each choice)")
    p.add_argument("table")
    p.add_argument("--target", default=None, help="column to predict (default: one named label/target/class/..., "
                   "else the last column)")
    p.set_defaults(fn=cmd_init)

    p = sub.add_parser("schema", help="print the JSON Schema of the spec")
    p.set_defaults(fn=cmd_schema)

    p = sub.add_parser("train", help="train a model from a spec")
    p.add_argument("spec")
    p.add_argument("--out", required=True, help="artifact directory to write")
    p.add_argument("--resume", action="store_true", help="continue from <out>.checkpoint")
    p.add_argument("--nproc", type=positive_int, default=None,
                   help="data-parallel processes on this machine (torchrun + DDP; gloo on CPU, NCCL on GPU)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(fn=cmd_train)

    p = sub.add_parser("evaluate", help="metrics of a saved model on a labelled table")
    p.add_argument("model")
    p.add_argument("data")
    p.add_argument("--out", help="also write the metrics as JSON here")
    p.add_argument("--on-bad-row", choices=["skip", "error"], default="skip")
    privacy.add_key_options(p)
    p.set_defaults(fn=cmd_evaluate)

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

    p = sub.add_parser("serve", help="HTTP server: /predict, KServe V2, /metrics, a web page at /")
    p.add_argument("model")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default: loopback only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--runtime", choices=["auto", "onnx", "torch"], default="auto",
                   help="auto: ONNX Runtime when the model is exported, else torch")
    p.add_argument("--variant", default="fp32", help="ONNX variant: fp32, int8, int8-dynamic, int8-static")
    p.add_argument("--api-key-env", default=None, help="require this environment variable's value as x-api-key "
                   "(key id 'default')")
    p.add_argument("--api-keys", default=None, metavar="FILE",
                   help="YAML/JSON of API keys: a mapping id -> key, or a list of {id, key, rate}")
    p.add_argument("--rate-limit", default=None, metavar="N/s",
                   help="predict/infer requests per key (10/s, 600/min; per client address without keys); "
                        "keys with their own rate keep it; beyond it: 429 with Retry-After")
    p.add_argument("--tls-cert", default=None, help="PEM certificate (chain): serve HTTPS (with --tls-key)")
    p.add_argument("--tls-key", default=None, help="PEM private key of --tls-cert")
    p.add_argument("--audit-log", default=None, metavar="PATH",
                   help="append a hash-chained JSON line per prediction (ids, input digests, outputs; never inputs)")
    p.add_argument("--audit-max-mb", type=positive_float, default=100.0, help="rotate the audit log past this size")
    p.add_argument("--max-batch", type=positive_int, default=32)
    p.add_argument("--max-delay-ms", type=non_negative_float, default=5.0)
    p.add_argument("--queue-size", type=positive_int, default=256, help="predict requests admitted at once (being preprocessed, queued or run); more get 503")
    p.add_argument("--timeout", type=positive_float, default=10.0,
                   help="seconds per request before 504 (408 while its body is still arriving)")
    p.add_argument("--max-body-mb", type=positive_int, default=16)
    p.add_argument("--max-records", type=positive_int, default=64)
    p.add_argument("--max-pixels", type=positive_int, default=4096 * 4096)
    p.add_argument("--max-audio-seconds", type=positive_float, default=60.0)
    p.add_argument("--max-audio-rate", type=positive_int, default=384_000,
                   help="sample rate x channels of one clip, from its header (default: 8 ch at 48 kHz)")
    p.add_argument("--max-decode-mb", type=positive_int, default=256,
                   help="decoded size of one request's images and audio, summed from their headers")
    p.add_argument("--max-header-kb", type=positive_int, default=64, help="request line + headers; more gets 431")
    p.add_argument("--header-timeout", type=positive_float, default=10.0,
                   help="seconds to receive a request's headers before the connection is closed")
    p.add_argument("--drain", type=non_negative_float, default=10.0, help="seconds in-flight requests get on SIGTERM")
    p.add_argument("--stream-idle-timeout", type=positive_float, default=30.0,
                   help="/v2/stream: seconds without a client message before the stream is closed (1001)")
    p.add_argument("--stream-max-message-kb", type=positive_int, default=1024, help="/v2/stream: bigger messages close it (1009)")
    p.add_argument("--stream-max-open", type=positive_int, default=256,
                   help="/v2/stream: streams open at once; one more is closed with 1013 (try again later)")
    p.add_argument("--stream-max-pending", type=positive_int, default=4,
                   help="/v2/stream: windows awaiting the model per stream; beyond it the oldest are dropped")
    p.add_argument("--threads", type=positive_int, default=1, help="model threads (requests already run concurrently)")
    p.add_argument("--ray", action="store_true", help="serve as a Ray Serve application (replicas, autoscaling)")
    scale = p.add_mutually_exclusive_group()
    scale.add_argument("--replicas", type=positive_int, default=1, help="with --ray: this many replicas")
    scale.add_argument("--autoscale", default=None, metavar="MIN,MAX", help="with --ray: autoscale between these")
    privacy.add_key_options(p)
    p.set_defaults(fn=cmd_serve)

    p = sub.add_parser("k8s", help="write a KServe InferenceService and the Dockerfile of its server image")
    p.add_argument("model")
    p.add_argument("--out", required=True, help="folder to write inference_service.yaml and Dockerfile into")
    p.add_argument("--image", default=None, help="image name (default: polyfuse-<model>:latest)")
    p.add_argument("--storage-uri", default=None,
                   help="where KServe pulls the model from (s3://, gs://, pvc://...); default: baked into the image")
    p.add_argument("--replicas", type=positive_int, default=1, help="minimum replicas")
    p.add_argument("--max-replicas", type=positive_int, default=1)
    p.add_argument("--cpu", default="1")
    p.add_argument("--memory", default="2Gi")
    p.set_defaults(fn=cmd_k8s)

    p = sub.add_parser("robustness", help="accuracy under corrupted and missing inputs: curves, table, JSON, PNG")
    p.add_argument("model")
    p.add_argument("data", help="labelled table to evaluate on")
    p.add_argument("--seed", type=int, default=0, help="seeds the row sample and every corruption")
    p.add_argument("--rows", type=positive_int, default=1000, help="evaluate at most this many rows (a seeded sample)")
    p.add_argument("--out", default=None,
                   help="write the JSON here (and the PNG beside it) instead of into the model directory")
    p.add_argument("--threads", type=positive_int, default=None, help="torch threads (default: all cores)")
    p.set_defaults(fn=cmd_robustness)

    p = sub.add_parser("demo", help="build the embedded demo data, train, and show fusion vs single inputs")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--data-dir", default=None, help="where the demo data is built (default: ~/.cache/polyfuse/demo)")
    p.add_argument("--epochs", type=positive_int, default=None)
    p.add_argument("--pretrained", action="store_true",
                   help="also train with a real pretrained MiniLM (shipped in a wheel, offline) on the transcript and "
                        "show what it adds over the from-scratch text encoder")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(fn=cmd_demo)

    privacy.add_parsers(sub)

    args = parser.parse_args(argv)
    try:
        single_threaded_blas()  # see polyfuse.threads
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

"""`polyfuse serve` (the HTTP server, or Ray Serve replicas with --ray) and `polyfuse k8s` (KServe manifests)."""
from __future__ import annotations

import argparse
import os

from polyfuse.cli import privacy
from polyfuse.cli.args import non_negative_float, positive_float, positive_int
from polyfuse.errors import PolyfuseError
from polyfuse.extras import require


def cmd_serve(args: argparse.Namespace) -> None:
    require("serve", "polyfuse serve")

    from polyfuse.serve.access import check_tls, parse_rate
    from polyfuse.serve.config import ServeConfig
    from polyfuse.serve.server import serve
    from polyfuse.serve.stream_access import parse_origins

    check_tls(args.tls_cert, args.tls_key)
    if args.audit_log and args.ray:
        raise PolyfuseError("--audit-log with --ray: every replica would write its own chain into one file; run "
                            "without --ray (or one replica per log) for an audit trail")
    api_key = None
    if args.api_key_env:
        api_key = os.environ.get(args.api_key_env)
        if not api_key:
            raise PolyfuseError(f"--api-key-env {args.api_key_env}: that environment variable is empty or unset")
    try:
        origins = parse_origins(args.allowed_origins)
    except ValueError as e:
        raise PolyfuseError(f"--allowed-origins: {e}") from None
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
                      stream_max_bytes_per_s=args.stream_max_kb_per_s << 10,
                      stream_max_open=args.stream_max_open, allowed_origins=origins,
                      heavy_process=not args.no_heavy_process)
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
    from polyfuse.scale.k8s import Secrets, write_manifests

    secrets = Secrets(api_keys=args.api_keys_secret, verify_key=args.verify_key_secret,
                      model_key=args.model_key_secret, key_env=args.key_env)
    written = write_manifests(args.model, args.out, image=args.image, storage_uri=args.storage_uri,
                              base_image=args.base_image, secrets=secrets, replicas=args.replicas,
                              max_replicas=args.max_replicas, cpu=args.cpu, memory=args.memory)
    print("wrote " + ", ".join(str(p) for p in written))
    if secrets.any:  # the pod cannot start before its Secrets exist
        print(f"create the Secrets first (no secret is written anywhere): sh {written[-1]}, i.e.\n"
              + "".join(f"  {line}\n" for line in written[-1].read_text().splitlines()[3:]), end="")


def add_parsers(sub: argparse._SubParsersAction) -> None:
    _add_serve(sub)
    _add_k8s(sub)


def _add_serve(sub: argparse._SubParsersAction) -> None:
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
    p.add_argument("--stream-max-kb-per-s", type=positive_int, default=512,
                   help="/v2/stream: message kilobytes parsed per second per stream; a faster client is slowed down "
                        "(the server reads its next message later), never disconnected")
    p.add_argument("--stream-max-open", type=positive_int, default=256,
                   help="/v2/stream: streams open at once; one more is closed with 1013 (try again later)")
    p.add_argument("--stream-max-pending", type=positive_int, default=4,
                   help="/v2/stream: windows awaiting the model per stream; beyond it the oldest are dropped")
    p.add_argument("--allowed-origins", default=None, metavar="ORIGIN[,ORIGIN...]",
                   help="/v2/stream: browser origins (https://app.example.com) that may open streams besides the "
                        "server's own page; '*' allows any; clients without an Origin header are not browsers and may")
    p.add_argument("--no-heavy-process", action="store_true",
                   help="parse bodies over 1 MB and stream messages over 64 KB on a thread of the server instead of "
                        "its worker process (one process less; a few large requests then slow the ordinary ones)")
    p.add_argument("--threads", type=positive_int, default=1, help="model threads (requests already run concurrently)")
    p.add_argument("--ray", action="store_true", help="serve as a Ray Serve application (replicas, autoscaling)")
    scale = p.add_mutually_exclusive_group()
    scale.add_argument("--replicas", type=positive_int, default=1, help="with --ray: this many replicas")
    scale.add_argument("--autoscale", default=None, metavar="MIN,MAX", help="with --ray: autoscale between these")
    privacy.add_key_options(p)
    p.set_defaults(fn=cmd_serve)


def _add_k8s(sub: argparse._SubParsersAction) -> None:
    from polyfuse.privacy.crypto import DEFAULT_KEY_ENV
    from polyfuse.scale.k8s import API_KEYS_FILE, BASE_IMAGE, MODEL_KEY, VERIFY_KEY_FILE

    p = sub.add_parser("k8s", help="write a KServe InferenceService and the Dockerfile of its server image")
    p.add_argument("model")
    p.add_argument("--out", required=True, help="folder to write inference_service.yaml and Dockerfile into")
    p.add_argument("--image", default=None,
                   help="image name; its tag defaults to the model's digest (default: polyfuse-<model>:<digest12>)")
    p.add_argument("--base-image", default=BASE_IMAGE,
                   help=f"FROM of the Dockerfile: a fixed version, better with its digest, NAME:TAG@sha256:... "
                        f"(default {BASE_IMAGE})")
    p.add_argument("--storage-uri", default=None,
                   help="where KServe pulls the model from (s3://, gs://, pvc://...); default: baked into the image")
    p.add_argument("--api-keys-secret", default=None, metavar="NAME",
                   help=f"Secret whose key {API_KEYS_FILE} is the server's --api-keys file")
    p.add_argument("--verify-key-secret", default=None, metavar="NAME",
                   help=f"Secret whose key {VERIFY_KEY_FILE} is the PEM public key of --verify-key")
    p.add_argument("--model-key-secret", default=None, metavar="NAME",
                   help=f"Secret whose key {MODEL_KEY} is an encrypted model's key (given to the server as --key-env)")
    p.add_argument("--key-env", default=DEFAULT_KEY_ENV,
                   help=f"with --model-key-secret: the variable the key is put in (default {DEFAULT_KEY_ENV})")
    p.add_argument("--replicas", type=positive_int, default=1, help="minimum replicas")
    p.add_argument("--max-replicas", type=positive_int, default=1)
    p.add_argument("--cpu", default="1")
    p.add_argument("--memory", default="2Gi")
    p.set_defaults(fn=cmd_k8s)

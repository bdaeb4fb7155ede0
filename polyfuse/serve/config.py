"""Server settings: every limit has a safe default and a command-line flag."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ServeConfig:
    host: str = "127.0.0.1"  # never all interfaces unless asked
    port: int = 8000
    runtime: str = "auto"  # auto: ONNX when exported, else torch
    variant: str = "fp32"
    api_key: str | None = None
    max_batch: int = 32
    max_delay_ms: float = 5.0
    queue_size: int = 256  # predict requests admitted at once; beyond it: 503 + Retry-After, before the body is read
    timeout_s: float = 10.0  # per request, from arrival to answer: 504 after
    max_body_bytes: int = 16 << 20
    max_records: int = 64
    max_pixels: int = 4096 * 4096  # decompression-bomb guard, checked from the header before decoding
    max_audio_seconds: float = 60.0
    drain_s: float = 10.0  # on SIGTERM: not ready at once, in-flight requests get this long
    threads: int | None = 1  # model threads: concurrency comes from requests, and one thread wastes least
    check_batching: bool = True
    key_env: str | None = None  # the variable holding an encrypted model's key (default POLYFUSE_KEY)
    verify_key: str | None = None  # a PEM public key file: refuse unsigned or mis-signed models  # measure at start-up whether batching is cheaper than singles

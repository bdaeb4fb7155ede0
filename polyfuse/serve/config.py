"""Server settings: every limit has a safe default and a command-line flag."""
from __future__ import annotations

from dataclasses import dataclass

from polyfuse.errors import PolyfuseError
from polyfuse.preprocess.budget import DecodeBudget


@dataclass
class ServeConfig:
    host: str = "127.0.0.1"  # never all interfaces unless asked
    port: int = 8000
    runtime: str = "auto"  # auto: ONNX when exported, else torch
    variant: str = "fp32"
    api_key: str | None = None
    max_batch: int = 32
    max_delay_ms: float = 5.0
    queue_size: int = 256  # predict requests admitted at once (after their body arrived); beyond it: 503 + Retry-After
    timeout_s: float = 10.0  # per request, from arrival to answer: 504 after (408 if the body is still arriving)
    max_body_bytes: int = 16 << 20
    max_records: int = 64
    max_pixels: int = 4096 * 4096  # decompression-bomb guard, checked from the header before decoding
    max_audio_seconds: float = 60.0
    max_audio_rate: int = 384_000  # samples/s over all channels (8 ch at 48 kHz, 2 ch at 192 kHz), from the header
    max_decode_mb: int = 256  # decoded size of one request's media, summed from the headers
    max_header_bytes: int = 64 << 10  # request line + headers; beyond it: 431 and the connection closed
    header_timeout_s: float = 10.0  # to receive the request line and headers; beyond it the connection is closed
    drain_s: float = 10.0  # on SIGTERM: not ready at once, in-flight requests get this long
    threads: int | None = 1  # model threads: concurrency comes from requests, and one thread wastes least
    check_batching: bool = True  # measure at start-up whether batching is cheaper than singles
    key_env: str | None = None  # the variable holding an encrypted model's key (default POLYFUSE_KEY)
    verify_key: str | None = None  # a PEM public key file: refuse unsigned or mis-signed models
    api_keys_file: str | None = None  # YAML/JSON: id -> key, or a list of {id, key, rate} (serve/access.py)
    rate_limit: float | None = None  # requests/s per key (per client address without keys); None: unlimited
    audit_log: str | None = None  # the hash-chained audit trail (privacy/audit.py); None: off
    audit_max_mb: float = 100.0  # the audit file is rotated past this size
    tls_cert: str | None = None  # PEM certificate (chain) and its private key: HTTPS when both are given
    tls_key: str | None = None
    stream_idle_s: float = 30.0  # /v2/stream: close (1001) after this long without a client message
    stream_max_message_bytes: int = 1 << 20  # /v2/stream: a bigger message closes the stream (1009)
    stream_max_open: int = 256  # /v2/stream: streams open at once; one more is closed with 1013 (try again later)
    stream_max_pending: int = 4  # /v2/stream: windows awaiting the model; beyond it the oldest are dropped
    # /v2/stream: message bytes a stream may have parsed a second (past it the server reads its next message
    # later and TCP slows the client). 512 KB/s is 3.5x 16 kHz audio as JSON numbers (~144 KB/s) and fits
    # 50 sensor channels at 1 kHz; parsing JSON holds the GIL, and 4 clients sending 1 MB messages back to
    # back took /predict's p99 from 28 ms to 1.5 s and liveness to 220 ms without this budget
    stream_max_bytes_per_s: int = 512 << 10
    # /v2/stream: browser origins (scheme://host:port, normalised by serve/stream_access.parse_origins) that
    # may open a stream besides the server's own; handshakes without an Origin (not a browser) always may
    allowed_origins: tuple[str, ...] = ()
    # bodies over 1 MB and stream messages over 64 KB are parsed in a worker process of their own (serve/heavy.py),
    # so that the largest requests the limits allow cannot hold the server's GIL; off, a thread of it parses them
    heavy_process: bool = True

    def __post_init__(self) -> None:
        limits = {"--stream-idle-timeout": self.stream_idle_s, "--stream-max-message-kb": self.stream_max_message_bytes,
                  "--stream-max-open": self.stream_max_open, "--stream-max-pending": self.stream_max_pending,
                  "--stream-max-kb-per-s": self.stream_max_bytes_per_s}
        for flag, value in limits.items():  # 0 or less would refuse or close every stream
            if value <= 0:
                raise PolyfuseError(f"{flag} must be positive (got {value if 'kb' not in flag else value / 1024:g})")

    def budget(self, deadline: float | None = None) -> DecodeBudget:
        """A fresh decode budget for one request with these limits."""
        return DecodeBudget(max_pixels=self.max_pixels, max_audio_seconds=self.max_audio_seconds,
                            max_audio_rate=self.max_audio_rate, max_total_bytes=self.max_decode_mb << 20,
                            deadline=deadline)

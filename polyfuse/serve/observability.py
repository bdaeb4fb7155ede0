"""Prometheus metrics (own registry per app) and a structured JSON access log with request ids."""
from __future__ import annotations

import atexit
import json
import logging
import logging.handlers
import queue
import sys
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

LATENCY_BUCKETS = (.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class Metrics:
    def __init__(self, model: str, digest: str, runtime: str):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("polyfuse_requests", "HTTP requests by endpoint and status", ["endpoint", "status"], registry=r)
        self.latency = Histogram("polyfuse_request_seconds", "Request latency", ["endpoint"], buckets=LATENCY_BUCKETS, registry=r)
        self.queue = Histogram("polyfuse_queue_seconds", "Time a request waited for the model", buckets=LATENCY_BUCKETS, registry=r)
        self.model = Histogram("polyfuse_model_seconds", "Model time per batch", buckets=LATENCY_BUCKETS, registry=r)
        self.batch = Histogram("polyfuse_batch_rows", "Rows per model batch", buckets=BATCH_BUCKETS, registry=r)
        self.inflight = Gauge("polyfuse_inflight_requests", "Requests being handled", registry=r)
        self.admitted = Gauge("polyfuse_admitted_requests", "Predict requests admitted and not yet answered "
                              "(capped by --queue-size)", registry=r)
        self.info = Info("polyfuse_model", "The served model", registry=r)
        self.info.info({"name": model, "sha256": digest, "runtime": runtime})

    def observe_batch(self, rows: int, queued: list[float], took: float) -> None:
        """One model batch: its rows and model time once, and each request's time in the queue."""
        for seconds in queued:
            self.queue.observe(seconds)
        self.model.observe(took)
        self.batch.observe(rows)


_listener: logging.handlers.QueueListener | None = None
_writing = False  # whether the listener's thread runs


def access_logger() -> logging.Logger:
    """The access log. Lines are written to stderr by a background thread: a write on the event loop
    gives the GIL away, and under load getting it back waits for the preprocessing threads."""
    global _listener, _writing
    log = logging.getLogger("polyfuse.access")
    if not log.handlers:
        lines: queue.SimpleQueue = queue.SimpleQueue()
        stream = logging.StreamHandler(sys.stderr)
        stream.setFormatter(logging.Formatter("%(message)s"))
        _listener = logging.handlers.QueueListener(lines, stream)
        log.addHandler(logging.handlers.QueueHandler(lines))
        log.setLevel(logging.INFO)
        log.propagate = False
        atexit.register(flush_access_log)
    if _listener is not None and not _writing:  # first use, or after flush_access_log
        _listener.start()
        _writing = True
    return log


def flush_access_log() -> None:
    """Write out every queued line and stop the writer thread (at shutdown; access_logger restarts it)."""
    global _writing
    if _listener is not None and _writing:
        _listener.stop()
        _writing = False


def log_access(log: logging.Logger, request_id: str, method: str, path: str, status: int, seconds: float,
               client: str | None, detail: str | None = None) -> None:
    """One JSON line per request: ids and timings, never request contents."""
    entry = {"ts": round(time.time(), 3), "request_id": request_id, "method": method, "path": path,
             "status": status, "ms": round(seconds * 1e3, 2), "client": client}
    if detail:
        entry["error"] = detail[:200]
    log.info(json.dumps(entry))

"""Running the app under uvicorn with a draining shutdown: on SIGTERM/SIGINT readiness turns false
at once, in-flight requests finish (bounded by ``drain_s``; those still running then are answered
503 with Retry-After), then the process exits."""
from __future__ import annotations

import gc
import sys
import threading
import time
from pathlib import Path

import uvicorn

from polyfuse.serve.app import create_app
from polyfuse.serve.config import ServeConfig
from polyfuse.serve.connection import limited_protocol


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, state, drain_s: float):
        super().__init__(config)
        self.state, self.drain_s, self.draining = state, drain_s, False

    def handle_exit(self, sig: int, frame) -> None:
        if self.draining:  # a second signal: stop now
            return super().handle_exit(sig, frame)
        self.draining = True
        self.state.ready = False
        print(f"polyfuse serve: signal {sig}: not ready; draining {self.state.inflight} in-flight request(s)",
              file=sys.stderr, flush=True)

        def drain() -> None:
            deadline = time.monotonic() + self.drain_s
            while self.state.inflight > 0 and time.monotonic() < deadline:
                time.sleep(0.02)
            if self.state.inflight > 0 and self.state.loop is not None:
                # the requests that outlasted the drain get a 503 (retry elsewhere), not a dropped connection
                self.state.loop.call_soon_threadsafe(self.state.expire_drain)
                end = time.monotonic() + 0.5
                while self.state.inflight > 0 and time.monotonic() < end:
                    time.sleep(0.01)
            # Not super().handle_exit(): uvicorn would record the signal and re-raise it once shut down,
            # so a clean drain would end with death by SIGTERM (exit -15) instead of exit code 0.
            self.should_exit = True

        threading.Thread(target=drain, daemon=True).start()


def serve(model_dir: str | Path, cfg: ServeConfig) -> None:
    t0 = time.perf_counter()
    app = create_app(model_dir, cfg)
    state = app.server
    config = uvicorn.Config(app, host=cfg.host, port=cfg.port, log_level="warning", access_log=False,
                            timeout_graceful_shutdown=int(cfg.drain_s) + 1, lifespan="on",
                            # a WebSocket message far past --stream-max-message-kb is refused (1009) by uvicorn
                            # before it is buffered (its default is 16 MB); stream.py closes the rest with a reason
                            ws_max_size=cfg.stream_max_message_bytes + (64 << 10),
                            http=limited_protocol(cfg.max_header_bytes, cfg.header_timeout_s),
                            ssl_certfile=cfg.tls_cert, ssl_keyfile=cfg.tls_key)
    server = DrainingServer(config, state, cfg.drain_s)
    original_startup = server.startup

    async def startup(sockets=None) -> None:
        await original_startup(sockets)
        # Everything loaded so far (the model, onnxruntime, FastAPI...) lives as long as the process. Frozen
        # out of the collector's reach, it is no longer walked by every full collection: those took up to
        # 34 ms mid-request, and the network-bound benchmark's p99 fell from 65-70 ms to 50-53 ms.
        gc.collect()
        gc.freeze()
        b = state.backend
        note = f"; {state.batching_note}" if state.batching_note else ""
        scheme = "https" if cfg.tls_cert else "http"
        print(f"polyfuse serve: {b.name} ({b.platform}) on {scheme}://{cfg.host}:{cfg.port} ready in "
              f"{time.perf_counter() - t0:.2f} s; max batch {state.batcher.max_batch}, max delay {cfg.max_delay_ms:g} ms"
              f"{note}", file=sys.stderr, flush=True)

    server.startup = startup  # type: ignore[method-assign]
    server.run()

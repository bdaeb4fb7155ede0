"""``/v2/stream``: predictions over live timeseries/audio streams, on a WebSocket.

Protocol (JSON text messages):

    client: {"start": {"hop": 8, "context": {"age": 41}}}    # once; "clock" optional
    client: {"samples": {"accel": [[0.1, 0.2], ...]}}          # any number, any sizes
    server: {"prediction": {...}, "window_end": 64}            # every `hop` samples once windows are full
    server: {"error": "..."}                                   # a bad message; the stream goes on

Windows live in polyfuse.preprocess.streams.StreamWindows (one per connection, freed on disconnect); each goes
through the server's normal path (preprocessing lane, then the dynamic batcher), off the event loop.

Limits per connection (ServeConfig): a message over ``stream_max_message_bytes`` closes with 1009;
``stream_idle_s`` seconds without a client message closes with 1001; at most ``stream_max_pending``
windows wait for the model: a client sending faster than predictions are made has the oldest waiting
windows dropped (it gets the latest ones) and the next prediction says ``"dropped": n`` (in total).
At most ``stream_max_open`` streams are open at once; one more is closed with 1013 (try again later).
With API keys configured the key goes in ``x-api-key`` / ``Authorization: Bearer`` or a ``key``
query parameter; without it the handshake is refused (close 1008, HTTP 403).
"""
from __future__ import annotations

import asyncio
import itertools
import json
import time
from typing import Any

from fastapi import FastAPI, WebSocket
from prometheus_client import Gauge

from polyfuse.errors import BadInputError
from polyfuse.preprocess.streams import StreamWindows
from polyfuse.serve.access import Access
from polyfuse.serve.guard import api_key
from polyfuse.serve.requests import RequestError
from polyfuse.serve.state import prediction_rows

PATHS = ("/v2/stream", "/stream")
_IDS = itertools.count(1)


class _Closed(Exception):
    """The connection is over (client gone, idle, or a fatal error already sent)."""


class Session:
    def __init__(self, ws: WebSocket, state: Any, key_id: str | None = None):
        self.ws, self.state, self.cfg, self.key_id = ws, state, state.cfg, key_id
        self.id = f"stream-{next(_IDS):06x}"
        self.lock = asyncio.Lock()
        self.windows: StreamWindows | None = None
        self.due = asyncio.Event()

    async def send(self, body: dict) -> None:
        async with self.lock:
            await self.ws.send_text(json.dumps(body))

    async def close(self, code: int, reason: str) -> None:
        async with self.lock:
            await self.ws.close(code=code, reason=reason[:120])
        raise _Closed

    async def message(self) -> Any:
        """The next JSON message; None when it was bad (the error already sent)."""
        try:
            msg = await asyncio.wait_for(self.ws.receive(), self.cfg.stream_idle_s)
        except asyncio.TimeoutError:
            await self.close(1001, f"idle for {self.cfg.stream_idle_s:g} s")
        if msg["type"] == "websocket.disconnect":
            raise _Closed
        data = msg.get("text") if msg.get("text") is not None else msg.get("bytes") or b""
        if len(data) > self.cfg.stream_max_message_bytes:
            await self.close(1009, f"message over {self.cfg.stream_max_message_bytes} bytes")
        try:
            body = json.loads(data)
        except (ValueError, UnicodeDecodeError):
            await self.send({"error": "not a JSON message"})
            return None
        if not isinstance(body, dict) or len(body) != 1 or next(iter(body)) not in ("start", "samples"):
            await self.send({"error": 'expected {"start": {...}} or {"samples": {input: [[...], ...]}}'})
            return None
        return body

    async def read(self) -> None:
        while True:
            body = await self.message()
            if body is None:
                continue
            try:
                if "start" in body:
                    start = body["start"] if isinstance(body["start"], dict) else {}
                    if self.windows is not None:
                        raise BadInputError("the stream has already started")
                    self.windows = StreamWindows(self.state.backend.spec, start.get("hop"), start.get("context") or {},
                                                 start.get("clock"), max_pending=self.cfg.stream_max_pending)
                    continue
                if self.windows is None:
                    raise BadInputError('send {"start": {"hop": N}} first')
                if not isinstance(body["samples"], dict):
                    raise BadInputError("samples: expected an object {input: [[...], ...]}")
                for name, samples in body["samples"].items():
                    self.windows.push(name, samples)
                if self.windows.pending:
                    self.due.set()
            except BadInputError as e:
                await self.send({"error": str(e)})

    async def predict(self) -> None:
        sent_dropped = 0
        while True:
            await self.due.wait()
            self.due.clear()
            assert self.windows is not None
            due = list(self.windows.ready_with_ends())
            if not due:
                continue
            records = [r for _, r in due]
            who = {"request_id": f"{self.id}-{due[-1][0]}", "key_id": self.key_id, "started": time.perf_counter()}
            try:  # the audit log (--audit-log) records stream predictions like requests
                probs, labels, _ = await self.state.predict(lambda budget: (records, None), 0,
                                                            time.monotonic() + self.cfg.timeout_s, who)
            except RequestError as e:
                await self.send({"error": e.message})
                continue
            except asyncio.TimeoutError:
                await self.send({"error": f"no prediction within {self.cfg.timeout_s:g} s"})
                continue
            rows = prediction_rows(self.state.backend, self.state.classes, probs, labels)
            for (end, _), row in zip(due, rows):
                out: dict[str, Any] = {"prediction": row, "window_end": end}
                if self.windows.dropped != sent_dropped:
                    out["dropped"] = sent_dropped = self.windows.dropped
                await self.send(out)

    async def run(self) -> None:
        tasks = [asyncio.create_task(self.read()), asyncio.create_task(self.predict())]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for t in done:
                if t.exception() is not None and not isinstance(t.exception(), _Closed):
                    raise t.exception()  # type: ignore[misc]
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


def add_stream_route(app: FastAPI, state: Any) -> None:
    """Register the WebSocket endpoint and the open-stream count (``app.state.open_streams`` and the
    ``polyfuse_open_streams`` gauge)."""
    cfg = state.cfg
    access = Access(cfg.api_key, cfg.api_keys_file, cfg.rate_limit)
    gauge = Gauge("polyfuse_open_streams", "WebSocket streams open", registry=state.metrics.registry)
    app.state.open_streams = 0

    async def stream(ws: WebSocket) -> None:
        key_id = None
        if access.required:
            headers = {k.lower(): v for k, v in ws.headers.items()}
            key_id = access.identify(api_key(headers) or ws.query_params.get("key", ""))
            if key_id is None:
                await ws.close(code=1008, reason="missing or wrong API key")
                return
        await ws.accept()
        if app.state.open_streams >= cfg.stream_max_open:  # accepted first, so the client sees why
            await ws.close(code=1013, reason=f"{cfg.stream_max_open} streams are open; try again later")
            return
        app.state.open_streams += 1
        gauge.inc()
        try:
            await Session(ws, state, key_id).run()
        except _Closed:
            pass
        finally:
            app.state.open_streams -= 1
            gauge.dec()

    for path in PATHS:
        app.add_api_websocket_route(path, stream)

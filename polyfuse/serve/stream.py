"""``/v2/stream``: predictions over live timeseries/audio streams, on a WebSocket.

Protocol (JSON text messages):

    client: {"start": {"hop": 8, "context": {"age": 41}}}    # once; "clock" optional
    client: {"samples": {"accel": [[0.1, 0.2], ...]}}          # any number, any sizes
    server: {"prediction": {...}, "window_end": 64}            # every `hop` samples once windows are full
    server: {"error": "..."}                                   # a bad message; the stream goes on

A stream is a client of the server like any other: its ``context`` is cleaned like a /predict record
(serve/requests.py ``clean_record``: base64 for files, never a path on the server), each window it has
predicted takes a token from its key's ``--rate-limit`` bucket (the one /predict uses), and the
handshake is checked for its ``Origin`` and key (serve/stream_access.py).

Windows live in polyfuse.preprocess.streams.StreamWindows (one per connection, freed on disconnect).
Each message is parsed and cut into windows in a preprocessing lane (messages over
``HEAVY_MESSAGE_BYTES`` parsed in the worker process, serve/heavy.py), never on the event loop; only the windows that can be
predicted are cut, and a message making more than ``MAX_DUE_PER_MESSAGE`` windows due is refused.
Each window then goes through the server's normal path (preprocessing lane, then the dynamic batcher).

Limits per connection (ServeConfig): a message over ``stream_max_message_bytes`` closes with 1009;
``stream_idle_s`` seconds without a client message closes with 1001; at most ``stream_max_pending``
windows wait for the model: a client sending faster than predictions are made has the oldest waiting
windows dropped (it gets the latest ones) and the next prediction says ``"dropped": n`` (in total).
At most ``stream_max_open`` streams are open at once; one more is closed with 1013 (try again later).
"""
from __future__ import annotations

import asyncio
import itertools
import json
import math
import time
from typing import Any

from fastapi import FastAPI, WebSocket
from prometheus_client import Gauge
from starlette.websockets import WebSocketDisconnect

from polyfuse.errors import BadInputError
from polyfuse.preprocess.streams import STREAM_TYPES, StreamWindows
from polyfuse.serve.guard import api_key
from polyfuse.serve.requests import RequestError, clean_record
from polyfuse.serve.state import prediction_rows
from polyfuse.serve.stream_parse import parse_message
from polyfuse.serve.stream_access import (
    SUBPROTOCOL,
    offered_subprotocols,
    origin_allowed,
    subprotocol_key,
)

PATHS = ("/v2/stream", "/stream")
HEAVY_MESSAGE_BYTES = 64 << 10  # bigger messages are parsed in the heavy lane, away from /predict's
MAX_DUE_PER_MESSAGE = 10_000  # windows one message may make due (hop 1 and 500k samples would be 500k)
NOTICE_EVERY_S = 1.0  # rate-limit notices: at most one a second, each with the count since the last
_IDS = itertools.count(1)
_USAGE = 'expected {"start": {...}} or {"samples": {input: [[...], ...]}}'


class _Closed(Exception):
    """The connection is over (client gone, idle, or a fatal error already sent)."""


def clean_context(raw: Any, spec: Any, cfg: Any) -> dict:
    """A stream's ``context`` cleaned as /predict cleans a record (one implementation); errors name the field."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise BadInputError("start.context: expected an object of the static inputs' values")
    streamed = {n for n, c in spec.inputs.items() if c.type in STREAM_TYPES}
    record = {}
    for name, value in raw.items():
        if name in streamed or any(spec.column(n) == name for n in streamed):
            raise BadInputError(f"start.context: field '{name}' is a stream input; send it in samples", column=name)
        record[spec.column(name) if name in spec.inputs else name] = value
    try:
        return clean_record(record, 0, spec, cfg.budget())
    except RequestError as e:
        detail = e.message.removeprefix("record 0, ").removeprefix("record 0: ")
        raise BadInputError(f"start.context: {detail}", column=e.field) from None


class Session:
    def __init__(self, ws: WebSocket, state: Any, key_id: str | None = None, who: str | None = None):
        self.ws, self.state, self.cfg, self.key_id = ws, state, state.cfg, key_id
        self.who = who or key_id or "?"  # the rate-limit bucket: the key's id, else the client's address
        self.id = f"stream-{next(_IDS):06x}"
        self.lock = asyncio.Lock()
        self.windows: StreamWindows | None = None
        self.due = asyncio.Event()
        self.limited, self.noticed = 0, 0.0  # windows refused by the rate limit since the last notice
        self.budget, self.refilled = float(self.cfg.stream_max_message_bytes), time.monotonic()

    async def send(self, body: dict) -> None:
        try:
            async with self.lock:
                await self.ws.send_text(json.dumps(body))
        except (OSError, RuntimeError, WebSocketDisconnect):  # the client left (uvicorn's ClientDisconnected
            raise _Closed from None  # is an OSError): nobody to answer, and nothing for the server log

    async def close(self, code: int, reason: str) -> None:
        try:
            async with self.lock:
                await self.ws.close(code=code, reason=reason[:120])
        except (OSError, RuntimeError, WebSocketDisconnect):
            pass
        raise _Closed

    async def receive(self) -> bytes | str:
        """The next message's data (size checked); closes the stream when idle, too big, or gone."""
        try:
            msg = await asyncio.wait_for(self.ws.receive(), self.cfg.stream_idle_s)
        except asyncio.TimeoutError:
            await self.close(1001, f"idle for {self.cfg.stream_idle_s:g} s")
        except (OSError, RuntimeError, WebSocketDisconnect):
            raise _Closed from None
        if msg["type"] == "websocket.disconnect":
            raise _Closed
        data = msg.get("text") if msg.get("text") is not None else msg.get("bytes") or b""
        if len(data) > self.cfg.stream_max_message_bytes:
            await self.close(1009, f"message over {self.cfg.stream_max_message_bytes} bytes")
        return data

    def handle(self, data: bytes | str) -> str | None:
        """Parse one message and apply it (start, or samples into the windows): in a preprocessing lane,
        off the event loop. Returns the error to send, or None."""
        kind, parsed = parse_message(data)
        return parsed if kind == "error" else self.apply(parsed)

    def apply(self, body: Any) -> str | None:
        """Apply one parsed message; the error to send, or None."""
        if not isinstance(body, dict) or len(body) != 1 or next(iter(body)) not in ("start", "samples"):
            return _USAGE
        try:
            if "start" in body:
                self._start(body["start"])
            elif self.windows is None:
                raise BadInputError('send {"start": {"hop": N}} first')
            elif not isinstance(body["samples"], dict):
                raise BadInputError("samples: expected an object {input: [[...], ...]}")
            else:
                for name, samples in body["samples"].items():
                    self.windows.push(name, samples)
        except BadInputError as e:
            return str(e)
        return None

    def _start(self, start: Any) -> None:
        if self.windows is not None:
            raise BadInputError("the stream has already started")
        start = start if isinstance(start, dict) else {}
        spec = self.state.backend.spec
        context = clean_context(start.get("context"), spec, self.cfg)
        self.windows = StreamWindows(spec, start.get("hop"), context, start.get("clock"),
                                     max_pending=self.cfg.stream_max_pending, max_due=MAX_DUE_PER_MESSAGE)

    async def pace(self, size: int) -> None:
        """Backpressure: at most ``stream_max_bytes_per_s`` of messages parsed a second (a message of the
        largest size may come at once). Past it the next message is read later, so TCP slows the client
        down; parsing holds the GIL, and unpaced streams starve /predict and the liveness probe."""
        rate, now = self.cfg.stream_max_bytes_per_s, time.monotonic()
        self.budget = min(float(self.cfg.stream_max_message_bytes), self.budget + (now - self.refilled) * rate) - size
        self.refilled = now
        if self.budget < 0:
            await asyncio.sleep(-self.budget / rate)

    async def read(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            data = await self.receive()
            await self.pace(len(data))
            try:
                error = await self._handle(loop, data)
            except RuntimeError:  # the lanes were shut down: the server is stopping
                await self.close(1001, "the server is shutting down")
            if error is not None:
                await self.send({"error": error})
            elif self.windows is not None and self.windows.pending:
                self.due.set()

    async def _handle(self, loop: asyncio.AbstractEventLoop, data: bytes | str) -> str | None:
        """A large message is parsed in the worker process (serve/heavy.py) and applied on the heavy thread;
        a small one parsed and applied on a preprocessing thread."""
        heavy = len(data) > HEAVY_MESSAGE_BYTES
        if heavy and self.state.heavy_process is not None:
            try:
                kind, parsed = await self.state.heavy_process.parse_message(data)
            except RequestError as e:  # the worker stopped
                return e.message
            return parsed if kind == "error" else await loop.run_in_executor(self.state.heavy, self.apply, parsed)
        return await loop.run_in_executor(self.state.heavy if heavy else self.state.prep, self.handle, data)

    def _throttle(self, due: list) -> list:
        """The windows this key's rate limit lets through (the latest first), counting the others."""
        access, kept = self.state.access, []
        for item in reversed(due):
            if access.throttle(self.who) == 0.0:
                kept.append(item)
            else:
                self.limited += 1
        return kept[::-1]

    async def _notice(self) -> None:
        """Say that windows went unpredicted for the rate limit, and when a token is back (not silently)."""
        now = time.monotonic()
        if not self.limited or now - self.noticed < NOTICE_EVERY_S:
            return
        rate = self.state.access.rate_of(self.who) or 1.0
        retry = max(1, math.ceil(1.0 / rate))
        count, self.limited, self.noticed = self.limited, 0, now
        await self.send({"error": f"rate limit: {count} window(s) not predicted, over this key's limit of "
                                  f"{rate:g} predictions/s; retry after {retry} s", "rate_limited": count,
                         "retry_after": retry})

    async def predict(self) -> None:
        sent_dropped = 0
        while True:
            await self.due.wait()
            self.due.clear()
            assert self.windows is not None
            due = self._throttle(list(self.windows.ready_with_ends()))
            await self._notice()
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


def _handshake(ws: WebSocket, state: Any) -> tuple[str | None, str | None, str | None]:
    """(refusal reason or None, key id, subprotocol to accept) of a stream's handshake."""
    cfg, access = state.cfg, state.access
    headers = {k.lower(): v for k, v in ws.headers.items()}
    if not origin_allowed(headers.get("origin"), headers.get("host"), ws.url.scheme == "wss", cfg.allowed_origins):
        return "origin not allowed (see --allowed-origins)", None, None
    offered = offered_subprotocols(headers)
    key_id = None
    if access.required:
        presented = api_key(headers) or subprotocol_key(offered) or ws.query_params.get("key", "")
        key_id = access.identify(presented)
        if key_id is None:
            return "missing or wrong API key", None, None
    return None, key_id, SUBPROTOCOL if SUBPROTOCOL in offered else None


def add_stream_route(app: FastAPI, state: Any) -> None:
    """Register the WebSocket endpoint and the open-stream count (``app.state.open_streams`` and the
    ``polyfuse_open_streams`` gauge)."""
    cfg = state.cfg
    gauge = Gauge("polyfuse_open_streams", "WebSocket streams open", registry=state.metrics.registry)
    app.state.open_streams = 0

    async def stream(ws: WebSocket) -> None:
        refused, key_id, subprotocol = _handshake(ws, state)
        if refused is not None:  # closed before accept: the client sees HTTP 403 (close code 1008)
            await ws.close(code=1008, reason=refused)
            return
        await ws.accept(subprotocol=subprotocol)
        if app.state.open_streams >= cfg.stream_max_open:  # accepted first, so the client sees why
            await ws.close(code=1013, reason=f"{cfg.stream_max_open} streams are open; try again later")
            return
        app.state.open_streams += 1
        gauge.inc()
        try:
            await Session(ws, state, key_id, key_id or (ws.client.host if ws.client else None)).run()
        except _Closed:
            pass
        finally:
            app.state.open_streams -= 1
            gauge.dec()

    for path in PATHS:
        app.add_api_websocket_route(path, stream)



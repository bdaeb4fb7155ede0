"""ASGI middleware in front of every request: request ids, API keys and rate limits (serve/access.py),
the body limit, admission control, metrics and the access log.

/predict and /infer bodies are read here in full (bounded in size and by the request's deadline)
before an admission slot is taken: a client that sends slowly holds a connection, never a slot,
and one that has not finished sending by the deadline gets 408.
"""
from __future__ import annotations

import asyncio
import itertools
import json
import math
import os
import time
from typing import TYPE_CHECKING, Any, Awaitable, Callable, TypeVar

from polyfuse.serve.observability import log_access
from polyfuse.serve.requests import RequestError

if TYPE_CHECKING:
    from polyfuse.serve.state import ServerState

OPEN_PATHS = ("/v2/health/", "/static/", "/schema", "/favicon.ico")  # no API key: probes and the page itself
T = TypeVar("T")
ADMITTED = ("predict", "v2_infer")  # the endpoints that preprocess and run the model
# request ids: a random prefix per process and a counter (uuid4 per request reads the OS's random source
# on the event loop, a system call that gives the GIL away under load)
_ID_PREFIX, _ID_COUNTER = os.urandom(4).hex(), itertools.count(1)
CLIENT_ID_CHARS = 128  # a client's x-request-id is kept (audit log, access log) up to this many characters


def client_request_id(value: str | None) -> str | None:
    """A client's ``x-request-id`` as logs keep it: printable ASCII (anything else escaped as \\xNN),
    cut to CLIENT_ID_CHARS with the original length named, so a 60 KB header costs a log 128 bytes.
    It is the client's label, never trusted as unique: the server's own id names the request."""
    if not value:
        return None
    text = "".join(c if " " <= c <= "~" and c != "\\" else f"\\x{ord(c):02x}" for c in value[:CLIENT_ID_CHARS])
    if len(text) > CLIENT_ID_CHARS or len(value) > CLIENT_ID_CHARS:
        text = text[:CLIENT_ID_CHARS - 24] + f"...[{len(value)} chars]"
    return text


class BodyTooLarge(RequestError):
    """The body grew past the limit while being read (chunked, or a Content-Length that lied)."""

    def __init__(self, limit: int):
        super().__init__(413, f"request body is over the limit of {limit} bytes")


def endpoint(path: str) -> str:
    """The metrics label of a path."""
    if path.startswith("/v2/health"):
        return "health"
    if path.endswith("/infer"):
        return "v2_infer"
    if path.startswith("/v2"):
        return "v2_metadata"
    return {"/predict": "predict", "/metrics": "metrics", "/": "page", "/schema": "schema"}.get(path, "other")


def api_key(headers: dict[str, str]) -> str:
    """The key a request presents: ``x-api-key``, or an ``Authorization`` bearer token (the scheme name
    is case-insensitive, RFC 9110 section 11.1)."""
    if headers.get("x-api-key"):
        return headers["x-api-key"]
    scheme, _, token = headers.get("authorization", "").strip().partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


async def within(work: Awaitable[T], seconds: float) -> T:
    """``work`` with a deadline, raising asyncio.TimeoutError past it. Python 3.11+ runs it in this task
    (cheaper, and cancellable by the drain like the rest of the handler); wait_for wraps it in a task of
    its own, whose stored exception and traceback formed a reference cycle that kept a refused 16 MB
    body (and its copies) alive until a full garbage collection."""
    if hasattr(asyncio, "timeout"):
        async with asyncio.timeout(max(seconds, 0.0)):
            return await work
    return await asyncio.wait_for(work, max(seconds, 0.0))


async def _read(receive: Callable, limit: int) -> bytes | None:
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(limit)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def read_body(receive: Callable, limit: int, deadline: float) -> bytes | None:
    """The whole body, or None when the client disconnected; raises BodyTooLarge past ``limit`` bytes
    and asyncio.TimeoutError past ``deadline`` (time.monotonic())."""
    return await within(_read(receive, limit), deadline - time.monotonic())


def _replay(body: bytes, receive: Callable) -> Callable:
    """A receive() that hands the application the body already read, then the connection's own events."""
    sent = False

    async def replay() -> dict:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def _name_request(scope: dict, headers: dict[str, str]) -> str:
    """The ids of a request in ``scope["state"]``; returns the one echoed to the client. The server's own
    id names the request in the audit log; a client's id is echoed back as before (x-request-id, the
    answer's request_id) and logged beside it, capped."""
    server_id = f"{_ID_PREFIX}{next(_ID_COUNTER):08x}"
    request_id = headers.get("x-request-id") or server_id
    scope.setdefault("state", {}).update(request_id=request_id, server_request_id=server_id,
                                         client_request_id=client_request_id(headers.get("x-request-id")))
    return request_id


class Guard:
    """The middleware; ``server`` is the ServerState (what ``create_app(...).server`` gives callers)."""

    def __init__(self, app: Any, state: "ServerState"):
        self.app, self.state = app, state
        self.server = state
        self.access = state.access  # shared with /v2/stream (serve/stream.py), so a key has one rate limit

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        st, cfg = self.state, self.state.cfg
        started = time.perf_counter()
        deadline = time.monotonic() + cfg.timeout_s
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        request_id = _name_request(scope, headers)
        scope["state"].update(deadline=deadline, started=started, key_id=None)
        kind = endpoint(scope["path"])
        status_box = {"status": 500, "started": False}

        async def send_wrapper(message: dict) -> None:
            if message["type"] == "http.response.start":
                status_box["status"], status_box["started"] = message["status"], True
                message.setdefault("headers", []).append((b"x-request-id", request_id.encode()))
            await send(message)

        async def reject(status: int, error: str, extra: dict | None = None) -> None:
            body = json.dumps({"error": error, "record": None, "field": None}).encode()
            hdrs = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
            hdrs += [(k.encode(), v.encode()) for k, v in (extra or {}).items()]
            await send_wrapper({"type": "http.response.start", "status": status, "headers": hdrs})
            await send_wrapper({"type": "http.response.body", "body": body})

        st.metrics.inflight.inc()
        st.inflight += 1
        detail, admitted = None, False
        try:
            refused = self._refusal(scope, headers, kind)
            if refused is not None:
                status, error, extra, detail = refused
                return await reject(status, error, extra)
            if kind in ADMITTED:
                try:
                    body = await read_body(receive, cfg.max_body_bytes, deadline)
                except BodyTooLarge as e:
                    detail = "body too large"
                    return await reject(413, e.message)
                except asyncio.TimeoutError:
                    detail = "body too slow"
                    return await reject(408, f"the request body did not arrive within {cfg.timeout_s:g} s")
                if body is None:
                    detail, status_box["status"] = "client disconnected", 499
                    return
                if st.working >= cfg.queue_size:
                    # admission once the body is here: preprocessing, not the model, is what saturates first,
                    # so the cap covers the rest of a request's stay
                    detail = "at capacity"
                    return await reject(503, "the server is at capacity; retry shortly", {"retry-after": "1"})
                admitted = True
                st.working += 1
                receive = _replay(body, receive)
            await self.app(scope, receive, send_wrapper)
        finally:
            st.inflight -= 1
            if admitted:  # only what was counted in is counted out (a refusal must not open a slot)
                st.working -= 1
            self._record(scope, kind, status_box["status"], started, detail)

    def _refusal(self, scope: dict, headers: dict[str, str], kind: str) -> tuple[int, str, dict | None, str] | None:
        """Why a request is refused before its body is read (status, error, headers, log detail), or None."""
        path, cfg = scope["path"], self.state.cfg
        key_id = None
        if self.access.required and not path.startswith(OPEN_PATHS) and path != "/":
            key_id = scope["state"]["key_id"] = self.access.identify(api_key(headers))
            if key_id is None:
                return (401, "missing or wrong API key: send it in the x-api-key header", {"www-authenticate": "Bearer"},
                        "missing or wrong API key")
        if kind in ADMITTED:  # before the body is read: a throttled client costs no more than its headers
            wait = self.access.throttle(key_id or (scope.get("client") or ["?"])[0])
            if wait > 0:
                return (429, "too many requests for this key's rate limit; retry after the Retry-After seconds",
                        {"retry-after": str(max(1, math.ceil(wait)))}, f"rate limited ({key_id or 'client'})")
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > cfg.max_body_bytes:
            return 413, f"request body of {length} bytes is over the limit of {cfg.max_body_bytes}", None, "body too large"
        return None

    def _record(self, scope: dict, kind: str, status: int, started: float, detail: str | None) -> None:
        """Metrics and the access log line of a finished request."""
        st = self.state
        st.metrics.inflight.dec()
        took = time.perf_counter() - started
        st.metrics.requests.labels(kind, str(status)).inc()
        st.metrics.latency.labels(kind).observe(took)
        if kind not in ("health", "metrics"):
            state = scope["state"]  # the capped client id, never a client's 60 KB header
            log_access(st.log, state["client_request_id"] or state["server_request_id"], scope["method"], scope["path"],
                       status, took, (scope.get("client") or [None])[0], detail)

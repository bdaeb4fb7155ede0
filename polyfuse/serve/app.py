"""The FastAPI application: /predict (JSON or multipart), the KServe V2 endpoints (serve/v2.py),
/metrics, health, and the web page. Request handling: limits, auth and admission (serve/guard.py)
-> parse -> preprocess in a thread lane -> dynamic batcher -> answer (serve/state.py); every client
error is a 4xx JSON body naming the record and field, and nothing a client sends can take the server
down.
"""
from __future__ import annotations

import asyncio
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Awaitable, Callable

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.requests import ClientDisconnect

from polyfuse.serve.batching import Batcher
from polyfuse.serve.config import ServeConfig
from polyfuse.serve.guard import Guard, within
from polyfuse.serve.observability import flush_access_log
from polyfuse.serve.page import add_page_routes
from polyfuse.serve.requests import RequestError, json_records, parse_json
from polyfuse.serve.state import ServerState, load_backend, prediction_rows
from polyfuse.serve.stream import add_stream_route
from polyfuse.serve.v2 import add_v2_routes, v2_error
from polyfuse.threads import single_threaded_blas


def _error(status: int, message: str, v2: bool, headers: dict | None = None) -> JSONResponse:
    body = {"error": message} if v2 else {"error": message, "record": None, "field": None}
    return JSONResponse(body, status_code=status, headers=headers)


def create_app(model_dir: str | Path, cfg: ServeConfig | None = None,
               batcher: Callable[..., Batcher] = Batcher) -> FastAPI:
    """The app over one model; ``batcher`` as in ``ServerState`` (Ray Serve passes its own)."""
    cfg = cfg or ServeConfig()
    single_threaded_blas()  # requests preprocess in parallel threads; see polyfuse.threads
    backend = load_backend(Path(model_dir), cfg)
    state = ServerState(backend, cfg, batcher)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        state.start()
        yield
        await state.stop()
        flush_access_log()

    app = FastAPI(title=f"polyfuse: {backend.name}", version="1", lifespan=lifespan,
                  description="Predictions from a polyfuse fusion model: `/predict` (JSON or multipart) and the "
                              "KServe V2 / Open Inference Protocol under `/v2`.")
    app.state.server = state

    guarded = _guarded(state, cfg)
    _add_predict_route(app, state, cfg, guarded)
    add_v2_routes(app, state, guarded)
    add_stream_route(app, state)  # /v2/stream (serve/stream.py)

    @app.get("/metrics", summary="Prometheus metrics")
    async def metrics() -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    add_page_routes(app, backend, state.classes)  # /, /static, /schema (serve/page.py)
    return Guard(app, state)  # type: ignore[return-value]


def _guarded(state: ServerState, cfg: ServeConfig) -> Callable[..., Awaitable[Response]]:
    """The wrapper of every /predict and /infer handler."""

    async def guarded(request: Request, handler: Callable[[], Awaitable[Response]], v2: bool = False) -> Response:
        """Run a /predict or /infer handler within the request's deadline, tracked for the drain, with
        every failure a client can cause answered as a 4xx/503/504 in the endpoint's error format."""
        task = asyncio.current_task()
        state.handlers.add(task)
        try:
            return await within(handler(), request.scope["state"]["deadline"] - time.monotonic())
        except asyncio.CancelledError:
            if not state.drain_expired or task is None:
                raise
            task.uncancel()  # cancelled by the drain deadline, not by the client: answer it
            return _error(503, "the server is shutting down and could not finish this request in time; retry "
                               "(another replica will answer)", v2, {"retry-after": "1"})
        except RequestError as e:
            if v2:
                return v2_error(e)
            return JSONResponse(e.body(), status_code=e.status, headers={"retry-after": "1"} if e.status == 503 else None)
        except asyncio.TimeoutError:
            return _error(504, f"no answer within {cfg.timeout_s:g} s; the server is overloaded or the request too "
                               "large", v2)
        except ClientDisconnect:  # nobody is left to read an answer; not a server error
            return _error(400, "client disconnected", v2)
        finally:
            state.handlers.discard(task)

    return guarded


def _add_predict_route(app: FastAPI, state: ServerState, cfg: ServeConfig,
                       guarded: Callable[..., Awaitable[Response]]) -> None:
    backend = state.backend

    @app.post("/predict", summary="Predict from JSON records (base64 for binary inputs) or one multipart form")
    async def predict(request: Request) -> Response:
        async def handle() -> Response:
            ctype, raw = request.headers.get("content-type", ""), None
            if ctype.startswith("multipart/form-data"):
                form = await _form_record(request)
                size = sum(len(v) for v in form["records"][0].values() if isinstance(v, bytes))
                parse = lambda budget: (json_records(form, backend.spec, cfg, budget), None)  # noqa: E731
            elif ctype.startswith("application/json"):
                raw = await request.body()
                size = len(raw)
                parse = lambda budget: (json_records(parse_json(raw, backend.spec, cfg), backend.spec, cfg,  # noqa: E731
                                                     budget), None)
            else:
                raise RequestError(415, f"unsupported content type {ctype or 'none'!r}: send application/json "
                                        "or multipart/form-data")
            probs, labels, _ = await state.predict(parse, size, request.scope["state"]["deadline"],
                                                  request.scope["state"], raw=raw)
            return JSONResponse({"model": backend.name, "request_id": request.state.request_id,
                                 "predictions": prediction_rows(backend, state.classes, probs, labels)})

        return await guarded(request, handle)


async def _form_record(request: Request) -> dict[str, Any]:
    """One record from a multipart form: files for binary inputs (empty file = missing), fields for the rest."""
    try:
        form = await request.form()
    except Exception as e:  # python-multipart raises several unrelated types for a malformed body
        raise RequestError(400, f"malformed multipart body ({type(e).__name__})") from None
    record: dict[str, Any] = {}
    for key, value in form.multi_items():
        if hasattr(value, "read"):
            data = await value.read()
            record[key] = data if data else None
        else:
            record[key] = value if value != "" else None
    return {"records": [record]}

"""The FastAPI application: /predict (JSON or multipart), the KServe V2 endpoints, /metrics,
health, and the web page. Request handling: limits and auth (ASGI middleware) -> parse ->
preprocess in a thread pool -> dynamic batcher -> answer; every client error is a 4xx JSON body
naming the record and field, and nothing a client sends can take the server down.
"""
from __future__ import annotations

import asyncio
import hmac
import itertools
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.requests import ClientDisconnect

from polyfuse.artifact import sha256
from polyfuse.errors import BadInputError
from polyfuse.preprocess.pipeline import Decoded
from polyfuse.preprocess.targets import decode_outputs
from polyfuse.runtime import MODALITY_WEIGHTS
from polyfuse.serve import protocol
from polyfuse.serve.batching import Batcher, batching_pays
from polyfuse.serve.config import ServeConfig
from polyfuse.serve.observability import Metrics, access_logger, flush_access_log, log_access
from polyfuse.serve.requests import RequestError, json_records
from polyfuse.threads import single_threaded_blas, usable_cpus

STATIC = Path(__file__).parent / "static"
OPEN_PATHS = ("/v2/health/", "/static/", "/schema", "/favicon.ico")  # no API key: probes and the page itself
# request ids: a random prefix per process and a counter (uuid4 per request reads the OS's random source
# on the event loop, a system call that gives the GIL away under load)
_ID_PREFIX, _ID_COUNTER = os.urandom(4).hex(), itertools.count(1)


@dataclass
class Backend:
    """What the server needs of a model, whichever runtime executes it."""

    name: str
    version: str
    digest: str
    platform: str
    spec: Any
    preprocessor: Any
    run_arrays: Callable[[dict], dict]


def load_backend(path: Path, cfg: ServeConfig) -> Backend:
    """ONNX Runtime when the artifact has an ONNX export (torch is then never imported), else torch."""
    digest = sha256(path / "weights.safetensors") if (path / "weights.safetensors").exists() else ""
    use_onnx = cfg.runtime == "onnx" or (cfg.runtime == "auto" and (path / "model.onnx").exists())
    if use_onnx:
        from polyfuse.runtime import Runtime

        rt = Runtime(path, variant=cfg.variant, threads=cfg.threads, key_env=cfg.key_env, verify_key=cfg.verify_key)
        return Backend(path.name, "1", sha256(rt.model_file), "polyfuse_onnxruntime", rt.spec, rt.preprocessor,
                       rt.run_arrays)
    from polyfuse.estimator import load, set_threads

    set_threads(cfg.threads)
    model = load(path, key_env=cfg.key_env, verify_key=cfg.verify_key)
    return Backend(path.name, "1", digest, "polyfuse_pytorch", model.spec, model.preprocessor, model.run_arrays)


class Guard:
    """ASGI middleware: request ids, body size limit, API key, metrics and the access log."""

    def __init__(self, app: Any, state: "ServerState"):
        self.app, self.state = app, state
        self.server = state  # what `create_app(...).server` gives callers

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        st, cfg = self.state, self.state.cfg
        started = time.perf_counter()
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        request_id = headers.get("x-request-id") or f"{_ID_PREFIX}{next(_ID_COUNTER):08x}"
        scope.setdefault("state", {})["request_id"] = request_id
        path = scope["path"]
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
            length = headers.get("content-length")
            if cfg.api_key and not path.startswith(OPEN_PATHS) and path != "/":
                given = headers.get("x-api-key") or headers.get("authorization", "").removeprefix("Bearer ").strip()
                if not hmac.compare_digest(given.encode(), cfg.api_key.encode()):
                    detail = "missing or wrong API key"
                    return await reject(401, "missing or wrong API key: send it in the x-api-key header",
                                        {"www-authenticate": "Bearer"})
            if length is not None and length.isdigit() and int(length) > cfg.max_body_bytes:
                detail = "body too large"
                return await reject(413, f"request body of {length} bytes is over the limit of {cfg.max_body_bytes}")
            if _endpoint(path) in ("predict", "v2_infer"):
                if st.working >= cfg.queue_size:
                    # admission control before the body is read or decoded: preprocessing, not the model,
                    # is what saturates first, so the cap covers a request's whole stay
                    detail = "at capacity"
                    return await reject(503, "the server is at capacity; retry shortly", {"retry-after": "1"})
                admitted = True
                st.working += 1
            received = 0

            async def limited_receive() -> dict:
                nonlocal received
                message = await receive()
                if message["type"] == "http.request":
                    received += len(message.get("body", b""))
                    if received > cfg.max_body_bytes:
                        raise BodyTooLarge(cfg.max_body_bytes)
                return message

            try:
                await self.app(scope, limited_receive, send_wrapper)
            except BodyTooLarge as e:  # the handlers answer it themselves; this is for any that do not
                detail = "body too large"
                if not status_box["started"]:
                    await reject(413, e.message)
        finally:
            st.inflight -= 1
            if admitted:  # only what was counted in is counted out (a refusal must not open a slot)
                st.working -= 1
            st.metrics.inflight.dec()
            took = time.perf_counter() - started
            endpoint = _endpoint(path)
            st.metrics.requests.labels(endpoint, str(status_box["status"])).inc()
            st.metrics.latency.labels(endpoint).observe(took)
            if endpoint not in ("health", "metrics"):
                log_access(st.log, request_id, scope["method"], path, status_box["status"], took,
                           (scope.get("client") or [None])[0], detail)


class BodyTooLarge(RequestError):
    """The body grew past the limit while being read (chunked, or a Content-Length that lied): a 413
    that the /predict and /infer handlers answer like any other client error."""

    def __init__(self, limit: int):
        super().__init__(413, f"request body is over the limit of {limit} bytes")


def _endpoint(path: str) -> str:
    if path.startswith("/v2/health"):
        return "health"
    if path.endswith("/infer"):
        return "v2_infer"
    if path.startswith("/v2"):
        return "v2_metadata"
    return {"/predict": "predict", "/metrics": "metrics", "/": "page", "/schema": "schema"}.get(path, "other")


class ServerState:
    def __init__(self, backend: Backend, cfg: ServeConfig):
        self.backend, self.cfg = backend, cfg
        self.metrics = Metrics(backend.name, backend.digest, backend.platform)
        self.log = access_logger()
        self.prep = ThreadPoolExecutor(max_workers=prep_threads(), thread_name_prefix="preprocess")
        self.batcher: Batcher | None = None
        self.ready = False
        self.inflight = 0
        self.working = 0  # /predict and /infer requests admitted and not yet answered
        self.metrics.admitted.set_function(lambda: self.working)
        self.batching_note = ""
        self.handlers: set[asyncio.Task] = set()  # /predict and /infer requests being handled
        self.drain_expired = False
        self.loop: asyncio.AbstractEventLoop | None = None
        self.classes = {n: backend.preprocessor.classes(n) for n in backend.spec.outputs}

    def start(self) -> None:
        cfg, b = self.cfg, self.backend
        self.loop = asyncio.get_running_loop()
        max_batch = cfg.max_batch
        if cfg.check_batching and max_batch > 1:
            # one all-missing row, collated directly: transform() rejects a record with no inputs
            empty = b.preprocessor.collate(Decoded({n: [None] for n in b.spec.inputs}, {}, [0]))
            pays, t_batch, t_single = batching_pays(b.run_arrays, empty, max_batch)
            self.batching_note = (f"one batch of {max_batch} takes {t_batch * 1e3:.2f} ms vs {t_single * 1e3:.2f} ms "
                                  f"for {max_batch} singles")
            if not pays:
                self.batching_note += ": batching is not cheaper for this model, so requests run one at a time"
                max_batch = 1
        self.batcher = Batcher(b.run_arrays, max_batch, cfg.max_delay_ms / 1e3, cfg.queue_size,
                               self.metrics.observe_batch)
        self.batcher.start()
        self.ready = True

    def expire_drain(self) -> None:
        """The drain deadline passed: every request still being handled is answered 503 now."""
        self.drain_expired = True
        for task in list(self.handlers):
            task.cancel()

    async def predict(self, parse: Callable[[], tuple[list[dict], Any]]) -> tuple[dict[str, np.ndarray], dict[str, list], Any]:
        """Parse and preprocess off the event loop, queue for the batcher, await the model's answer.

        ``parse`` turns the request body into (records, context) and raises RequestError; it runs in the
        preprocessing pool with the rest, so the event loop only moves bytes (decoding base64 and reading
        media headers there would make every other client wait). Returns (probabilities, labels, context).
        """
        loop = asyncio.get_running_loop()
        pre = self.backend.preprocessor
        assert self.batcher is not None  # admission (Guard) already capped the requests that get here

        def prepare() -> tuple[list[dict], Any, dict[str, np.ndarray]]:
            records, context = parse()
            return records, context, pre.transform(records)[0]

        try:
            records, context, batch = await loop.run_in_executor(self.prep, prepare)
        except BadInputError as e:
            where = [f"record {e.row}"] if e.row is not None else []
            where += [f"field '{e.column}'"] if e.column is not None else []
            raise RequestError(400, f"{', '.join(where)}: {e.reason}" if where else e.reason, e.row, e.column) from None
        try:
            future = self.batcher.submit(batch, len(records))
        except asyncio.QueueFull:
            raise RequestError(503, "the server is at capacity; retry shortly") from None
        probs = await future
        return probs, decode_outputs(self.backend.spec, pre.state, probs), context


def create_app(model_dir: str | Path, cfg: ServeConfig | None = None) -> FastAPI:
    cfg = cfg or ServeConfig()
    single_threaded_blas()  # requests preprocess in parallel threads; see polyfuse.threads
    backend = load_backend(Path(model_dir), cfg)
    state = ServerState(backend, cfg)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        state.start()
        yield
        state.ready = False
        if state.batcher:
            await state.batcher.stop()
        state.prep.shutdown(wait=False, cancel_futures=True)
        flush_access_log()

    app = FastAPI(title=f"polyfuse: {backend.name}", version="1", lifespan=lifespan,
                  description="Predictions from a polyfuse fusion model: `/predict` (JSON or multipart) and the "
                              "KServe V2 / Open Inference Protocol under `/v2`.")
    app.state.server = state

    async def guarded(handler: Callable, *args: Any) -> Response:
        task = asyncio.current_task()
        state.handlers.add(task)
        try:
            return await asyncio.wait_for(handler(*args), timeout=cfg.timeout_s)
        except asyncio.CancelledError:
            if not state.drain_expired or task is None:
                raise
            task.uncancel()  # cancelled by the drain deadline, not by the client: answer it
            return JSONResponse({"error": "the server is shutting down and could not finish this request in time; "
                                          "retry (another replica will answer)", "record": None, "field": None},
                                status_code=503, headers={"retry-after": "1"})
        except RequestError as e:
            extra = {"retry-after": "1"} if e.status == 503 else None
            return JSONResponse(e.body(), status_code=e.status, headers=extra)
        except asyncio.TimeoutError:
            return JSONResponse({"error": f"no answer within {cfg.timeout_s:g} s; the server is overloaded or the "
                                          "request too large", "record": None, "field": None}, status_code=504)
        except ClientDisconnect:  # nobody is left to read an answer; not a server error
            return JSONResponse({"error": "client disconnected", "record": None, "field": None}, status_code=400)
        finally:
            state.handlers.discard(task)

    @app.post("/predict", summary="Predict from JSON records (base64 for binary inputs) or one multipart form")
    async def predict(request: Request) -> Response:
        async def handle() -> Response:
            ctype = request.headers.get("content-type", "")
            if ctype.startswith("multipart/form-data"):
                form = await _form_record(request)
                parse = lambda: (json_records(form, backend.spec, cfg), None)  # noqa: E731
            elif ctype.startswith("application/json"):
                raw = await request.body()
                parse = lambda: (json_records(_json_body(raw), backend.spec, cfg), None)  # noqa: E731
            else:
                raise RequestError(415, f"unsupported content type {ctype or 'none'!r}: send application/json "
                                        "or multipart/form-data")
            probs, labels, _ = await state.predict(parse)
            return JSONResponse({"model": backend.name, "request_id": request.state.request_id,
                                 "predictions": _predictions(backend, state.classes, probs, labels)})

        return await guarded(handle)

    @app.get("/schema", summary="The model's inputs and outputs (used by the web page)")
    async def schema() -> dict:
        inputs = []
        for n, c in backend.spec.inputs.items():
            entry = {"name": backend.spec.column(n), "type": c.type}
            if c.type == "category":
                entry["categories"] = backend.preprocessor.state[n]["vocab"][1:]
            inputs.append(entry)
        outputs = [{"name": n, "type": c.type, **({"classes": state.classes[n]} if c.type != "number" else {})}
                   for n, c in backend.spec.outputs.items()]
        return {"name": backend.name, "inputs": inputs, "outputs": outputs}

    @app.get("/v2", summary="V2 server metadata")
    @app.get("/v2/", include_in_schema=False)
    async def server_metadata() -> dict:
        import polyfuse

        return {"name": "polyfuse", "version": polyfuse.__version__, "extensions": ["binary_tensor_data"]}

    @app.get("/v2/health/live", summary="Liveness")
    async def live() -> Response:
        return JSONResponse({"live": True})

    @app.get("/v2/health/ready", summary="Readiness (false while starting and while draining)")
    async def ready() -> Response:
        return JSONResponse({"ready": state.ready}, status_code=200 if state.ready else 503)

    def _check_model(name: str, version: str | None = None) -> None:
        if name != backend.name or (version is not None and version != backend.version):
            raise RequestError(404, f"model {name!r}{f' version {version!r}' if version else ''} not found; this "
                                    f"server serves {backend.name!r} version {backend.version!r}")

    def _unknown_model(name: str, version: str | None) -> JSONResponse | None:
        try:
            _check_model(name, version)
        except RequestError as e:
            return _v2_error(e)
        return None

    def _v2_error(e: RequestError) -> JSONResponse:
        return JSONResponse({"error": e.message}, status_code=e.status,
                            headers={"retry-after": "1"} if e.status == 503 else None)

    @app.get("/v2/models/{name}", summary="V2 model metadata")
    @app.get("/v2/models/{name}/versions/{version}", summary="V2 model metadata (versioned)")
    async def model_metadata(name: str, version: str | None = None) -> Response:
        if unknown := _unknown_model(name, version):
            return unknown
        return JSONResponse(protocol.model_metadata(backend.name, backend.version, backend.platform, backend.spec,
                                                    state.classes))

    @app.get("/v2/models/{name}/ready", summary="V2 model readiness")
    @app.get("/v2/models/{name}/versions/{version}/ready", summary="V2 model readiness (versioned)")
    async def model_ready(name: str, version: str | None = None) -> Response:
        if unknown := _unknown_model(name, version):
            return unknown
        return JSONResponse({"name": name, "ready": state.ready}, status_code=200 if state.ready else 503)

    @app.post("/v2/models/{name}/infer", summary="V2 inference (JSON or binary tensor extension)")
    @app.post("/v2/models/{name}/versions/{version}/infer", summary="V2 inference (versioned)")
    async def infer(name: str, request: Request, version: str | None = None) -> Response:
        async def handle() -> Response:
            _check_model(name, version)
            body, header = await request.body(), request.headers.get(protocol.HEADER)
            probs, labels, req = await state.predict(lambda: protocol.parse_infer(body, header, backend.spec, cfg))
            content, headers = protocol.build_response(backend.name, backend.version, req, probs, labels)
            return Response(content, headers=headers)

        try:
            return await asyncio.wait_for(handle(), timeout=cfg.timeout_s)
        except RequestError as e:
            return _v2_error(e)
        except asyncio.TimeoutError:
            return JSONResponse({"error": f"no answer within {cfg.timeout_s:g} s"}, status_code=504)
        except ClientDisconnect:
            return JSONResponse({"error": "client disconnected"}, status_code=400)

    @app.get("/metrics", summary="Prometheus metrics")
    async def metrics() -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/", include_in_schema=False)
    async def page() -> Response:
        index = STATIC / "index.html"
        if not index.exists():
            return JSONResponse({"error": "the web page is not installed"}, status_code=404)
        return FileResponse(index)

    if STATIC.is_dir():
        app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return Guard(app, state)  # type: ignore[return-value]


def _json_body(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
        raise RequestError(400, "the request body is not valid JSON") from None


def prep_threads() -> int:
    """Preprocessing threads: one per CPU this process may run on, less one left to the event loop
    and the model thread. Measured on 2 cores, one thread beat two by 10-13 % in requests per second
    on both benchmark models (p99 73 -> 62 ms on the network-bound one): a second thread mostly
    contends for the GIL and takes the model's core."""
    return max(1, usable_cpus() - 1)


async def _form_record(request: Request) -> dict[str, Any]:
    """One record from a multipart form: files for binary inputs (empty file = missing), fields for the rest."""
    try:
        form = await request.form()
    except RequestError:  # BodyTooLarge: 413, not a malformed body
        raise
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


def _predictions(backend: Backend, classes: dict[str, list], probs: dict[str, np.ndarray],
                 labels: dict[str, list]) -> list[dict[str, Any]]:
    out = []
    n = len(next(iter(labels.values())))
    for i in range(n):
        row: dict[str, Any] = {}
        dist: dict[str, dict[str, float]] = {}
        for name, cfg in backend.spec.outputs.items():
            row[name] = labels[name][i]
            if cfg.type in ("category", "binary"):
                row[f"{name}_probability"] = round(float(probs[name][i].max()), 6)
                if row[name] is None:  # below the output's abstain_below threshold
                    row["reason"] = "low confidence"
            if cfg.type != "number":
                dist[name] = {c: round(float(p), 6) for c, p in zip(classes[name], probs[name][i])}
        if dist:
            row["probabilities"] = dist
        if MODALITY_WEIGHTS in probs:  # gated fusion: how much each input counted for this record
            row["modality_weights"] = {backend.spec.column(n): round(float(w), 6)
                                       for n, w in zip(backend.spec.inputs, probs[MODALITY_WEIGHTS][i])}
        out.append(row)
    return out

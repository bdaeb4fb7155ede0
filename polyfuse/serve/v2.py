"""The KServe V2 / Open Inference Protocol routes: server and model metadata, health, readiness and
inference. Inference takes the same guarded path as /predict (deadline, drain, errors); only the
error body differs: V2 clients expect ``{"error": message}``."""
from __future__ import annotations

from typing import Any, Callable

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from polyfuse.serve import protocol
from polyfuse.serve.requests import RequestError
from polyfuse.serve.state import ServerState
from polyfuse.version import __version__


def v2_error(e: RequestError) -> JSONResponse:
    """A client error in V2's format (the message only; 503 with Retry-After)."""
    return JSONResponse({"error": e.message}, status_code=e.status,
                        headers={"retry-after": "1"} if e.status == 503 else None)


def add_v2_routes(app: FastAPI, state: ServerState, guarded: Callable[..., Any]) -> None:
    """Register the V2 endpoints on ``app``; ``guarded(request, handle, v2=True)`` runs inference."""
    backend, cfg = state.backend, state.cfg

    def check_model(name: str, version: str | None = None) -> None:
        if name != backend.name or (version is not None and version != backend.version):
            raise RequestError(404, f"model {name!r}{f' version {version!r}' if version else ''} not found; this "
                                    f"server serves {backend.name!r} version {backend.version!r}")

    def unknown_model(name: str, version: str | None) -> JSONResponse | None:
        try:
            check_model(name, version)
        except RequestError as e:
            return v2_error(e)
        return None

    @app.get("/v2", summary="V2 server metadata")
    @app.get("/v2/", include_in_schema=False)
    async def server_metadata() -> dict:
        return {"name": "polyfuse", "version": __version__, "extensions": ["binary_tensor_data"]}

    @app.get("/v2/health/live", summary="Liveness")
    async def live() -> Response:
        return JSONResponse({"live": True})

    @app.get("/v2/health/ready", summary="Readiness (false while starting and while draining)")
    async def ready() -> Response:
        return JSONResponse({"ready": state.ready}, status_code=200 if state.ready else 503)

    @app.get("/v2/models/{name}", summary="V2 model metadata")
    @app.get("/v2/models/{name}/versions/{version}", summary="V2 model metadata (versioned)")
    async def model_metadata(name: str, version: str | None = None) -> Response:
        if unknown := unknown_model(name, version):
            return unknown
        return JSONResponse(protocol.model_metadata(backend.name, backend.version, backend.platform, backend.spec,
                                                    state.classes))

    @app.get("/v2/models/{name}/ready", summary="V2 model readiness")
    @app.get("/v2/models/{name}/versions/{version}/ready", summary="V2 model readiness (versioned)")
    async def model_ready(name: str, version: str | None = None) -> Response:
        if unknown := unknown_model(name, version):
            return unknown
        return JSONResponse({"name": name, "ready": state.ready}, status_code=200 if state.ready else 503)

    @app.post("/v2/models/{name}/infer", summary="V2 inference (JSON or binary tensor extension)")
    @app.post("/v2/models/{name}/versions/{version}/infer", summary="V2 inference (versioned)")
    async def infer(name: str, request: Request, version: str | None = None) -> Response:
        async def handle() -> Response:
            check_model(name, version)
            body, header = await request.body(), request.headers.get(protocol.HEADER)
            probs, labels, req = await state.predict(
                lambda budget: protocol.parse_infer(body, header, backend.spec, cfg, budget), len(body),
                request.scope["state"]["deadline"], request.scope["state"])
            content, headers = protocol.build_response(backend.name, backend.version, req, probs, labels)
            return Response(content, headers=headers)

        return await guarded(request, handle, v2=True)

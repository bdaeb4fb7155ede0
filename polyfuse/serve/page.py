"""The web page: ``/`` (static/index.html), ``/static`` and ``/schema``, the description of the
model's inputs and outputs the page builds its form and live view from."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles

from polyfuse.preprocess.streams import STREAM_TYPES, window_size

STATIC = Path(__file__).parent / "static"


def page_schema(backend: Any, classes: dict[str, list]) -> dict:
    """Inputs (name as the table column, type, categories; for stream inputs the channels, sample rate
    and window in samples the live view streams at) and outputs (with their classes)."""
    inputs = []
    for n, c in backend.spec.inputs.items():
        entry: dict[str, Any] = {"name": backend.spec.column(n), "type": c.type}
        if c.type == "category":
            entry["categories"] = backend.preprocessor.state[n]["vocab"][1:]
        if c.type in STREAM_TYPES:  # what the page's live view needs: a sensor file or the microphone
            window, channels = window_size(c)
            entry.update(channels=channels, sample_rate=c.sample_rate, window=window)
        inputs.append(entry)
    outputs = [{"name": n, "type": c.type, **({"classes": classes[n]} if c.type != "number" else {})}
               for n, c in backend.spec.outputs.items()]
    return {"name": backend.name, "inputs": inputs, "outputs": outputs}


def add_page_routes(app: FastAPI, backend: Any, classes: dict[str, list]) -> None:
    """Register ``/schema``, ``/`` and the static files."""
    @app.get("/schema", summary="The model's inputs and outputs (used by the web page)")
    async def schema() -> dict:
        return page_schema(backend, classes)

    @app.get("/", include_in_schema=False)
    async def page() -> Response:
        index = STATIC / "index.html"
        if not index.exists():
            return JSONResponse({"error": "the web page is not installed"}, status_code=404)
        return FileResponse(index)

    if STATIC.is_dir():
        app.mount("/static", StaticFiles(directory=STATIC), name="static")

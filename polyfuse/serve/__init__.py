"""`polyfuse serve`: an HTTP server over a trained artifact (FastAPI + uvicorn).

``app`` composes the routes; ``guard`` (limits, auth, admission), ``requests``/``protocol`` (parsing
/predict and KServe V2 bodies), ``state`` (the model backend and the answer rows), ``heavy`` (the worker
process for large bodies and messages), ``batching``, ``stream`` (/v2/stream) with ``stream_parse`` (its
messages) and ``stream_access`` (its Origin and key checks), ``page`` (the web page),
``access`` (API keys, TLS, rate limits), ``observability``, ``server``/``connection`` (uvicorn with
header and drain limits).
May import: ``polyfuse.runtime`` (the ONNX path), ``polyfuse.estimator`` (the torch path) and
everything below them; never ``polyfuse.scale`` or ``polyfuse.cli``.
"""
from polyfuse.extras import require

require("serve", "polyfuse.serve")  # the whole package is the serving extra: say so before any submodule fails

"""`polyfuse serve`: an HTTP server over a trained artifact (FastAPI + uvicorn)."""
from polyfuse.extras import require

require("serve", "polyfuse.serve")  # the whole package is the serving extra: say so before any submodule fails

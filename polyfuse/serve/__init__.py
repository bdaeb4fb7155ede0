"""`polyfuse serve`: an HTTP server over a trained artifact (FastAPI + uvicorn)."""

"""polyfuse: from a table of raw multimodal records to a trained fusion model, and to deployment.

``polyfuse.train`` and ``polyfuse.load`` import torch lazily, so ``polyfuse.preprocess`` (and
the torch-free runtime) can be imported where torch is not installed.
"""
from __future__ import annotations

import os
from typing import Any

# No network at run time unless asked: ONNX Runtime's official builds carry a telemetry uploader (1DS)
# that this variable, read when ONNX Runtime initialises, turns off for the process. Set before any
# submodule can import onnxruntime; a user who wants telemetry sets it to 0 themselves.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

from polyfuse.version import __version__  # noqa: E402 (after the variable above)

__all__ = ["train", "load", "__version__"]
RUNTIME_HINT = "an exported model runs without it: polyfuse.runtime.Runtime(path)"


def train(spec: Any, data: Any = None, **kwargs: Any):
    """Train a fusion model from a spec (YAML path or dict); ``data`` may be a DataFrame."""
    from polyfuse.extras import require

    require("train", "polyfuse.train")
    from polyfuse.estimator import train as _train

    return _train(spec, data=data, **kwargs)


def load(path: Any, **kwargs: Any):
    """Load a saved model directory (verifies its manifest first); ``key_env=`` names the variable
    holding an encrypted model's key, ``verify_key=`` a PEM public key its signature must match."""
    from polyfuse.extras import require

    require("train", "polyfuse.load", hint=RUNTIME_HINT)
    from polyfuse.estimator import load as _load

    return _load(path, **kwargs)

"""Where polyfuse keeps what it can rebuild (disk shards, backbone outputs, converted zoo models)."""
from __future__ import annotations

import os
from pathlib import Path


def cache_home() -> Path:
    """$POLYFUSE_CACHE, else ~/.cache/polyfuse (a spec's data.cache_dir overrides it for a run's data)."""
    return Path(os.environ.get("POLYFUSE_CACHE") or Path.home() / ".cache" / "polyfuse")

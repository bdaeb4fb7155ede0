"""Installed size of the torch-free runtime's dependency set against a full polyfuse install:
what `polyfuse bench` reports beside its speed figures."""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

# Distributions the torch-free runtime imports (pip pulls in their own requirements too).
RUNTIME_DISTS = ("polyfuse", "numpy", "onnxruntime", "pillow", "soundfile", "soxr", "tokenizers", "pydantic", "pydantic_core",
                 "PyYAML")
# Needed by `polyfuse export` but not declared in polyfuse's requirements.
EXPORT_DISTS = ("onnx", "onnxscript", "onnxruntime")


def _dist_bytes(name: str) -> int:
    """Bytes on disk of one installed distribution, summed over the files its RECORD lists."""
    import importlib.metadata as md

    if name == "polyfuse":  # often an editable install whose metadata lists stale or no files: measure the tree
        package = Path(__file__).resolve().parent
        return sum(p.stat().st_size for p in package.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    total = 0
    for f in md.distribution(name).files or []:
        path = Path(str(f.locate()))
        if path.is_file():
            total += path.stat().st_size
    return total


def _closure(roots: tuple[str, ...] | list[str]) -> set[str]:
    """The distributions pip would install for ``roots``: their requirements, transitively, without extras."""
    import importlib.metadata as md

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    seen: dict[str, str] = {}
    todo = list(roots)
    while todo:
        name = todo.pop()
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            continue  # an optional or platform-specific requirement that is not installed here
        key = canonicalize_name(dist.metadata["Name"])
        if key in seen:
            continue
        seen[key] = dist.metadata["Name"]
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return set(seen.values())


@functools.lru_cache(maxsize=1)  # stats some 20 000 files: once per process is enough
def cached_footprint() -> dict[str, Any]:
    """:func:`footprint`, computed once per process."""
    return footprint()


def footprint() -> dict[str, Any]:
    """Installed size of the torch-free runtime's distributions vs everything polyfuse needs."""
    # polyfuse's own declared requirements include torch; the runtime needs only the package itself.
    runtime = _closure([d for d in RUNTIME_DISTS if d != "polyfuse"]) | {"polyfuse"}
    full = _closure(("polyfuse", *RUNTIME_DISTS, *EXPORT_DISTS))
    sizes = {name: _dist_bytes(name) for name in full | runtime}
    mb = lambda names: round(sum(sizes[n] for n in names) / 1e6, 1)  # noqa: E731
    largest = sorted(sizes, key=sizes.get, reverse=True)[:8]
    return {"runtime_footprint_mb": mb(runtime), "full_footprint_mb": mb(full | runtime),
            "footprint": {"runtime": {n: round(sizes[n] / 1e6, 2) for n in sorted(runtime, key=str.lower)},
                          "full_largest": {n: round(sizes[n] / 1e6, 1) for n in largest},
                          "full_count": len(full | runtime)}}

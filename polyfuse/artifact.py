"""The model directory: spec.yaml, weights.safetensors, preprocess.json, metrics.json,
MODEL_CARD.md, plots, and manifest.json with the sha256 of every other file.

Writing goes to a temporary sibling directory that is renamed at the end, so a crash never
leaves a half-written model. Loading checks the manifest first and names any changed file.
Nothing is pickled: tensors are safetensors, everything else JSON/YAML/text.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

from polyfuse.errors import ArtifactError

MANIFEST = "manifest.json"
REQUIRED = ("spec.yaml", "weights.safetensors", "preprocess.json")


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_manifest(folder: Path, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)
    manifest = {"format": "polyfuse.artifact/1", **(extra or {}),
                "files": {str(p.relative_to(folder)): {"sha256": sha256(p), "bytes": p.stat().st_size} for p in files}}
    atomic_write_text(folder / MANIFEST, json.dumps(manifest, indent=1))
    return manifest


def refresh_manifest(folder: Path, updates: dict[str, Any] | None = None) -> dict[str, Any]:
    """Re-hash after adding files to a saved artifact, keeping the manifest's other keys.

    Callers verify first, so that a file changed behind our back is never blessed by re-hashing.
    """
    old = json.loads((folder / MANIFEST).read_text())
    extra = {k: v for k, v in old.items() if k not in ("files", "format")}
    return write_manifest(folder, {**extra, **(updates or {})})


def verify(folder: str | Path) -> dict[str, Any]:
    """Check that the directory is a complete, unmodified artifact; returns its manifest."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ArtifactError(f"model directory {str(folder)!r} not found")
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        listed = manifest["files"]
    except FileNotFoundError:
        raise ArtifactError(f"{folder}: no {MANIFEST}; this is not a polyfuse model directory (or it was not saved completely)") from None
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ArtifactError(f"{folder / MANIFEST} is corrupt ({e}); re-save the model") from None
    if not isinstance(listed, dict):
        raise ArtifactError(f"{folder / MANIFEST} is corrupt ('files' is not an object); re-save the model")
    for name in REQUIRED:
        if name not in listed:
            raise ArtifactError(f"{folder}: {MANIFEST} does not list {name}; the artifact is incomplete")
    root = folder.resolve()
    for name, info in listed.items():
        digest = info.get("sha256") if isinstance(info, dict) else None
        if not isinstance(digest, str):
            raise ArtifactError(f"{folder / MANIFEST} is corrupt (entry {name!r} has no sha256); re-save the model")
        path = folder / name
        # a manifest names files inside the artifact only: never an absolute path, '..' or a link out of it
        if Path(name).is_absolute() or ".." in Path(name).parts or not path.resolve().is_relative_to(root):
            raise ArtifactError(f"{folder}: {MANIFEST} lists {name!r}, which is outside the model directory; "
                                "the manifest was tampered with")
        if not path.is_file():
            raise ArtifactError(f"{folder}: file {name!r} listed in {MANIFEST} is missing")
        if sha256(path) != digest:
            raise ArtifactError(
                f"{folder}: file {name!r} was modified after the model was saved (sha256 mismatch); "
                "restore it or re-export the model")
    return manifest


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_dir(target: str | Path, fill: Callable[[Path], None]) -> Path:
    """Create ``target`` atomically: ``fill`` writes into a temp dir that then replaces it."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        fill(tmp)
        if target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target

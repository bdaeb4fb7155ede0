"""The model directory: spec.yaml, weights.safetensors, preprocess.json, metrics.json,
MODEL_CARD.md, plots, and manifest.json with the sha256 of every other file.

Writing goes to a temporary sibling directory that is renamed at the end, so a crash never
leaves a half-written model. Loading checks the manifest first and names any changed file.
Nothing is pickled: tensors are safetensors, everything else JSON/YAML/text.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from polyfuse.errors import ArtifactError

MANIFEST = "manifest.json"
REQUIRED = ("spec.yaml", "weights.safetensors", "preprocess.json")
SIGNATURE = "manifest.sig"  # an Ed25519 signature of manifest.json (polyfuse.privacy.sign); not itself listed
TAG = "manifest.tag"  # an encrypted artifact's HMAC of manifest.json under its key; not itself listed
ENCRYPTION = "encryption"  # the manifest key of an encrypted artifact (polyfuse.privacy.crypto)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_manifest(folder: Path, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name not in (MANIFEST, SIGNATURE, TAG))
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


def verify(folder: str | Path, skip: frozenset[str] = frozenset()) -> dict[str, Any]:
    """Check that the directory is a complete, unmodified artifact; returns its manifest. The files
    in ``skip`` are not hashed here: the caller hashes the bytes it reads (:func:`open_artifact`)."""
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
        if name not in skip and sha256(path) != digest:
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


# ----------------------------------------------------------------------------- reading (plain or encrypted)
def _plain(folder: Path, name: str, data: bytes, key: bytes | None) -> bytes:
    """A file's bytes as the model uses them: decrypted with ``key`` when the artifact is encrypted
    (then every file must be sealed), as they are otherwise."""
    from polyfuse.privacy import crypto

    if key is not None:
        if not crypto.is_sealed(data):
            raise ArtifactError(f"{folder}: {name} is not encrypted in an encrypted model: a plaintext file was put "
                                "in place of a sealed one; restore the artifact from a copy")
        return crypto.open_sealed(data, key, name)
    if crypto.is_sealed(data):
        raise ArtifactError(f"{folder}: {name} is encrypted; set ${crypto.DEFAULT_KEY_ENV} (or key_env=) to its key")
    return data


def _checked(folder: Path, manifest: dict[str, Any], name: str, digest: str) -> None:
    """Refuse a file the manifest does not list, or whose bytes are not the ones it lists."""
    entry = manifest["files"].get(name)
    if entry is None:
        raise ArtifactError(f"{folder}: {name} is not listed in {MANIFEST}, so neither the manifest nor a signature "
                            f"covers it: it is never read. Remove it, or export again so the export lists it")
    if entry["sha256"] != digest:
        raise ArtifactError(f"{folder}: file {name!r} was modified after the model was saved (sha256 mismatch); "
                            "restore it or re-export the model")


@dataclass
class Opened:
    """A verified artifact and the key to read it (None when it is not encrypted). Every file is
    read through :meth:`read`, which reads only files the manifest lists and checks their bytes
    against it, so a signature of the manifest covers everything a model loads."""

    folder: Path
    manifest: dict[str, Any]
    key: bytes | None = None
    ready: dict[str, tuple[str, bytes]] = field(default_factory=dict)  # read while the manifest was checked

    def read(self, name: str) -> bytes:
        if name in self.ready:  # hashed, checked and decrypted when the artifact was opened
            return self.ready.pop(name)[1]
        raw = (self.folder / name).read_bytes() if name in self.manifest["files"] else b""
        _checked(self.folder, self.manifest, name, hashlib.sha256(raw).hexdigest())
        return _plain(self.folder, name, raw, self.key)

    def text(self, name: str) -> str:
        return self.read(name).decode("utf-8")

    def has(self, name: str) -> bool:
        return name in self.manifest["files"]


def _key(folder: Path, key_env: str | None, manifest: dict[str, Any]) -> bytes | None:
    """The key of an encrypted artifact from ``$key_env``; None for a plain one."""
    encryption = manifest.get(ENCRYPTION) if isinstance(manifest, dict) else None  # verify names a corrupt one
    if encryption is None:
        return None
    from polyfuse.extras import require
    from polyfuse.privacy import crypto

    require("crypto", "opening an encrypted model")  # before asking for a key that could not be used

    return crypto.key_from_env(key_env or crypto.DEFAULT_KEY_ENV, encryption)


def _prefetch(folder: Path, names: tuple[str, ...], key: bytes | None) -> dict[str, tuple[str, bytes]]:
    """name -> (sha256 of the bytes on disk, the bytes the model uses), for the listed files in ``names``."""
    out = {}
    for name in names:
        path = folder / name
        if path.is_file():
            raw = path.read_bytes()
            out[name] = (hashlib.sha256(raw).hexdigest(), _plain(folder, name, raw, key))
    return out


def open_artifact(folder: str | Path, *, key_env: str | None = None, verify_key: str | Path | None = None,
                  prefetch: tuple[str, ...] = ()) -> Opened:
    """Verify an artifact's files against its manifest; with ``verify_key`` (a PEM public key file)
    require a valid signature of the manifest; when it is encrypted, take its key from ``$key_env``
    (default POLYFUSE_KEY), never from an argument that could end up in a shell history, and check
    the manifest's own authentication tag. Naming ``key_env`` demands an encrypted model: a plain
    one is then refused (it could have been swapped in for the encrypted one).

    The files in ``prefetch`` are read (and decrypted) while the other files' digests are computed
    in a thread (hashlib releases the GIL), and hashed once: their digests are checked against the
    manifest here. Nothing is returned before every file has been verified.
    """
    folder = Path(folder)
    manifest_bytes = _manifest_bytes(folder)
    with ThreadPoolExecutor(max_workers=1) as pool:
        checked = pool.submit(verify, folder, skip=frozenset(prefetch))
        try:
            key = _key(folder, key_env, json.loads(manifest_bytes))
            ready = _prefetch(folder, prefetch, key)
        except (ArtifactError, OSError, ValueError):
            checked.result()  # a missing, corrupt or modified artifact is named as such first
            raise
        manifest = checked.result()
    if json.loads(manifest_bytes) != manifest or (ENCRYPTION in manifest) != (key is not None):
        raise ArtifactError(f"{folder}: {MANIFEST} changed while the model was loading; load it again")
    if key is not None:
        check_manifest_tag(folder, manifest_bytes, key)
    elif key_env is not None:
        raise ArtifactError(f"{folder} is not encrypted, but key_env / --key-env {key_env} asks for an encrypted model; "
                            "a plain model in its place is refused. Encrypt it (`polyfuse encrypt`) or drop the key option")
    for name, (digest, _) in ready.items():
        _checked(folder, manifest, name, digest)
    if verify_key is not None:
        check_signature(folder, verify_key)
    return Opened(folder, manifest, key, ready)


def _manifest_bytes(folder: Path) -> bytes:
    try:
        return (folder / MANIFEST).read_bytes()
    except OSError:
        verify(folder)  # names a missing folder or manifest
        raise


# ----------------------------------------------------------------------------- sealing: encryption and signatures
def encrypt_artifact(folder: str | Path, key: bytes) -> dict[str, Any]:
    """Encrypt every file of a verified artifact, replacing the directory atomically; returns the
    new manifest (digests of the ciphertext, ``encryption`` with the key's fingerprint)."""
    from polyfuse.privacy import crypto

    folder = Path(folder)
    manifest = verify(folder)
    if ENCRYPTION in manifest:
        raise ArtifactError(f"{folder} is already encrypted (key {manifest[ENCRYPTION]['key_id']})")
    names = sorted(manifest["files"])
    extra = {k: v for k, v in manifest.items() if k not in ("files", "format")}
    extra[ENCRYPTION] = {"algorithm": crypto.ALGORITHM, "key_id": crypto.key_id(key), "files": names}

    def fill(tmp: Path) -> None:
        for name in names:
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp / name).write_bytes(crypto.seal((folder / name).read_bytes(), key, name))
        write_manifest(tmp, extra)

    def fill_and_tag(tmp: Path) -> None:
        fill(tmp)
        atomic_write_text(tmp / TAG, crypto.manifest_tag((tmp / MANIFEST).read_bytes(), key) + "\n")

    write_dir(folder, fill_and_tag)
    return verify(folder)


def sign_artifact(folder: str | Path, key_file: str | Path) -> Path:
    """Verify the artifact, then write ``manifest.sig`` (base64 Ed25519 signature of manifest.json)."""
    from polyfuse.privacy import sign

    folder = Path(folder)
    verify(folder)  # never sign files that changed behind the manifest's back
    signature = sign.load_key(key_file, private=True).sign((folder / MANIFEST).read_bytes())
    atomic_write_text(folder / SIGNATURE, base64.b64encode(signature).decode() + "\n")
    return folder / SIGNATURE


def check_signature(folder: str | Path, public_key_file: str | Path) -> None:
    """Refuse an unsigned artifact or one whose manifest does not match its signature."""
    from polyfuse.privacy import sign

    folder = Path(folder)
    key = sign.load_key(public_key_file, private=False)  # first: names the crypto extra when it is missing
    from cryptography.exceptions import InvalidSignature

    sig_path = folder / SIGNATURE
    if not sig_path.is_file():
        raise ArtifactError(f"{folder} is not signed (no {SIGNATURE}) but a verify key was given; "
                            f"sign it with `polyfuse sign {folder} --key-file KEY`, or load it without a verify key")
    try:
        key.verify(base64.b64decode(sig_path.read_text().strip(), validate=True), (folder / MANIFEST).read_bytes())
    except (InvalidSignature, ValueError):
        raise ArtifactError(f"{folder}: the signature does not match {MANIFEST} under {public_key_file}: the "
                            "artifact was changed after signing (re-sign it after an export) or signed by another "
                            "key; do not use it") from None


def check_manifest_tag(folder: Path, manifest_bytes: bytes, key: bytes) -> None:
    """Refuse an encrypted artifact whose manifest is not the one its key's holder wrote: the manifest
    lists the ciphertexts' digests, so with it authenticated a foreign or plaintext file is refused too."""
    import hmac

    from polyfuse.privacy import crypto

    path = folder / TAG
    if not path.is_file():
        raise ArtifactError(f"{folder}: encrypted, but {TAG} (the manifest's authentication tag) is missing; the "
                            "manifest cannot be trusted. Encrypt the plain model again with `polyfuse encrypt`")
    if not hmac.compare_digest(path.read_text().strip(), crypto.manifest_tag(manifest_bytes, key)):
        raise ArtifactError(f"{folder}: {MANIFEST} does not match its authentication tag under this key: it was "
                            "edited after encryption (files added, swapped or marked plain); do not use it")

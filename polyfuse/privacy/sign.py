"""Signed artifacts: an Ed25519 signature of manifest.json in ``manifest.sig``. The manifest holds
the sha256 of every file, so a valid signature plus a verified manifest covers the whole artifact.

Keys are PEM files: `polyfuse keygen --sign --out NAME` writes NAME (private, mode 600) and
NAME.pub, or with openssl: ``openssl genpkey -algorithm ed25519 -out k.pem`` and
``openssl pkey -in k.pem -pubout -out k.pub``.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from polyfuse.errors import ArtifactError
from polyfuse.extras import require


def keygen(out: str | Path) -> tuple[Path, Path]:
    """Write a new Ed25519 key pair: ``out`` (private, PEM, readable by the owner only) and ``out.pub``."""
    require("crypto", "writing a signing key")
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    private, public = Path(out), Path(f"{out}.pub")
    for path in (private, public):
        if path.exists():
            raise ArtifactError(f"{path} exists; choose another name (a key is never overwritten)")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo))
    return private, public


def load_key(path: str | Path, private: bool) -> Any:
    require("crypto", "signing a model" if private else "checking a model's signature (a verify key)")
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    what = "private" if private else "public"
    try:
        data = Path(path).read_bytes()
        key = (serialization.load_pem_private_key(data, password=None) if private
               else serialization.load_pem_public_key(data))
    except FileNotFoundError:
        raise ArtifactError(f"{what} key file {str(path)!r} not found") from None
    except (ValueError, TypeError) as e:
        raise ArtifactError(f"{path}: not an unencrypted PEM {what} key ({str(e).splitlines()[0][:120]}); "
                            "make one with `polyfuse keygen --sign --out KEY`") from None
    expected = ed25519.Ed25519PrivateKey if private else ed25519.Ed25519PublicKey
    if not isinstance(key, expected):
        raise ArtifactError(f"{path}: expected an Ed25519 {what} key, got {type(key).__name__}")
    return key

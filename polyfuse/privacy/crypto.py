"""Encryption at rest: every file of an artifact sealed with AES-256-GCM under a key that lives
only in an environment variable (``POLYFUSE_KEY`` by default; 32 random bytes, base64 or hex).

A sealed file is ``MAGIC | 12-byte nonce | ciphertext + 16-byte tag``, authenticated together with
its name inside the artifact (so two files cannot be swapped). The manifest stays readable: its
digests are of the ciphertext and its ``encryption`` entry names the key by a fingerprint, never
the key. Decryption happens in memory; nothing decrypted is written to disk.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import os
import secrets
from typing import Any

from polyfuse.errors import ArtifactError
from polyfuse.extras import require

MAGIC = b"POLYFUSE-AESGCM1\n"
ALGORITHM = "AES-256-GCM"
DEFAULT_KEY_ENV = "POLYFUSE_KEY"
_NONCE = 12


def new_key() -> str:
    """A fresh random 256-bit key, base64-encoded (what `polyfuse keygen` prints)."""
    return base64.b64encode(secrets.token_bytes(32)).decode()


def parse_key(text: str, env: str) -> bytes:
    """32 bytes from hex (64 characters) or base64; the error names the variable, never its value."""
    text = text.strip()
    try:
        key = bytes.fromhex(text) if len(text) == 64 else base64.b64decode(text, validate=True)
    except (ValueError, binascii.Error):
        key = b""
    if len(key) != 32:
        raise ArtifactError(f"${env} is not a 256-bit key: expected 32 bytes as base64 (44 characters) or hex "
                            "(64 characters); make one with `polyfuse keygen`")
    return key


def key_id(key: bytes) -> str:
    """A fingerprint that identifies a key without revealing it."""
    return hashlib.sha256(b"polyfuse key id\0" + key).hexdigest()[:16]


def key_from_env(env: str, encryption: dict[str, Any] | None = None) -> bytes:
    """The key in ``$env``; with the manifest's ``encryption`` entry, checked to be the right one."""
    text = os.environ.get(env)
    if not text:
        raise ArtifactError(f"this model is encrypted ({ALGORITHM}) and ${env} is unset or empty; set it to the "
                            "key the model was encrypted with (or name another variable with --key-env / key_env=)")
    key = parse_key(text, env)
    if encryption and encryption.get("key_id") not in (None, key_id(key)):
        raise ArtifactError(f"wrong key: ${env} holds key {key_id(key)}, but the model was encrypted with key "
                            f"{encryption['key_id']}")
    return key


def is_sealed(data: bytes) -> bool:
    return data.startswith(MAGIC)


def seal(data: bytes, key: bytes, name: str) -> bytes:
    """Encrypt one file's bytes; ``name`` (its path in the artifact) is authenticated too."""
    require("crypto", "encrypting a model")
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    nonce = secrets.token_bytes(_NONCE)  # random 96-bit nonces: safe for far more files than an artifact holds
    return MAGIC + nonce + AESGCM(key).encrypt(nonce, data, name.encode())


def open_sealed(data: bytes, key: bytes, name: str) -> bytes:
    """Decrypt in memory; a modified file or a wrong key fails authentication with a clear error."""
    require("crypto", "opening an encrypted model")
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    body = memoryview(data)[len(MAGIC):]  # a view: no copy of a large weights file before decrypting it
    try:
        return AESGCM(key).decrypt(bytes(body[:_NONCE]), body[_NONCE:], name.encode())
    except InvalidTag:
        raise ArtifactError(f"{name}: decryption failed authentication: the encrypted file was modified (or "
                            "renamed) after encryption, or the key is wrong; restore the artifact from a copy") from None


def manifest_tag(manifest: bytes, key: bytes) -> str:
    """HMAC-SHA256 of an encrypted artifact's manifest under a key derived from its AES key (one key
    never serves two purposes): whoever lacks the key cannot rewrite the list of files and digests."""
    import hmac

    return hmac.new(hashlib.sha256(b"polyfuse manifest tag\0" + key).digest(), manifest, hashlib.sha256).hexdigest()

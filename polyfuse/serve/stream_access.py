"""Who may open a ``/v2/stream`` WebSocket: the ``Origin`` allow-list and the API key of the handshake.

Browsers let any page open a WebSocket to any server and send the page's ``Origin``; the server is the
only one that can refuse, and a key-less server on 127.0.0.1 would otherwise serve every site its
user visits. So a handshake with an ``Origin`` must come from the server's own origin (host:port of
its ``Host`` header) or one listed in ``--allowed-origins``; clients that send no ``Origin`` (scripts,
services) are not browsers and are let through, as for HTTP.

A browser cannot set headers on a WebSocket, so the page sends the key as a subprotocol:
``["polyfuse.v1", "key.<base64url key>"]``, and the server accepts ``polyfuse.v1``. A URL would put
the key in server, proxy and history logs. The ``key`` query parameter still works for non-browser
clients that cannot set headers (it is part of the stream's tested protocol), but is discouraged.
"""
from __future__ import annotations

import base64
import binascii
from typing import Iterable
from urllib.parse import urlsplit

SUBPROTOCOL = "polyfuse.v1"
KEY_PREFIX = "key."
_DEFAULT_PORTS = {"http": 80, "ws": 80, "https": 443, "wss": 443}


def normalise_origin(origin: str) -> str | None:
    """``scheme://host:port`` in lower case with the default port made explicit, or None when it is not
    an http(s) origin (``null`` from sandboxed frames and file: pages among them)."""
    try:
        parts = urlsplit(origin.strip().lower())
        port = parts.port or _DEFAULT_PORTS.get(parts.scheme)
    except ValueError:  # a port that is not a number
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname or port is None:
        return None
    return f"{parts.scheme}://{parts.hostname}:{port}"


def parse_origins(text: str | Iterable[str] | None) -> tuple[str, ...]:
    """``--allowed-origins`` (comma-separated, or a list) -> normalised origins; ``*`` allows every origin.
    Raises ValueError naming an entry that is not an http(s) origin."""
    items = text.split(",") if isinstance(text, str) else list(text or ())
    out = []
    for item in (i.strip() for i in items):
        if not item:
            continue
        if item == "*":
            out.append("*")
            continue
        norm = normalise_origin(item)
        if norm is None or urlsplit(item).path not in ("", "/"):
            raise ValueError(f"{item!r} is not an origin; expected scheme://host[:port], e.g. https://app.example.com")
        out.append(norm)
    return tuple(out)


def origin_allowed(origin: str | None, host: str | None, secure: bool, allowed: tuple[str, ...]) -> bool:
    """Whether a handshake's ``Origin`` may open a stream: absent (not a browser), the server's own
    (host:port of ``Host``, which the browser sets and a page cannot), or in ``allowed``."""
    if origin is None:
        return True
    if "*" in allowed:
        return True
    norm = normalise_origin(origin)
    if norm is None:
        return False
    if norm in allowed:
        return True
    if not host:
        return False
    own = normalise_origin(f"{'https' if secure else 'http'}://{host}")
    # the scheme may differ behind a TLS-terminating proxy; host and port are what a page cannot forge
    return own is not None and own.split("://", 1)[1] == norm.split("://", 1)[1]


def offered_subprotocols(headers: dict[str, str]) -> list[str]:
    return [p.strip() for p in headers.get("sec-websocket-protocol", "").split(",") if p.strip()]


def subprotocol_key(offered: list[str]) -> str:
    """The key a browser sent as ``key.<base64url>`` (padding optional), or ''."""
    for proto in offered:
        if proto.startswith(KEY_PREFIX):
            text = proto[len(KEY_PREFIX):]
            try:
                return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode()
            except (binascii.Error, ValueError, UnicodeDecodeError):
                return ""
    return ""

"""Who may call the server and how often: API keys with ids, and a token bucket per key.

Keys come from ``--api-key-env`` (one key, id ``default``) and/or ``--api-keys FILE``, a YAML or
JSON file holding either a mapping ``id: key`` (or ``id: {key: ..., rate: ...}``) or a list of
``{id, key, rate}``. A presented key is compared with every configured key, each through
``hmac.compare_digest`` of sha256 digests, so the time taken says nothing about which key came
close or how long the keys are. Rates are requests per second (``10``, ``10/s``, ``600/min``);
``--rate-limit`` is the default for keys without their own, and without any keys it applies per
client address.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import math
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from polyfuse.errors import PolyfuseError

_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(?:/\s*(s|sec|second|m|min|minute|h|hour))?\s*$")
_PER = {None: 1.0, "s": 1.0, "sec": 1.0, "second": 1.0, "m": 60.0, "min": 60.0, "minute": 60.0,
        "h": 3600.0, "hour": 3600.0}


def parse_rate(text: Any, where: str = "--rate-limit") -> float:
    """'10', '10/s', '600/min', '5/h' or a number -> requests per second (> 0)."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        rate = float(text)
    else:
        m = _RATE.match(str(text))
        if m is None:
            raise PolyfuseError(f"{where} {text!r}: expected a rate such as 10/s, 600/min or 5")
        rate = float(m.group(1)) / _PER[m.group(2)]
    if not math.isfinite(rate) or rate <= 0:
        raise PolyfuseError(f"{where} {text!r}: the rate must be a positive number")
    return rate


@dataclass
class Key:
    id: str
    digest: bytes  # sha256 of the key: what is compared, so every comparison has the same length
    rate: float | None = None


def load_keys(path: str | Path) -> list[Key]:
    """The keys of an --api-keys file; errors name the file and the entry, never a key."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) if path.suffix.lower() != ".json" else json.loads(path.read_text())
    except FileNotFoundError:
        raise PolyfuseError(f"--api-keys {path}: file not found") from None
    except (yaml.YAMLError, ValueError, OSError) as e:
        raise PolyfuseError(f"--api-keys {path}: not valid YAML/JSON ({type(e).__name__})") from None
    if isinstance(data, dict):
        entries = [{"id": k, **(v if isinstance(v, dict) else {"key": v})} for k, v in data.items()]
    elif isinstance(data, list):
        entries = data
    else:
        raise PolyfuseError(f"--api-keys {path}: expected a mapping id -> key or a list of {{id, key, rate}}")
    keys: list[Key] = []
    for i, e in enumerate(entries):
        what = f"--api-keys {path}, entry {i + 1}"
        if not isinstance(e, dict) or not isinstance(e.get("id"), (str, int)) or not isinstance(e.get("key"), str):
            raise PolyfuseError(f"{what}: needs an 'id' and a 'key' (a string)")
        if unknown := set(e) - {"id", "key", "rate"}:
            raise PolyfuseError(f"{what}: unknown field(s) {sorted(unknown)}; allowed: id, key, rate")
        if len(e["key"]) < 8:
            raise PolyfuseError(f"{what} (id {e['id']!r}): the key is shorter than 8 characters; use a long "
                                "random key (e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`)")
        rate = parse_rate(e["rate"], f"{what}: rate") if e.get("rate") is not None else None
        keys.append(Key(str(e["id"]), _digest(e["key"]), rate))
    ids = [k.id for k in keys]
    if dupes := sorted({i for i in ids if ids.count(i) > 1}):
        raise PolyfuseError(f"--api-keys {path}: duplicate id(s) {dupes}")
    if len({k.digest for k in keys}) != len(keys):
        raise PolyfuseError(f"--api-keys {path}: two ids share the same key; give each client its own")
    if not keys:
        raise PolyfuseError(f"--api-keys {path}: no keys in the file")
    return keys


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def check_tls(cert: str | None, key: str | None) -> None:
    """Both or neither, and a pair that loads: a clear error at start-up rather than uvicorn's traceback."""
    if not cert and not key:
        return
    if not (cert and key):
        raise PolyfuseError("--tls-cert and --tls-key go together: give the certificate and its private key")
    import ssl

    for flag, path in (("--tls-cert", cert), ("--tls-key", key)):
        if not Path(path).is_file():
            raise PolyfuseError(f"{flag} {path}: file not found")
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)
    except (ssl.SSLError, ValueError) as e:
        raise PolyfuseError(f"--tls-cert {cert} / --tls-key {key}: not a matching PEM certificate and unencrypted "
                            f"private key ({e})") from None


class Bucket:
    """A token bucket: ``rate`` tokens a second, holding at most ``burst``."""

    __slots__ = ("rate", "burst", "tokens", "at")

    def __init__(self, rate: float, burst: float):
        self.rate, self.burst, self.tokens, self.at = rate, burst, burst, time.monotonic()

    def take(self, now: float) -> float:
        """0 when a token was taken, else the seconds until one will be there."""
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate


class Access:
    """Authentication and rate limits for the Guard; built once per app from the ServeConfig."""

    MAX_CLIENT_BUCKETS = 10_000  # per-address buckets when there are no keys: bounded, oldest dropped

    def __init__(self, api_key: str | None = None, keys_file: str | Path | None = None,
                 rate_limit: float | None = None):
        self.keys = load_keys(keys_file) if keys_file else []
        if api_key:
            if any(k.id == "default" for k in self.keys):
                raise PolyfuseError(f"--api-keys {keys_file}: the id 'default' is taken by --api-key-env's key")
            self.keys.append(Key("default", _digest(api_key)))
        self.default_rate = rate_limit
        self.required = bool(self.keys)
        self._buckets: dict[str, Bucket] = {}
        self._lock = threading.Lock()  # Ray Serve may call one app from several threads

    def identify(self, presented: str) -> str | None:
        """The id of the key presented, or None. Every key is compared, whatever matches."""
        digest, found = _digest(presented), None
        for key in self.keys:
            if hmac.compare_digest(digest, key.digest) and presented:
                found = key.id
        return found

    def rate_of(self, who: str) -> float | None:
        for key in self.keys:
            if key.id == who:
                return key.rate or self.default_rate
        return self.default_rate

    def throttle(self, who: str) -> float:
        """0 when ``who`` (a key id, or a client address without keys) may go on, else seconds to wait."""
        rate = self.rate_of(who) if self.required else self.default_rate
        if rate is None:
            return 0.0
        with self._lock:
            bucket = self._buckets.get(who)
            if bucket is None:
                if len(self._buckets) >= self.MAX_CLIENT_BUCKETS:
                    self._buckets.pop(next(iter(self._buckets)))
                # a burst of one second's requests (at least one): steady clients never wait
                bucket = self._buckets[who] = Bucket(rate, max(1.0, rate))
            return bucket.take(time.monotonic())

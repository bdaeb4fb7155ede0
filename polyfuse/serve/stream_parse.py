"""Stream messages to Python values, one implementation for both lanes (a preprocessing thread, or the
worker process of serve/heavy.py for large messages).

A samples message of plain numbers, ``{"samples": {"accel": [[0.1, 0.2], ...]}}``, is read straight into
float32 arrays: ``json.loads`` built a list per reading and a float per value, 350 ms of CPU for 1 MB of
two-channel readings (the per-stream budget lets a client send 512 KB a second), where checking the
brackets with numpy and converting the numbers in one pass takes ~100 ms. Every other message, and any
samples message this path does not recognise at once (NaN, an escape in a name, rows of unequal length,
a stray character...), goes through ``json.loads``, so the errors are those of the generic path. The
one difference: a number JSON spells otherwise but Python's ``float`` reads (``+1``, ``.5``) is taken.
The patterns here are character classes only, linear in the message.
"""
from __future__ import annotations

import json
import re
from typing import Any

import numpy as np

_ENVELOPE = re.compile(r'\s*\{\s*"samples"\s*:\s*\{(?P<members>[^{}]*)\}\s*\}\s*')
_MEMBER = re.compile(r'\s*"(?P<name>[A-Za-z0-9_.\- ]{1,200})"\s*:\s*(?P<array>\[[0-9\s,.eE+\-\[\]]*\])\s*(?:,|\Z)')
_SPACE = str.maketrans("", "", " \t\r\n")
_OPEN, _CLOSE, _COMMA = ord("["), ord("]"), ord(",")


def _numbers(text: str, count: int) -> np.ndarray | None:
    """``count`` comma-separated numbers as float32, or None."""
    tokens = text.split(",")
    if len(tokens) != count:
        return None
    try:
        return np.fromiter(map(float, tokens), np.float32, count)
    except ValueError:  # an empty or malformed number
        return None


def _array(text: str) -> np.ndarray | None:
    """A JSON array of numbers (flat, or rows all of one width) as float32; None when it is anything else."""
    t = text.translate(_SPACE)
    b = np.frombuffer(t.encode("ascii"), np.uint8)
    opens, closes = np.flatnonzero(b == _OPEN), np.flatnonzero(b == _CLOSE)
    if len(opens) != len(closes) or opens[0] != 0 or closes[-1] != len(b) - 1:
        return None
    if len(opens) == 1:  # flat: [1, 2, 3]
        return _numbers(t[1:-1], t.count(",") + 1) if len(t) > 2 else None
    starts, ends = opens[1:], closes[:-1]  # rows: [[1, 2], [3, 4]]
    if starts[0] != 1 or ends[-1] != len(b) - 2 or np.any(starts >= ends):
        return None
    if len(starts) > 1 and (np.any(starts[1:] != ends[:-1] + 2) or np.any(b[ends[:-1] + 1] != _COMMA)):
        return None  # between two rows exactly "],["
    commas = np.cumsum(b == _COMMA)
    per_row = commas[ends] - commas[starts]
    if np.any(per_row != per_row[0]):
        return None
    width = int(per_row[0]) + 1
    values = _numbers(t[2:-2].replace("],[", ","), len(starts) * width)
    return None if values is None else values.reshape(-1, width)


def _samples_fast(data: str) -> dict | None:
    envelope = _ENVELOPE.fullmatch(data)
    if envelope is None:
        return None
    members, pos, text = {}, 0, envelope.group("members")
    while pos < len(text):
        m = _MEMBER.match(text, pos)
        if m is None or m.group("name") in members:
            return None
        array = _array(m.group("array"))
        if array is None:
            return None
        members[m.group("name")] = array
        pos = m.end()
    return {"samples": members} if members else None


def parse_message(data: bytes | str) -> tuple[str, Any]:
    """("ok", body), each input's samples a float32 array where they are numeric (the windows check the
    shape), or ("error", what to tell the client)."""
    try:
        text = data if isinstance(data, str) else bytes(data).decode("ascii")
    except UnicodeDecodeError:
        text = None  # not ASCII: only json.loads reads it (numbers and brackets are ASCII)
    fast = _samples_fast(text) if text is not None else None
    if fast is not None:
        return "ok", fast
    try:
        body = json.loads(data)
    except RecursionError:  # json's C parser raises it past ~1000 levels of nesting
        return "error", "not a JSON message (nested too deeply)"
    except (ValueError, UnicodeDecodeError):
        return "error", "not a JSON message"
    samples = body.get("samples") if isinstance(body, dict) else None
    if isinstance(samples, dict):
        for name, values in samples.items():
            try:
                samples[name] = np.asarray(values, dtype=np.float32)
            except (ValueError, TypeError, OverflowError):
                pass  # left as sent: the windows name what is wrong with it
    return "ok", body

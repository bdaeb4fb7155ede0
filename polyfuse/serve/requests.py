"""Turning request bodies (JSON with base64, multipart, KServe V2 tensors) into records the shared
preprocessing accepts — and rejecting what is malformed with the record index and the field.

Binary inputs are only ever taken from the request itself: a string in an image/audio field must
be base64 (or a data: URI), never a path or URL, so the server reads no file a client names.
"""
from __future__ import annotations

import base64
import binascii
import json
import math
import re
from typing import Any

from polyfuse.errors import BadInputError, MediaTooLarge
from polyfuse.preprocess.budget import DecodeBudget
from polyfuse.serve.config import ServeConfig


class RequestError(Exception):
    """A client error: HTTP ``status`` with a message naming the record and field."""

    def __init__(self, status: int, message: str, record: int | None = None, field: str | None = None):
        super().__init__(message)
        self.status, self.message, self.record, self.field = status, message, record, field

    def body(self) -> dict[str, Any]:
        return {"error": self.message, "record": self.record, "field": self.field}


def _b64(value: str, record: int, field: str) -> bytes:
    if value.startswith("data:") and ";base64," not in value:
        raise RequestError(400, f"record {record}, field '{field}': a data: URI must be base64 (';base64,')",
                           record, field)
    text = value.split(";base64,", 1)[1] if value.startswith("data:") else value
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(400, f"record {record}, field '{field}': not valid base64 (binary inputs are sent as "
                                "base64 strings in JSON, or as files in multipart; never as a path on the server)", record, field) from None


def _series(value: Any, record: int, field: str) -> Any:
    """A time series from a request: an array of readings ([steps] or [steps][channels], null for a gap),
    a JSON array in a string, or a base64 file (CSV/NPY/Parquet) -- never a path on the server."""
    if isinstance(value, str):
        if value.lstrip().startswith("["):
            return value  # parsed (and checked) by the timeseries decoder
        return _b64(value, record, field)
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, list):
        import numpy as np

        try:
            arr = np.asarray([[np.nan if c is None else c for c in r] if isinstance(r, list) else
                              (np.nan if r is None else r) for r in value], dtype=np.float32)
        except (TypeError, ValueError):
            arr = None
        if arr is not None and arr.ndim in (1, 2) and arr.size:
            return arr
    raise RequestError(400, f"record {record}, field '{field}': expected an array of readings ([steps] or "
                            f"[steps][channels] numbers, null for a gap) or a base64 CSV/NPY/Parquet file, got "
                            f"{type(value).__name__}", record, field)


def check_media(kind: str, data: bytes, record: int, field: str, budget: DecodeBudget) -> None:
    """Size limits read from the file header before anything is decoded: the record's own (pixels,
    seconds, samples per second) and the request's total decoded size, both in ``budget``."""
    from polyfuse.preprocess.audio_file import probe_audio
    from polyfuse.preprocess.image import open_image

    label = "image" if kind == "image" else "audio"
    try:
        if kind == "image":
            with open_image(data, budget=budget) as img:
                declared = img.size[0] * img.size[1] * len(img.getbands())
        else:
            declared = 4 * (probe_audio(data, budget, label) or 0)  # decoded as float32
        budget.charge(declared, label)
    except MediaTooLarge as e:
        raise RequestError(413, f"record {record}, field '{field}': {e.reason}", record, field) from None
    except BadInputError as e:
        raise RequestError(400, f"record {record}, field '{field}': {e.reason}", record, field) from None


def clean_record(raw: Any, index: int, spec: Any, budget: DecodeBudget) -> dict[str, Any]:
    """Validate one JSON/multipart record: known fields only, base64 media, finite numbers."""
    if not isinstance(raw, dict):
        raise RequestError(400, f"record {index}: expected an object mapping input names to values, "
                                f"got {type(raw).__name__}", index)
    columns = {spec.column(n): (n, c) for n, c in spec.inputs.items()}
    out: dict[str, Any] = {}
    for field, value in raw.items():
        if field not in columns:
            raise RequestError(400, f"record {index}: unknown input '{field}'; the model's inputs are "
                                    f"{sorted(columns)}", index, field)
        _, cfg_in = columns[field]
        if value is None:
            continue
        sound_of_video = cfg_in.type == "audio" and getattr(cfg_in, "track", None) == "audio"
        if cfg_in.type in ("image", "audio") and not sound_of_video:
            if isinstance(value, str):
                value = _b64(value, index, field)
            elif not isinstance(value, (bytes, bytearray)):
                raise RequestError(400, f"record {index}, field '{field}': expected a base64 string, "
                                        f"got {type(value).__name__}", index, field)
            check_media(cfg_in.type, bytes(value), index, field, budget)
        elif cfg_in.type == "video" or sound_of_video:  # base64 file bytes, never a path on the server; frames are charged
            if not isinstance(value, (str, bytes, bytearray)):  # to the budget as they are decoded
                raise RequestError(400, f"record {index}, field '{field}': expected a base64 string of a video "
                                        f"file, got {type(value).__name__}", index, field)
            value = _b64(value, index, field) if isinstance(value, str) else bytes(value)
            budget.charge(len(value), "video")
        elif cfg_in.type == "timeseries":
            value = _series(value, index, field)
        elif cfg_in.type == "number":
            if isinstance(value, bool) or not isinstance(value, (int, float, str)):
                raise RequestError(400, f"record {index}, field '{field}': expected a number, got "
                                        f"{type(value).__name__}", index, field)
            try:
                value = float(value)
            except (ValueError, OverflowError):  # OverflowError: an integer too large for a float
                raise RequestError(400, f"record {index}, field '{field}': expected a number, got {value!r}",
                                   index, field) from None
            if not math.isfinite(value):
                raise RequestError(400, f"record {index}, field '{field}': {value} is not a finite number; send "
                                        "null (or leave the field out) for a missing value", index, field)
        elif cfg_in.type in ("text", "category") and not isinstance(value, (str, int, float)):
            raise RequestError(400, f"record {index}, field '{field}': expected a string, got "
                                    f"{type(value).__name__}", index, field)
        out[field] = value
    return out


def json_records(body: Any, spec: Any, cfg: ServeConfig, budget: DecodeBudget) -> list[dict[str, Any]]:
    """``{"records": [...]}`` or one record object."""
    if isinstance(body, dict) and "records" in body:
        records = body["records"]
        if not isinstance(records, list):
            raise RequestError(400, "'records' must be a list of objects", None, "records")
    elif isinstance(body, dict):
        records = [body]
    else:
        raise RequestError(400, 'expected a JSON object: {"records": [{"<input>": <value>, ...}, ...]}')
    if not records:
        raise RequestError(400, "no records to predict", None, "records")
    if len(records) > cfg.max_records:
        raise RequestError(413, f"{len(records)} records in one request, over the limit of {cfg.max_records}; "
                                "split the request", None, "records")
    return [clean_record(r, i, spec, budget) for i, r in enumerate(records)]


_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')


def parse_json(raw: bytes, spec: Any, cfg: ServeConfig) -> Any:
    """``json.loads`` after a structural check: a body with more values than ``max_records`` records of
    this model can hold is refused before Python objects are built for it (a 16 MB body of empty
    records would otherwise cost ~500 MB)."""
    # separators and objects that a full request needs, in either protocol; every element of a list or
    # member of an object past the first costs a comma, so this bounds the objects built
    n = len(spec.inputs)
    limit = cfg.max_records * (2 * n + 4) + 16 * n + 64
    if raw.count(b",") + raw.count(b"{") > limit:
        # the quick count includes text inside strings; count again without them before refusing
        bare = _JSON_STRING.sub(b'""', raw)
        count = bare.count(b",") + bare.count(b"{")
        if count > limit:
            raise RequestError(413, f"the JSON body holds {count} values, more than {cfg.max_records} records can; "
                                    "split the request")
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise RequestError(400, f"the request body is not valid JSON ({getattr(e, 'msg', None) or type(e).__name__})") from None
    except ValueError as e:  # an integer literal past Python's digit limit, among others
        raise RequestError(400, f"the request body could not be read as JSON ({e}); send numbers as floats of "
                                "ordinary size") from None

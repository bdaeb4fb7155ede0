"""Turning request bodies (JSON with base64, multipart, KServe V2 tensors) into records the shared
preprocessing accepts — and rejecting what is malformed with the record index and the field.

Binary inputs are only ever taken from the request itself: a string in an image/audio field must
be base64 (or a data: URI), never a path or URL, so the server reads no file a client names.
"""
from __future__ import annotations

import base64
import binascii
import io
import math
from typing import Any

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
                                "base64 strings in JSON, or as files in multipart)", record, field) from None


def check_media(kind: str, data: bytes, record: int, field: str, cfg: ServeConfig) -> None:
    """Size limits read from the file header, before anything is decoded."""
    if kind == "image":
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(io.BytesIO(data)) as img:
                w, h = img.size
        except Image.DecompressionBombError as e:  # PIL refuses to open it at all: over 2x its own pixel limit
            raise RequestError(413, f"record {record}, field '{field}': image is too large ({e}); resize it before "
                                    "sending", record, field) from None
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
            return  # the shared decoder reports undecodable images with its own message
        if w * h > cfg.max_pixels:
            raise RequestError(413, f"record {record}, field '{field}': image is {w}x{h} = {w * h} pixels, over the "
                                    f"server's limit of {cfg.max_pixels}; resize it before sending", record, field)
    elif kind == "audio":
        import soundfile as sf

        try:
            info = sf.info(io.BytesIO(data))
        except (RuntimeError, sf.LibsndfileError, TypeError, ValueError):
            return
        if info.samplerate and info.frames / info.samplerate > cfg.max_audio_seconds:
            raise RequestError(413, f"record {record}, field '{field}': audio lasts {info.frames / info.samplerate:.1f} s,"
                                    f" over the server's limit of {cfg.max_audio_seconds:g} s", record, field)


def clean_record(raw: Any, index: int, spec: Any, cfg: ServeConfig) -> dict[str, Any]:
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
        if cfg_in.type in ("image", "audio"):
            if isinstance(value, str):
                value = _b64(value, index, field)
            elif not isinstance(value, (bytes, bytearray)):
                raise RequestError(400, f"record {index}, field '{field}': expected a base64 string, "
                                        f"got {type(value).__name__}", index, field)
            check_media(cfg_in.type, bytes(value), index, field, cfg)
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


def json_records(body: Any, spec: Any, cfg: ServeConfig) -> list[dict[str, Any]]:
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
    return [clean_record(r, i, spec, cfg) for i, r in enumerate(records)]

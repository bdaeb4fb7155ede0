"""The KServe V2 / Open Inference Protocol: metadata, and inference requests and responses in JSON
or with Triton's binary tensor extension (what the `tritonclient` HTTP client sends by default).

Inputs: image/audio/text/category as BYTES (in JSON, image/audio elements are base64 strings),
numbers as FP32/FP64/INT32/INT64, shape [N] or [N, 1]; an input left out is missing for every
record, an empty BYTES element or a NaN number is missing for that record. Outputs: for each
model output ``o``, ``o`` (FP32 [N, classes] probabilities, or [N] for numbers) and ``o_label``
(BYTES [N]).
"""
from __future__ import annotations

import json
import math
import struct
from typing import Any

import numpy as np

from polyfuse.preprocess.budget import DecodeBudget
from polyfuse.serve.config import ServeConfig
from polyfuse.serve.requests import RequestError, clean_record, parse_json

NUMERIC = {"FP32": "<f4", "FP64": "<f8", "INT32": "<i4", "INT64": "<i8", "FP16": "<f2", "INT16": "<i2", "INT8": "i1",
           "UINT8": "u1", "UINT16": "<u2", "UINT32": "<u4", "UINT64": "<u8", "BOOL": "?"}
HEADER = "inference-header-content-length"


def datatype(input_type: str) -> str:
    return "FP32" if input_type == "number" else "BYTES"


def model_metadata(name: str, version: str, platform: str, spec: Any, classes: dict[str, list]) -> dict[str, Any]:
    inputs = [{"name": spec.column(n), "datatype": datatype(c.type), "shape": [-1]} for n, c in spec.inputs.items()]
    outputs = []
    for n, c in spec.outputs.items():
        outputs.append({"name": n, "datatype": "FP32", "shape": [-1] if c.type == "number" else [-1, len(classes[n])]})
        outputs.append({"name": f"{n}_label", "datatype": "BYTES", "shape": [-1]})
    return {"name": name, "versions": [version], "platform": platform, "inputs": inputs, "outputs": outputs,
            "properties": {"classes": json.dumps(classes)}}


def _split_body(body: bytes, header_length: str | None, spec: Any, cfg: ServeConfig) -> tuple[dict, bytes]:
    if header_length is not None:
        try:
            n = int(header_length)
        except ValueError:
            raise RequestError(400, f"Inference-Header-Content-Length must be an integer, got {header_length!r}") from None
        if not 0 < n <= len(body):
            raise RequestError(400, f"Inference-Header-Content-Length {n} does not fit the {len(body)}-byte body")
        head, rest = body[:n], body[n:]
    else:
        head, rest = body, b""
    request = parse_json(head, spec, cfg)
    if not isinstance(request, dict) or not isinstance(request.get("inputs"), list):
        raise RequestError(400, "an inference request needs an 'inputs' list of tensors")
    if not isinstance(request.get("parameters", {}), (dict, type(None))):
        raise RequestError(400, "'parameters' must be an object", None, "parameters")
    outputs = request.get("outputs")
    if outputs is not None and not (isinstance(outputs, list) and all(
            isinstance(o, dict) and isinstance(o.get("parameters", {}), (dict, type(None))) for o in outputs)):
        raise RequestError(400, "'outputs' must be a list of objects with a 'name' (and optional 'parameters' "
                                "object)", None, "outputs")
    return request, rest


def _binary_elements(raw: bytes, dtype: str, count: int, name: str) -> list:
    if dtype == "BYTES":
        out, pos = [], 0
        while pos < len(raw):
            if pos + 4 > len(raw):
                raise RequestError(400, f"input '{name}': truncated BYTES element length", None, name)
            if len(out) == count:  # more elements than the shape says: refused before they are all built
                raise RequestError(400, f"input '{name}': the binary data holds more than the {count} elements its "
                                        "shape says", None, name)
            (size,) = struct.unpack_from("<I", raw, pos)
            out.append(raw[pos + 4 : pos + 4 + size])
            pos += 4 + size
            if pos > len(raw):
                raise RequestError(400, f"input '{name}': truncated BYTES element", None, name)
        return out
    if dtype not in NUMERIC:
        raise RequestError(400, f"input '{name}': unsupported datatype {dtype!r}", None, name)
    itemsize = np.dtype(NUMERIC[dtype]).itemsize
    if len(raw) % itemsize:
        raise RequestError(400, f"input '{name}': {len(raw)} bytes of binary data is not a whole number of "
                                f"{dtype} elements", None, name)
    if len(raw) // itemsize != count:
        raise RequestError(400, f"input '{name}': {len(raw) // itemsize} {dtype} elements of binary data, but its "
                                f"shape says {count}", None, name)
    arr = np.frombuffer(raw, dtype=NUMERIC[dtype])
    return arr.tolist()


def parse_infer(body: bytes, header_length: str | None, spec: Any, cfg: ServeConfig,
                budget: DecodeBudget) -> tuple[list[dict], dict]:
    """V2 request -> (records, request JSON). Each record maps an input column to its value; media
    headers are checked against ``budget``."""
    request, binary = _split_body(body, header_length, spec, cfg)
    columns = {spec.column(n): c for n, c in spec.inputs.items()}
    values: dict[str, list] = {}
    offset, n_rows = 0, None
    for tensor in request["inputs"]:
        name, shape, dtype = _tensor_header(tensor, columns, cfg)
        size = (tensor.get("parameters") or {}).get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or size < 0 or offset + size > len(binary):
                raise RequestError(400, f"input '{name}': binary_data_size {size} exceeds the binary body", None, name)
            data = _binary_elements(binary[offset : offset + size], dtype, shape[0], name)
            offset += size
        else:
            data = tensor.get("data")
            if not isinstance(data, list):
                raise RequestError(400, f"input '{name}': 'data' must be a list", None, name)
            data = _flatten(data)
        if len(data) != shape[0]:
            raise RequestError(400, f"input '{name}': shape {shape} says {shape[0]} elements, data has {len(data)}",
                               None, name)
        if n_rows is not None and shape[0] != n_rows:
            raise RequestError(400, f"input '{name}': batch size {shape[0]} differs from the other inputs' {n_rows}",
                               None, name)
        n_rows = shape[0]
        values[name] = data
    if not n_rows:
        raise RequestError(400, "the request has no input data")
    if n_rows > cfg.max_records:
        raise RequestError(413, f"batch of {n_rows} records over the limit of {cfg.max_records}; split the request")
    return [_record(values, columns, i, spec, budget) for i in range(n_rows)], request


def _tensor_header(tensor: Any, columns: dict[str, Any], cfg: ServeConfig) -> tuple[str, list[int], str]:
    """(name, shape, datatype) of one input tensor, checked before any of its data is read."""
    if not isinstance(tensor, dict) or not isinstance(tensor.get("name"), str):
        raise RequestError(400, "each input tensor needs a 'name', 'shape', 'datatype' and 'data'")
    name, dtype, shape = tensor["name"], tensor.get("datatype"), tensor.get("shape")
    if not isinstance(tensor.get("parameters", {}), (dict, type(None))):
        raise RequestError(400, f"input '{name}': 'parameters' must be an object", None, name)
    if name not in columns:
        raise RequestError(400, f"unknown input '{name}'; the model's inputs are {sorted(columns)}", None, name)
    if not isinstance(shape, list) or not shape or not all(isinstance(s, int) and s >= 0 for s in shape):
        raise RequestError(400, f"input '{name}': 'shape' must be a list of non-negative integers", None, name)
    if len(shape) > 2 or (len(shape) == 2 and shape[1] != 1):
        raise RequestError(400, f"input '{name}': shape must be [N] or [N, 1], got {shape}", None, name)
    if shape[0] > cfg.max_records:  # before any of its data is read
        raise RequestError(413, f"batch of {shape[0]} records over the limit of {cfg.max_records}; split the request")
    expected = datatype(columns[name].type)
    allowed = {"BYTES"} if expected == "BYTES" else set(NUMERIC) - {"BOOL"}
    if columns[name].type == "category":
        allowed |= {"INT32", "INT64"}
    if dtype not in allowed:
        raise RequestError(400, f"input '{name}': datatype {dtype!r} not accepted; send {expected}", None, name)
    return name, shape, dtype


def _record(values: dict[str, list], columns: dict[str, Any], i: int, spec: Any, budget: DecodeBudget) -> dict:
    """Row ``i`` of the request's tensors as a cleaned record; empty bytes, NaN and "" are missing."""
    raw: dict[str, Any] = {}
    for name, data in values.items():
        v = data[i]
        kind = columns[name].type
        if isinstance(v, (bytes, bytearray)):
            if len(v) == 0:
                continue
            if kind not in ("image", "audio", "video"):
                try:
                    v = bytes(v).decode("utf-8")
                except UnicodeDecodeError:
                    raise RequestError(400, f"record {i}, field '{name}': text is not UTF-8", i, name) from None
        elif isinstance(v, float) and math.isnan(v):
            continue
        elif v == "" and kind != "number":
            continue
        raw[name] = v
    return clean_record(raw, i, spec, budget)


def _flatten(data: list) -> list:
    return [x for row in data for x in (row if isinstance(row, list) else [row])]


def _serialize_bytes(items: list[str]) -> bytes:
    return b"".join(struct.pack("<I", len(b)) + b for b in (s.encode("utf-8") for s in items))


def build_response(model: str, version: str, request: dict, probs: dict[str, np.ndarray],
                   labels: dict[str, list]) -> tuple[bytes, dict[str, str]]:
    """V2 response body (JSON, or JSON + binary tensors when asked) and extra headers."""
    tensors: dict[str, tuple[str, list[int], Any]] = {}
    for name in labels:  # the model's outputs only: probs may hold extras (gated fusion's modality weights)
        arr = np.asarray(probs[name], dtype=np.float32)
        tensors[name] = ("FP32", list(arr.shape), arr)
        # an abstained prediction (None) is an empty string, not the text "None"
        tensors[f"{name}_label"] = ("BYTES", [len(labels[name])], ["" if v is None else str(v) for v in labels[name]])
    wanted = request.get("outputs")
    params = request.get("parameters") or {}
    binary_all = bool(params.get("binary_data_output"))
    selected: list[tuple[str, bool]] = []
    if wanted:
        for item in wanted:
            name = item.get("name") if isinstance(item, dict) else None
            if name not in tensors:
                raise RequestError(400, f"unknown output {name!r}; outputs are {sorted(tensors)}", None, "outputs")
            selected.append((name, bool((item.get("parameters") or {}).get("binary_data", binary_all))))
    else:
        selected = [(name, binary_all) for name in tensors]
    outputs, blobs = [], []
    for name, binary in selected:
        dtype, shape, data = tensors[name]
        entry: dict[str, Any] = {"name": name, "datatype": dtype, "shape": shape}
        if binary:
            blob = data.tobytes() if dtype == "FP32" else _serialize_bytes(data)
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = data.reshape(-1).tolist() if dtype == "FP32" else data
        outputs.append(entry)
    head = {"model_name": model, "model_version": version, "outputs": outputs}
    if "id" in request:
        head["id"] = str(request["id"])
    body = json.dumps(head).encode()
    if not blobs:
        return body, {"content-type": "application/json"}
    return body + b"".join(blobs), {"content-type": "application/octet-stream", HEADER: str(len(body))}

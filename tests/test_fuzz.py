"""Property-based fuzzing (hypothesis): whatever a spec, a file or a request holds, the answer is a
model or a clear error of the documented kind, never another exception.

- spec validation: random and near-valid dicts -> a Spec or a SpecError;
- decoding: random and mutated image/audio bytes -> pixels/samples or a BadInputError;
- request parsing (/predict JSON and KServe V2): random bodies -> records or a 4xx RequestError;
- schemathesis over the live server's own OpenAPI (every route, /predict with a records body): no 5xx.

Examples are capped so the file stays under a minute on two busy cores; no example database is written.
"""
from __future__ import annotations

import base64
import io
import json
import math

import numpy as np
import pytest
import soundfile as sf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from polyfuse.errors import BadInputError, SpecError
from polyfuse.preprocess.audio_file import decode_audio
from polyfuse.preprocess.image import decode_image
from polyfuse.serve.config import ServeConfig
from polyfuse.serve.protocol import parse_infer
from polyfuse.serve.requests import RequestError, json_records, parse_json
from polyfuse.spec.schema import load_spec
from tests.conftest import toy_spec

FAST = settings(max_examples=200, deadline=None, database=None, suppress_health_check=list(HealthCheck))
CFG = ServeConfig(max_records=8, max_pixels=512 * 512, max_audio_seconds=5.0, max_decode_mb=16)

scalars = (st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=True, allow_infinity=True)
           | st.text(max_size=12))
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)


# ---------------------------------------------------------------------------- spec validation
TYPES = ["image", "audio", "text", "number", "category", "video", "bogus", 3, None]
FIELDS = ["type", "column", "size", "channels", "sample_rate", "features", "n_mfcc", "n_mels", "max_seconds",
          "window_ms", "hop_ms", "tokenizer", "max_length", "encoder", "augment", "dim", "deidentify", "mean",
          "std", "buckets", "max_ngrams", "weight", "abstain_below", "separator", "classes", "head"]
SECTIONS = {
    "fusion": st.dictionaries(st.sampled_from(["method", "dim", "modality_dropout", "heads", "rank", "x"]),
                              json_values | st.sampled_from(["concat", "gated", "attention", "lowrank"]), max_size=4),
    "train": st.dictionaries(st.sampled_from(["epochs", "batch_size", "lr", "optimizer", "seed", "early_stopping",
                                              "threads", "dp"]), json_values, max_size=4),
    "data": st.dictionaries(st.sampled_from(["train", "test", "split", "memory_budget_mb", "storage"]),
                            json_values, max_size=3),
}


def _entry(types: list) -> st.SearchStrategy:
    return st.builds(lambda t, extra: {"type": t, **extra}, st.sampled_from(types),
                     st.dictionaries(st.sampled_from(FIELDS[1:]), json_values, max_size=4))


near_valid_specs = st.fixed_dictionaries(
    {"inputs": st.dictionaries(st.text(min_size=1, max_size=6), _entry(TYPES), max_size=3),
     "outputs": st.dictionaries(st.text(min_size=1, max_size=6),
                                _entry(["category", "binary", "number", "multilabel", "x"]), max_size=2)},
    optional=SECTIONS)


@FAST
@given(spec=near_valid_specs | st.dictionaries(st.text(max_size=8), json_values, max_size=5))
def test_spec_validation_gives_a_spec_or_a_spec_error(spec):
    try:
        load_spec(spec)
    except SpecError as e:
        assert str(e).strip()


# ---------------------------------------------------------------------------- decoding media
def _image_seeds() -> list[bytes]:
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 255, (9, 7, 3), dtype=np.uint8))
    out = []
    for fmt in ("PNG", "JPEG", "BMP", "GIF", "TIFF", "WEBP"):
        buf = io.BytesIO()
        img.save(buf, fmt)
        out.append(buf.getvalue())
    from tests.test_image_metadata import phone_jpeg

    return out + [phone_jpeg()[0]]  # EXIF with orientation and GPS: the metadata path too


def _audio_seeds() -> list[bytes]:
    wave = (0.5 * np.sin(np.arange(800) / 5)).astype(np.float32)
    out = []
    for fmt, sub in (("WAV", "PCM_16"), ("WAV", "FLOAT"), ("FLAC", "PCM_16"), ("OGG", "VORBIS")):
        buf = io.BytesIO()
        sf.write(buf, wave, 8000, format=fmt, subtype=sub)
        out.append(buf.getvalue())
    return out


def mutated(seeds: list[bytes]) -> st.SearchStrategy:
    """A real file with a few bytes overwritten and maybe cut short: what reaches the decoder's depths."""
    def mutate(seed: bytes, edits: list[tuple[float, int]], cut: float) -> bytes:
        data = bytearray(seed)
        for where, value in edits:
            data[int(where * (len(data) - 1))] = value
        return bytes(data[:max(1, int(len(data) * cut))])

    return st.builds(mutate, st.sampled_from(seeds), st.lists(st.tuples(st.floats(0, 1), st.integers(0, 255)),
                                                              max_size=6),
                     st.sampled_from([1.0, 1.0, 0.9, 0.5, 0.1]))


@FAST
@given(data=st.binary(max_size=512) | mutated(_image_seeds()))
def test_image_decode_gives_pixels_or_a_bad_input_error(data):
    try:
        pixels = decode_image(data, (8, 8), channels=3, budget=CFG.budget())
    except BadInputError as e:
        assert e.reason
        return
    assert pixels.shape == (3, 8, 8) and np.isfinite(pixels).all() and pixels.min() >= 0 and pixels.max() <= 1


@FAST
@given(data=st.binary(max_size=512) | mutated(_audio_seeds()))
def test_audio_decode_gives_samples_or_a_bad_input_error(data):
    try:
        wave = decode_audio(data, 8000, budget=CFG.budget())
    except BadInputError as e:
        assert e.reason
        return
    assert wave.ndim == 1 and wave.size and np.isfinite(wave).all()


# ---------------------------------------------------------------------------- request parsing
@pytest.fixture(scope="module")
def spec(toy_csv):
    return load_spec(toy_spec(toy_csv))[0]


def _b64(seeds: list[bytes]) -> st.SearchStrategy:
    return st.builds(lambda b: base64.b64encode(b).decode(), st.binary(max_size=64) | mutated(seeds))


FIELD_VALUES = {"photo": _b64(_image_seeds()) | scalars, "sound": _b64(_audio_seeds()) | scalars,
                "note": scalars, "weight": scalars | st.just("1e999"), "color": scalars}
record = st.dictionaries(st.sampled_from([*FIELD_VALUES, "other"]), scalars, max_size=5).flatmap(
    lambda d: st.fixed_dictionaries({k: FIELD_VALUES.get(k, scalars) for k in d}))
predict_bodies = (st.fixed_dictionaries({"records": st.lists(record, max_size=10) | json_values}) | record
                  | json_values)


def _is_client_error(e: RequestError) -> bool:
    return 400 <= e.status < 500 and bool(e.message)


@FAST
@given(body=predict_bodies, raw=st.none() | st.binary(max_size=64))
def test_predict_body_parses_to_records_or_a_4xx(spec, body, raw):
    data = raw if raw is not None else json.dumps(body, allow_nan=True).encode()
    try:
        records = json_records(parse_json(data, spec, CFG), spec, CFG, CFG.budget())
    except RequestError as e:
        assert _is_client_error(e), e.status
        return
    assert 1 <= len(records) <= CFG.max_records
    assert all(isinstance(v, float) and math.isfinite(v) for r in records for k, v in r.items() if k == "weight")


tensor = st.fixed_dictionaries(
    {"name": st.sampled_from(["photo", "sound", "note", "weight", "color", "x"]) | scalars,
     "datatype": st.sampled_from(["BYTES", "FP32", "FP64", "INT64", "UINT8", "BOOL", "XX"]) | scalars,
     "shape": st.lists(st.integers(-2, 12), max_size=3) | json_values,
     "data": st.lists(scalars, max_size=10) | json_values},
    optional={"parameters": st.dictionaries(st.sampled_from(["binary_data_size", "x"]), json_values, max_size=2)})
infer_bodies = st.fixed_dictionaries({"inputs": st.lists(tensor, max_size=4) | json_values},
                                     optional={"outputs": json_values, "id": scalars, "parameters": json_values})


@FAST
@given(body=infer_bodies | json_values, binary=st.binary(max_size=32), header=st.none() | st.integers(-5, 400))
def test_v2_infer_body_parses_or_gives_a_4xx(spec, body, binary, header):
    head = json.dumps(body, allow_nan=True).encode()
    try:
        records, _ = parse_infer(head + binary, None if header is None else str(header), spec, CFG, CFG.budget())
    except RequestError as e:
        assert _is_client_error(e), e.status
        return
    assert isinstance(records, list)


# ---------------------------------------------------------------------------- schemathesis, live server
RECORD_SCHEMA = {"type": "object", "additionalProperties": False, "properties": {
    "photo": {"type": ["string", "null"]}, "sound": {"type": ["string", "null"]},
    "note": {"type": ["string", "null"]}, "weight": {"type": ["number", "null"]},
    "color": {"type": ["string", "null"], "enum": ["red", "green", None]}}}


@pytest.fixture(scope="module")
def server(toy_dir, tmp_path_factory):
    from tests.serving import Server

    s = Server(toy_dir, ["--max-records", "8", "--max-batch", "1"], tmp_path_factory.mktemp("fuzz-logs"))
    yield s
    s.stop()


def test_schemathesis_over_the_servers_own_openapi(server):
    """Every operation the app documents, /predict with a real body schema (records of this model), positive
    and negative data: no response may be a 5xx, and the server is still ready afterwards."""
    import httpx
    import schemathesis
    from schemathesis import GenerationMode

    from tests.test_serve_protocol import fuzz_operation

    doc = httpx.get(server.url + "/openapi.json", timeout=10).json()
    doc["paths"]["/predict"]["post"]["requestBody"] = {"required": True, "content": {"application/json": {"schema": {
        "type": "object", "required": ["records"],
        "properties": {"records": {"type": "array", "maxItems": 10, "items": RECORD_SCHEMA}}}}}}
    schema = schemathesis.openapi.from_dict(doc)
    operations = [result.ok() for result in schema.get_all_operations()]
    labels = {op.label for op in operations}
    assert {"POST /predict", "GET /schema", "GET /v2/health/ready"} <= labels, labels
    failures: list[str] = []
    statuses: dict[str, set[int]] = {}
    for op in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            fuzz_operation(op.as_strategy(mode), server.url, op.label, mode, 50 if op.label == "POST /predict" else 5,
                           statuses, failures)
    assert not failures, "\n\n".join(failures)
    assert 400 in statuses["POST /predict"], statuses["POST /predict"]
    # random records rarely decode (photo and sound are random strings), so the model's answer is checked on
    # one record that does: the fuzzing left the server ready and answering
    ok = httpx.post(server.url + "/predict", json={"records": [{"note": "fuzzed", "weight": 1.5, "color": "red"}]},
                    timeout=30)
    assert ok.status_code == 200, ok.text
    assert len(ok.json()["predictions"]) == 1
    httpx.get(server.url + "/v2/health/ready", timeout=10).raise_for_status()

"""The KServe V2 / Open Inference Protocol as other tools see it, against a live `polyfuse serve`:
every V2 response body validated against the protocol's OpenAPI schemas, schemathesis fuzzing
the V2 operations for server errors, and Triton's own HTTP client (binary tensors and JSON).
"""
from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml

from tests.serving import Server, b64, toy_records

SPEC = Path(__file__).resolve().parents[1].parent / "shared" / "specs" / "open_inference_rest.yaml"
NAME = "toy"  # the model's name is its artifact folder's name


@pytest.fixture(scope="module")
def server(toy_dir, tmp_path_factory):
    s = Server(toy_dir, ["--max-records", "16"], tmp_path_factory.mktemp("protocol-logs"))
    yield s
    s.stop()


@pytest.fixture(scope="module")
def oip_spec() -> dict:
    if not SPEC.exists():
        pytest.skip(f"the Open Inference Protocol OpenAPI file is not at {SPEC} (see shared/specs/README.md)")
    return yaml.safe_load(SPEC.read_text())


def validate(spec: dict, schema_name: str, instance: Any) -> None:
    """Validate against ``components/schemas/<schema_name>``, resolving its $refs inside the document."""
    import jsonschema

    assert schema_name in spec["components"]["schemas"], schema_name
    schema = {"$ref": f"#/components/schemas/{schema_name}", "components": spec["components"]}
    jsonschema.Draft7Validator(schema).validate(instance)


def infer_body(records: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    """A V2 JSON request for records that all have the same inputs (base64 strings for binary data)."""
    names = list(records[0])
    inputs = []
    for name in names:
        values = [r[name] for r in records]
        dtype = "FP32" if name == "weight" else "BYTES"
        data = [b64(v) if isinstance(v, bytes) else v for v in values]
        inputs.append({"name": name, "shape": [len(records)], "datatype": dtype, "data": data})
    return {"inputs": inputs, **extra}


# ---------------------------------------------------------------------------- conformance
def test_v2_responses_conform_to_the_protocol_schemas(server, oip_spec, reference, toy_csv):
    records = toy_records(toy_csv, 3)
    with server.client() as c:
        for path in ("/v2", "/v2/"):
            r = c.get(path)
            assert r.status_code == 200
            validate(oip_spec, "metadata_server_response", r.json())
            assert "binary_tensor_data" in r.json()["extensions"]

        for path in (f"/v2/models/{NAME}", f"/v2/models/{NAME}/versions/1"):
            r = c.get(path)
            assert r.status_code == 200
            meta = r.json()
            validate(oip_spec, "metadata_model_response", meta)
            assert meta["name"] == NAME and meta["versions"] == ["1"]
            assert {t["name"]: t["datatype"] for t in meta["inputs"]} == {
                "photo": "BYTES", "sound": "BYTES", "note": "BYTES", "weight": "FP32", "color": "BYTES"}
            assert meta["outputs"] == [{"name": "label", "datatype": "FP32", "shape": [-1, 3]},
                                       {"name": "label_label", "datatype": "BYTES", "shape": [-1]}]

        for path in ("/v2/models/nope", f"/v2/models/{NAME}/versions/9", "/v2/models/nope/ready"):
            r = c.get(path)
            assert r.status_code == 404, path
            validate(oip_spec, "metadata_model_error_response", r.json())

        for path in ("/v2/health/live", "/v2/health/ready", f"/v2/models/{NAME}/ready",
                     f"/v2/models/{NAME}/versions/1/ready"):
            r = c.get(path)
            assert r.status_code == 200 and r.json().get("ready", r.json().get("live")) is True, path

        # inference, every output and then one requested output; the id is echoed as a string
        for path in (f"/v2/models/{NAME}/infer", f"/v2/models/{NAME}/versions/1/infer"):
            r = c.post(path, json=infer_body(records, id="req-42"))
            assert r.status_code == 200, r.text
            body = r.json()
            validate(oip_spec, "inference_response", body)
            assert body["id"] == "req-42" and body["model_name"] == NAME and body["model_version"] == "1"
            outputs = {o["name"]: o for o in body["outputs"]}
            assert outputs["label"]["shape"] == [3, 3] and outputs["label"]["datatype"] == "FP32"
            proba = reference.predict_proba(records).to_numpy()
            assert np.abs(np.array(outputs["label"]["data"]).reshape(3, 3) - proba).max() <= 1e-4
            assert outputs["label_label"]["data"] == reference.predict(records)["label"].tolist()
        r = c.post(f"/v2/models/{NAME}/infer", json=infer_body(records[:1], outputs=[{"name": "label_label"}]))
        validate(oip_spec, "inference_response", r.json())
        assert [o["name"] for o in r.json()["outputs"]] == ["label_label"]

        # inference errors
        errors = [
            (f"/v2/models/{NAME}/infer", {"inputs": [{"name": "nope", "shape": [1], "datatype": "FP32", "data": [1]}]}, 400),
            (f"/v2/models/{NAME}/infer", {"inputs": [{"name": "photo", "shape": [1], "datatype": "BYTES",
                                                       "data": ["bm90IGFuIGltYWdl"]}]}, 400),
            (f"/v2/models/{NAME}/infer", {"outputs": []}, 400),
            ("/v2/models/nope/infer", infer_body(records[:1]), 404),
            (f"/v2/models/{NAME}/versions/2/infer", infer_body(records[:1]), 404),
        ]
        for path, body, status in errors:
            r = c.post(path, json=body)
            assert r.status_code == status, (path, r.text)
            validate(oip_spec, "inference_error_response", r.json())
            assert r.json()["error"]


# ---------------------------------------------------------------------------- schemathesis
def fuzz_operation(strategy: Any, url: str, label: str, mode: Any, examples: int, statuses: dict[str, set[int]],
                   failures: list[str], note: str = "") -> None:
    """``examples`` schemathesis cases of one operation against the live server at ``url``: their statuses
    go into ``statuses[label]``, a 5xx (or any other failure) into ``failures`` (test_fuzz.py uses it too)."""
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis.errors import Unsatisfiable
    from schemathesis import GenerationMode
    from schemathesis.checks import not_a_server_error

    @given(case=strategy)
    @settings(max_examples=examples, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    def run(case) -> None:
        response = case.call(base_url=url, timeout=30)
        statuses.setdefault(label, set()).add(response.status_code)
        case.validate_response(response, checks=[not_a_server_error])

    try:
        run()
    except Unsatisfiable:  # nothing to negate in an operation without parameters or body
        assert mode == GenerationMode.NEGATIVE
    except Exception as e:  # collect every failing operation, then report them together
        failures.append(f"{label} [{mode.value}{note}]: {e}")


def test_schemathesis_finds_no_server_errors(server, oip_spec, tmp_path):
    """Fuzz every V2 operation of the protocol's OpenAPI file (positive and negative data, random
    and real model names) against the live server: no response may be a 5xx."""
    import schemathesis
    from schemathesis import GenerationMode

    text = SPEC.read_text().replace("${MODEL_NAME}", "{MODEL_NAME}").replace("${MODEL_VERSION}", "{MODEL_VERSION}")
    rewritten = tmp_path / "open_inference_rest.yaml"
    rewritten.write_text(text)
    schema = schemathesis.openapi.from_path(rewritten)

    failures: list[str] = []
    statuses: dict[str, set[int]] = {}
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.label for op in operations} >= {"GET /v2/", "GET /v2/models/{MODEL_NAME}/versions/{MODEL_VERSION}",
                                                "POST /v2/models/{MODEL_NAME}/versions/{MODEL_VERSION}/infer"}
    for op in operations:
        fixed = {"MODEL_NAME": NAME, "MODEL_VERSION": "1"} if "{MODEL_NAME}" in op.path else None
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            for path_parameters in ([None, fixed] if fixed else [None]):
                strategy = op.as_strategy(mode, path_parameters=path_parameters) if path_parameters \
                    else op.as_strategy(mode)
                fuzz_operation(strategy, server.url, op.label, mode, 20, statuses, failures,
                               f", path {path_parameters}")
    assert not failures, "\n\n".join(failures)
    # the real model name reached the inference parser, a random one got 404
    assert 404 in statuses["POST /v2/models/{MODEL_NAME}/versions/{MODEL_VERSION}/infer"]
    assert 400 in statuses["POST /v2/models/{MODEL_NAME}/versions/{MODEL_VERSION}/infer"]
    httpx.get(server.url + "/v2/health/ready", timeout=10).raise_for_status()


# ---------------------------------------------------------------------------- tritonclient
@pytest.fixture(scope="module")
def triton(server):
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(url=f"127.0.0.1:{server.port}")
    yield client
    client.close()


def test_tritonclient_metadata_and_health(triton):
    assert triton.is_server_live() and triton.is_server_ready()
    assert triton.is_model_ready(NAME) and not triton.is_model_ready("nope")
    meta = triton.get_model_metadata(NAME)
    assert meta["name"] == NAME and meta["platform"] == "polyfuse_onnxruntime"
    assert [(t["name"], t["datatype"]) for t in meta["inputs"]] == [
        ("photo", "BYTES"), ("sound", "BYTES"), ("note", "BYTES"), ("weight", "FP32"), ("color", "BYTES")]
    assert triton.get_server_metadata()["name"] == "polyfuse"


def test_tritonclient_binary_tensors(triton, reference, toy_csv):
    import tritonclient.http as httpclient

    records = toy_records(toy_csv, 5)
    photo = httpclient.InferInput("photo", [5], "BYTES")
    photo.set_data_from_numpy(np.array([r["photo"] for r in records], dtype=np.object_))  # binary_data=True
    sound = httpclient.InferInput("sound", [5], "BYTES")
    sound.set_data_from_numpy(np.array([r["sound"] for r in records], dtype=np.object_))
    note = httpclient.InferInput("note", [5], "BYTES")
    note.set_data_from_numpy(np.array([r["note"].encode() for r in records], dtype=np.object_))
    weight = httpclient.InferInput("weight", [5], "FP32")
    weight.set_data_from_numpy(np.array([r["weight"] for r in records], dtype=np.float32))
    result = triton.infer(NAME, [photo, sound, note, weight], request_id="7")

    used = [{k: r[k] for k in ("photo", "sound", "note", "weight")} for r in records]
    # weights go over the wire as float32: the reference must see the same values
    for r in used:
        r["weight"] = float(np.float32(r["weight"]))
    proba = reference.predict_proba(used).to_numpy()
    got = result.as_numpy("label")
    assert got.shape == (5, 3) and got.dtype == np.float32
    assert np.abs(got - proba).max() <= 1e-4
    assert [v.decode() for v in result.as_numpy("label_label")] == reference.predict(used)["label"].tolist()
    assert result.get_response()["id"] == "7"


def test_tritonclient_json_and_requested_outputs(triton, reference, toy_csv):
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    records = toy_records(toy_csv, 3)
    photo = httpclient.InferInput("photo", [3], "BYTES")
    # without the binary extension, binary inputs are base64 strings
    photo.set_data_from_numpy(np.array([base64.b64encode(r["photo"]).decode() for r in records], dtype=np.object_),
                              binary_data=False)
    weight = httpclient.InferInput("weight", [3], "FP32")
    weight.set_data_from_numpy(np.array([r["weight"] for r in records], dtype=np.float32), binary_data=False)
    color = httpclient.InferInput("color", [3], "BYTES")
    color.set_data_from_numpy(np.array([r["color"] for r in records], dtype=np.object_), binary_data=False)
    used = [{"photo": r["photo"], "weight": float(np.float32(r["weight"])), "color": r["color"]} for r in records]
    proba = reference.predict_proba(used).to_numpy()
    labels = reference.predict(used)["label"].tolist()

    for binary_label in (False, True):  # all JSON, or JSON probabilities + a binary label tensor
        outputs = [httpclient.InferRequestedOutput("label", binary_data=False),
                   httpclient.InferRequestedOutput("label_label", binary_data=binary_label)]
        result = triton.infer(NAME, [photo, weight, color], outputs=outputs)
        assert np.abs(result.as_numpy("label") - proba).max() <= 1e-4
        got = [v.decode() if isinstance(v, bytes) else v for v in result.as_numpy("label_label")]
        assert got == labels
        label_out = {o["name"]: o for o in result.get_response()["outputs"]}["label"]
        assert "data" in label_out and "parameters" not in label_out

    only = triton.infer(NAME, [photo, weight], outputs=[httpclient.InferRequestedOutput("label_label")])
    assert only.as_numpy("label") is None and len(only.as_numpy("label_label")) == 3

    bogus = httpclient.InferInput("bogus", [1], "FP32")
    bogus.set_data_from_numpy(np.array([1.0], dtype=np.float32))
    with pytest.raises(InferenceServerException, match="unknown input 'bogus'"):
        triton.infer(NAME, [bogus])
    with pytest.raises(InferenceServerException, match="not found"):
        triton.infer("nope", [weight])
    assert triton.is_server_ready()

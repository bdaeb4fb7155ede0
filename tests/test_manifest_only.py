"""Every file a model loads is listed in its manifest and checked when read, whatever the entry point
(polyfuse.load, Runtime, serve, bench); an encrypted artifact's manifest is authenticated by its key.

The attacks: a forged graph dropped beside a signed model, a file changed after verification, a
plaintext or foreign file in an encrypted model, and a plain model where an encrypted one is asked for.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import httpx
import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import polyfuse
from polyfuse import artifact
from polyfuse.errors import ArtifactError
from polyfuse.privacy import crypto, sign
from polyfuse.runtime import Runtime
from tests.serving import Server, as_json, toy_records


def _forge(graph: Path, out: Path) -> None:
    """A graph that answers differently: every bias of the original flipped and scaled (its metadata,
    spec digest included, copied: the digest check alone cannot tell it from the real one)."""
    model = onnx.load(str(graph))
    for init in model.graph.initializer:
        if init.name.endswith("bias"):
            init.CopyFrom(numpy_helper.from_array(-50 * numpy_helper.to_array(init), init.name))
    onnx.save(model, str(out))


@pytest.fixture
def signed_torch_only(toy_dir, tmp_path) -> tuple[Path, Path]:
    """The toy model without its ONNX export, signed; a forged model.onnx then dropped into the folder."""
    folder = tmp_path / "signed"
    shutil.copytree(toy_dir, folder)
    graph = tmp_path / "real.onnx"
    shutil.move(folder / "model.onnx", graph)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["files"].pop("model.onnx")
    (folder / "manifest.json").write_text(json.dumps(manifest))
    private, public = sign.keygen(tmp_path / "k.pem")
    artifact.sign_artifact(folder, private)
    _forge(graph, folder / "model.onnx")
    return folder, public


def test_a_forged_graph_beside_a_signed_model_is_never_loaded(signed_torch_only, toy_csv, tmp_path):
    folder, public = signed_torch_only
    with pytest.raises(ArtifactError, match="no model.onnx"):
        Runtime(folder, verify_key=public)
    records = toy_records(toy_csv, 6)
    expected = polyfuse.load(folder, verify_key=public).predict_proba(records, folder=toy_csv.parent)
    server = Server(folder, ["--verify-key", str(public)], tmp_path)  # auto: ONNX only if the manifest lists it
    try:
        with server.client() as c:
            meta = c.get("/v2/models/signed").json()
            got = c.post("/predict", json={"records": [as_json(r) for r in records]}).json()["predictions"]
        assert meta["platform"] == "polyfuse_pytorch"
        probs = np.array([[row["probabilities"]["label"][k] for k in expected.columns] for row in got])
        np.testing.assert_allclose(probs, expected.to_numpy(), atol=1e-5)
        assert httpx.get(server.url + "/v2/health/live", timeout=0.5).status_code == 200
    finally:
        server.stop()


def test_an_unlisted_int8_graph_is_not_picked(toy_dir, tmp_path):
    folder = tmp_path / "m"
    shutil.copytree(toy_dir, folder)
    _forge(folder / "model.onnx", folder / "model.int8-static.onnx")
    with pytest.raises(ArtifactError, match="no int8 model"):
        Runtime(folder, variant="int8")
    opened = artifact.open_artifact(folder)
    with pytest.raises(ArtifactError, match="model.int8-static.onnx is not listed"):
        opened.read("model.int8-static.onnx")


def test_a_file_changed_after_verification_is_refused_when_read(toy_dir, tmp_path):
    folder = tmp_path / "m"
    shutil.copytree(toy_dir, folder)
    opened = artifact.open_artifact(folder, prefetch=("spec.yaml",))
    (folder / "metrics.json").write_text("{}")  # swapped between the check and the read
    with pytest.raises(ArtifactError, match="metrics.json.*modified"):
        opened.read("metrics.json")
    assert opened.read("spec.yaml")  # read (and checked) while the manifest was verified


@pytest.fixture
def key(monkeypatch) -> bytes:
    value = crypto.new_key()
    monkeypatch.setenv("POLYFUSE_KEY", value)
    return crypto.parse_key(value, "POLYFUSE_KEY")


def _encrypted(toy_dir: Path, folder: Path, key: bytes) -> Path:
    shutil.copytree(toy_dir, folder)
    artifact.encrypt_artifact(folder, key)
    return folder


def _relist(folder: Path, name: str) -> None:
    """What an attacker without the key can do to the manifest: re-hash a file it replaced."""
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["files"][name]["sha256"] = artifact.sha256(folder / name)
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=1))


def test_plaintext_and_foreign_files_in_an_encrypted_model_are_refused(toy_dir, tmp_path, key):
    model = _encrypted(toy_dir, tmp_path / "a", key)
    assert polyfuse.load(model).spec.outputs  # intact: loads
    shutil.copy(toy_dir / "metrics.json", model / "metrics.json")  # a plaintext file swapped in
    with pytest.raises(ArtifactError, match="metrics.json.*modified"):
        polyfuse.load(model)
    _relist(model, "metrics.json")
    with pytest.raises(ArtifactError, match="does not match its authentication tag"):
        polyfuse.load(model)
    # another model's ciphertext under the same key, the manifest re-hashed to match
    other = _encrypted(toy_dir, tmp_path / "b", key)
    victim = _encrypted(toy_dir, tmp_path / "c", key)
    shutil.copy(other / "weights.safetensors", victim / "weights.safetensors")
    _relist(victim, "weights.safetensors")
    with pytest.raises(ArtifactError, match="authentication tag"):
        Runtime(victim)
    (victim / artifact.TAG).unlink()
    with pytest.raises(ArtifactError, match="tag.*missing"):
        Runtime(victim)


def test_a_plain_model_is_refused_where_an_encrypted_one_is_asked_for(toy_dir, tmp_path, key):
    with pytest.raises(ArtifactError, match="not encrypted, but key_env"):
        polyfuse.load(toy_dir, key_env="POLYFUSE_KEY")
    with pytest.raises(ArtifactError, match="not encrypted, but key_env"):
        Runtime(toy_dir, key_env="POLYFUSE_KEY")
    assert Runtime(toy_dir).spec.outputs  # without the demand a plain model loads as before

"""Encryption at rest (AES-256-GCM, key from the environment, decrypted in memory) and signed
artifacts (Ed25519 over the manifest): real files, real crypto, the Python API, Runtime, serve
and the CLI."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

import polyfuse
from polyfuse import artifact
from polyfuse.errors import ArtifactError
from polyfuse.privacy import crypto, sign
from polyfuse.runtime import Runtime
from tests.serving import Server, as_json, toy_records

ROOT = Path(__file__).resolve().parents[1]


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run([sys.executable, "-m", "polyfuse", *args], capture_output=True, text=True,
                          env=full_env, timeout=300)


def _snapshot(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


@pytest.fixture
def key(monkeypatch) -> str:
    value = crypto.new_key()
    monkeypatch.setenv("POLYFUSE_KEY", value)
    return value


@pytest.fixture
def encrypted(toy_dir, tmp_path, key) -> Path:
    folder = tmp_path / "toy"
    shutil.copytree(toy_dir, folder)
    artifact.encrypt_artifact(folder, crypto.parse_key(key, "POLYFUSE_KEY"))
    return folder


def test_encrypted_files_are_ciphertext_and_manifest_names_the_key_by_fingerprint(encrypted, key, toy_dir):
    manifest = json.loads((encrypted / "manifest.json").read_text())
    enc = manifest["encryption"]
    assert enc["algorithm"] == "AES-256-GCM" and set(enc["files"]) == set(manifest["files"])
    assert enc["key_id"] == crypto.key_id(crypto.parse_key(key, "POLYFUSE_KEY"))
    assert key not in (encrypted / "manifest.json").read_text()
    for name in manifest["files"]:
        data = (encrypted / name).read_bytes()
        assert data.startswith(crypto.MAGIC) and data != (toy_dir / name).read_bytes()
    assert b"inputs" not in (encrypted / "spec.yaml").read_bytes()
    artifact.verify(encrypted)  # digests are of the ciphertext
    assert sorted(p.name for p in encrypted.parent.iterdir()) == ["toy"]  # no temp or old directory left
    with pytest.raises(ArtifactError, match="already encrypted"):
        artifact.encrypt_artifact(encrypted, crypto.parse_key(key, "POLYFUSE_KEY"))


def test_encrypted_load_and_runtime_predict_like_plain_without_writing_plaintext(encrypted, toy_dir, toy_csv,
                                                                                   tmp_path, monkeypatch):
    records = toy_records(toy_csv, 6)
    tmp = tmp_path / "tmpdir"
    tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))  # anything that asks for a temp file lands here
    before = _snapshot(encrypted)
    model = polyfuse.load(encrypted)
    rt = Runtime(encrypted)
    assert _snapshot(encrypted) == before and _snapshot(tmp) == set()
    plain_model, plain_rt = polyfuse.load(toy_dir), Runtime(toy_dir)
    np.testing.assert_array_equal(model.predict_proba(records).to_numpy(), plain_model.predict_proba(records).to_numpy())
    assert rt.predict(records) == plain_rt.predict(records)
    assert model.metrics == plain_model.metrics


def test_missing_wrong_and_malformed_keys_name_the_variable(encrypted, monkeypatch):
    monkeypatch.delenv("POLYFUSE_KEY")
    with pytest.raises(ArtifactError, match=r"encrypted .*\$POLYFUSE_KEY is unset"):
        polyfuse.load(encrypted)
    monkeypatch.setenv("OTHER_KEY", crypto.new_key())
    with pytest.raises(ArtifactError, match=r"wrong key: \$OTHER_KEY holds key"):
        Runtime(encrypted, key_env="OTHER_KEY")
    monkeypatch.setenv("OTHER_KEY", "not a key")
    with pytest.raises(ArtifactError, match=r"\$OTHER_KEY is not a 256-bit key") as info:
        polyfuse.load(encrypted, key_env="OTHER_KEY")
    assert "not a key" not in str(info.value)


def test_hex_key_and_custom_variable(encrypted, key, monkeypatch):
    monkeypatch.delenv("POLYFUSE_KEY")
    monkeypatch.setenv("MY_MODEL_KEY", crypto.parse_key(key, "x").hex())
    assert polyfuse.load(encrypted, key_env="MY_MODEL_KEY").spec.outputs


def test_tampered_ciphertext_fails_digest_then_authentication(encrypted):
    path = encrypted / "weights.safetensors"
    data = bytearray(path.read_bytes())
    data[len(crypto.MAGIC) + 40] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="weights.safetensors.*modified"):
        polyfuse.load(encrypted)
    artifact.refresh_manifest(encrypted)  # an attacker who also rewrites the digests
    with pytest.raises(ArtifactError, match="weights.safetensors: decryption failed authentication"):
        polyfuse.load(encrypted)


def test_swapped_encrypted_files_fail_authentication(encrypted, key):
    a, b = encrypted / "metrics.json", encrypted / "history.json"
    da, db = a.read_bytes(), b.read_bytes()
    a.write_bytes(db), b.write_bytes(da)
    artifact.refresh_manifest(encrypted)
    with pytest.raises(ArtifactError, match="does not match its authentication tag"):
        polyfuse.load(encrypted)
    # even with the manifest re-tagged under the key, each file's name is authenticated with it
    tag = crypto.manifest_tag((encrypted / "manifest.json").read_bytes(), crypto.parse_key(key, "POLYFUSE_KEY"))
    (encrypted / artifact.TAG).write_text(tag + "\n")
    with pytest.raises(ArtifactError, match="decryption failed authentication"):
        polyfuse.load(encrypted)


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> tuple[Path, Path]:
    private, public = sign.keygen(tmp_path_factory.mktemp("keys") / "signer.pem")
    return private, public


def test_sign_and_verify_round_trip_and_refusals(toy_dir, tmp_path, keys):
    private, public = keys
    assert oct(private.stat().st_mode & 0o777) == "0o600"
    folder = tmp_path / "toy"
    shutil.copytree(toy_dir, folder)
    with pytest.raises(ArtifactError, match="is not signed"):
        polyfuse.load(folder, verify_key=public)
    artifact.sign_artifact(folder, private)
    assert polyfuse.load(folder, verify_key=public).spec.outputs
    assert Runtime(folder, verify_key=public).predict([{"note": "a cat"}])
    _, other_public = sign.keygen(tmp_path / "other.pem")
    with pytest.raises(ArtifactError, match="signature does not match"):
        Runtime(folder, verify_key=other_public)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["polyfuse_version"] = "9.9.9"  # a consistent manifest (files still match), but not the signed one
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=1))
    artifact.verify(folder)
    with pytest.raises(ArtifactError, match="signature does not match"):
        polyfuse.load(folder, verify_key=public)
    with pytest.raises(ArtifactError, match="public key file"):
        polyfuse.load(folder, verify_key=tmp_path / "absent.pub")
    with pytest.raises(ArtifactError, match="Ed25519 public key|PEM public key"):
        polyfuse.load(folder, verify_key=private)


def test_cli_keygen_encrypt_sign_predict_and_serve(toy_dir, toy_csv, tmp_path, keys):
    folder = tmp_path / "toy"
    shutil.copytree(toy_dir, folder)
    out = cli("keygen")
    assert out.returncode == 0, out.stderr
    key = out.stdout.strip()
    assert len(crypto.parse_key(key, "k")) == 32
    refused = cli("encrypt", str(folder), env={"POLYFUSE_KEY": ""})
    assert refused.returncode == 2 and "$POLYFUSE_KEY is unset" in refused.stderr
    done = cli("encrypt", str(folder), "--key-env", "MODEL_KEY", env={"MODEL_KEY": key})
    assert done.returncode == 0 and "encrypted" in done.stdout and key not in done.stdout + done.stderr
    signed = cli("keygen", "--sign", "--out", str(tmp_path / "k.pem"))
    assert signed.returncode == 0 and (tmp_path / "k.pem.pub").exists()
    assert cli("sign", str(folder), "--key-file", str(tmp_path / "k.pem")).returncode == 0
    preds = cli("predict", str(folder), str(toy_csv), "--out", str(tmp_path / "p.csv"), "--quiet",
                env={"POLYFUSE_KEY": key})
    assert preds.returncode == 0, preds.stderr
    bad = cli("serve", str(folder), "--verify-key", str(keys[1]), env={"POLYFUSE_KEY": key})
    assert bad.returncode == 2 and "signature does not match" in bad.stderr
    reference = polyfuse.load(toy_dir)
    records = toy_records(toy_csv, 3)
    server = Server(folder, ["--key-env", "MODEL_KEY", "--verify-key", str(tmp_path / "k.pem.pub")], tmp_path,
                    env={"MODEL_KEY": key})
    try:
        with server.client() as c:
            r = c.post("/predict", json={"records": [as_json(x) for x in records]})
    finally:
        server.stop()
    assert r.status_code == 200, r.text
    assert [p["label"] for p in r.json()["predictions"]] == reference.predict(records)["label"].tolist()
    assert key not in server.log()


def test_export_of_an_encrypted_model_is_refused(encrypted):
    from polyfuse.deploy.exporter import export

    before = {p.name: p.read_bytes() for p in encrypted.iterdir()}
    with pytest.raises(ArtifactError, match="is encrypted: export the plain model first"):
        export(encrypted)
    assert {p.name: p.read_bytes() for p in encrypted.iterdir()} == before

"""Server access control and the audit trail over real HTTPS: a `polyfuse serve` subprocess on
127.0.0.1 with a self-signed certificate made here, two API keys with ids and rate limits, the
single --api-key-env key beside them, and an audit log verified (and tampered with) afterwards.
Also: predict/evaluate on an encrypted, signed model with --key-env/--verify-key.
"""
from __future__ import annotations

import datetime
import hashlib
import ipaddress
import json
import os
import shutil
import ssl
import time
from pathlib import Path

import httpx
import pytest

from polyfuse.errors import PolyfuseError
from polyfuse.privacy.audit import AuditLog
from polyfuse.privacy.audit_chain import log_files
from polyfuse.privacy.audit_verify import verify
from polyfuse.serve.access import Access, load_keys, parse_rate
from tests.serving import Server, as_json, toy_records

ALICE, BOB, DEFAULT = "alice-key-0123456789", "bob-key-9876543210", "env-key-abcdefgh"
KEY_ENV = "POLYFUSE_TEST_ACCESS_KEY"


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1/localhost and its key, both PEM (what a test CA would hand out)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "polyfuse test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                                        x509.DNSName("localhost")]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(ski, critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


class TlsServer(Server):
    scheme = "https"

    def __init__(self, *args, cafile: Path, **kw):
        self.verify = ssl.create_default_context(cafile=str(cafile))
        super().__init__(*args, **kw)


@pytest.fixture(scope="module")
def secure(toy_dir, tmp_path_factory):
    """HTTPS, keys alice (2/s) and bob (the --rate-limit default), the env key, an audit log rotated at 4 KB."""
    folder = tmp_path_factory.mktemp("access")
    cert, key = self_signed(folder)
    keys = folder / "keys.yaml"
    keys.write_text(f"- {{id: alice, key: {ALICE}, rate: 2/s}}\n- {{id: bob, key: {BOB}}}\n")
    audit = folder / "audit" / "predictions.log"
    s = TlsServer(toy_dir, ["--tls-cert", str(cert), "--tls-key", str(key), "--api-keys", str(keys),
                            "--api-key-env", KEY_ENV, "--rate-limit", "50/s", "--audit-log", str(audit),
                            "--audit-max-mb", "0.004", "--max-batch", "1"],
                  folder, env={KEY_ENV: DEFAULT}, cafile=cert)
    s.cert, s.audit = cert, audit
    yield s
    s.stop()


def one_record(toy_csv: Path, i: int = 0) -> dict:
    return {"records": [as_json(toy_records(toy_csv, i + 1)[i])]}


# ---------------------------------------------------------------------------- TLS and keys
def test_tls_is_verified_against_the_test_certificate(secure):
    with secure.client() as c:
        assert c.get("/v2/health/ready").json() == {"ready": True}
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(secure.url + "/v2/health/live", timeout=10)  # the system's CAs do not know it
    with pytest.raises(httpx.HTTPError):  # plain HTTP on the TLS port gets no answer
        httpx.get(secure.url.replace("https://", "http://") + "/v2/health/live", timeout=10)


def test_keys_with_ids_and_the_env_key(secure, toy_csv):
    body = one_record(toy_csv)
    with secure.client() as c:
        for headers in ({}, {"x-api-key": "wrong-key-000000"}, {"x-api-key": ALICE[:-1]}):
            r = c.post("/predict", json=body, headers=headers)
            assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", r.text
        for headers in ({"x-api-key": ALICE}, {"authorization": f"Bearer {BOB}"}, {"x-api-key": DEFAULT}):
            assert c.post("/predict", json=body, headers=headers).status_code == 200
        # as without keys files: probes and the page are open, /metrics and metadata need a key
        assert c.get("/v2/health/live").status_code == 200 and c.get("/").status_code == 200
        assert c.get("/metrics").status_code == 401 and c.get("/v2/models/toy").status_code == 401
        assert c.get("/metrics", headers={"x-api-key": BOB}).status_code == 200


def test_rate_limit_per_key_429_with_retry_after(secure, toy_csv):
    body = one_record(toy_csv)
    alice, bob = [], []
    with secure.client() as c:
        for _ in range(8):  # bounded; far faster than alice's 2/s, well within bob's 50/s
            alice.append(c.post("/predict", json=body, headers={"x-api-key": ALICE}))
            bob.append(c.post("/predict", json=body, headers={"x-api-key": BOB}))
        limited = [r for r in alice if r.status_code == 429]
        assert len(limited) >= 4, [r.status_code for r in alice]
        assert {r.status_code for r in alice} <= {200, 429}
        assert all(r.status_code == 200 for r in bob), [r.status_code for r in bob]  # alice's limit is hers
        wait = int(limited[-1].headers["retry-after"])
        assert 1 <= wait <= 2 and "rate limit" in limited[-1].json()["error"]
        time.sleep(wait)
        assert c.post("/predict", json=body, headers={"x-api-key": ALICE}).status_code == 200
        assert c.get("/v2/health/ready").status_code == 200  # probes are never limited
        metrics = c.get("/metrics", headers={"x-api-key": BOB}).text
    assert 'endpoint="predict",status="429"' in metrics


# ---------------------------------------------------------------------------- the audit trail
def _entries(path: Path) -> list[dict]:
    return [json.loads(line) for f in log_files(path) for line in f.read_text().splitlines() if line.strip()]


def test_audit_log_of_a_served_model_verifies_and_shows_tampering(secure, toy_csv, toy_dir, tmp_path, capsys):
    from polyfuse.cli.main import main

    records = toy_records(toy_csv, 3)
    ids = [f"audit-{i}" for i in range(12)]  # enough lines to rotate at 4 KB whatever ran before
    answers = {}
    with secure.client() as c:
        for i, rid in enumerate(ids):
            key = BOB if i % 2 else DEFAULT
            r = c.post("/predict", json={"records": [as_json(records[i % 3])]},
                       headers={"x-api-key": key, "x-request-id": rid})
            assert r.status_code == 200, r.text
            answers[rid] = r.json()["predictions"][0]["label"]
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not set(ids) <= {e.get("client_request_id") for e in _entries(secure.audit)}:
        time.sleep(0.1)
    entries = _entries(secure.audit)
    by_id = {e.get("client_request_id"): e for e in entries}  # the client's id, beside the server's own
    assert set(ids) <= set(by_id)
    manifest = hashlib.sha256((toy_dir / "manifest.json").read_bytes()).hexdigest()
    for i, rid in enumerate(ids):
        e = by_id[rid]
        assert e["key_id"] == ("bob" if i % 2 else "default") and e["model"] == manifest
        assert e["outputs"][0]["label"] == answers[rid] and 0 < e["ms"] < 30_000
        assert set(e["inputs"][0]) == {"photo", "sound", "note", "weight", "color"}
        assert all(len(d) == 32 for d in e["inputs"][0].values())
    headers = [e for e in entries if "audit" in e]
    assert len(headers) == len(log_files(secure.audit)) >= 2  # rotated at 4 KB, one header per file
    assert len({h["salt"] for h in headers}) == 1 and len(headers[0]["salt"]) == 32
    text = "".join(f.read_text() for f in log_files(secure.audit))
    assert records[0]["note"] not in text and as_json(records[0])["photo"][:40] not in text
    assert ALICE not in text and BOB not in text and DEFAULT not in text

    assert main(["audit", "verify", str(secure.audit)]) == 0
    assert "intact" in capsys.readouterr().out

    # tampering, on a copy: an edited label, then a deleted line
    copy = tmp_path / "copy"
    shutil.copytree(secure.audit.parent, copy)
    target = log_files(copy / secure.audit.name)[0]
    lines = target.read_text().splitlines(keepends=True)
    assert len(lines) >= 3
    i = next(k for k, x in enumerate(lines) if '"label":"' in x)  # the first prediction, after the start entry
    lines_edited = list(lines)
    lines_edited[i] = lines_edited[i].replace('"label":"', '"label":"x', 1)
    target.write_text("".join(lines_edited))
    v = verify(copy / secure.audit.name)
    assert not v.ok and v.problem.startswith(f"{target}:{i + 1}:") and "edited" in v.problem
    assert main(["audit", "verify", str(copy / secure.audit.name)]) != 0
    assert f"{target}:{i + 1}" in capsys.readouterr().err

    target.write_text("".join(lines[:i] + lines[i + 1:]))  # that line deleted
    v = verify(copy / secure.audit.name)
    assert not v.ok and v.problem.startswith(f"{target}:{i + 1}:") and "deleted" in v.problem


def test_audit_chain_across_rotation_restart_and_damage(tmp_path):
    """The writer on its own: rotation and a restart continue one chain; each kind of damage is named."""
    import numpy as np

    path = tmp_path / "log" / "a.log"
    for _ in range(2):  # the second log object continues the first one's chain (a server restart)
        log = AuditLog(path, "m" * 64, max_bytes=4096)
        for i in range(25):
            log.record(f"r{i}", "k", [{"x": i, "img": b"\xff" * 50}], {"y": ["a"]}, {"y": np.array([[0.4, 0.6]])}, 0.001)
        log.close()
    good = verify(path)
    assert good.ok and good.lines == 50 and good.files == len(log_files(path)) >= 4, good
    assert [e["seq"] for e in _entries(path) if "seq" in e] == list(range(1, 51))

    def damaged(n: int, harm) -> tuple:
        copy = tmp_path / f"copy{n}" / "a.log"
        shutil.copytree(path.parent, copy.parent)
        files = log_files(copy)
        harm(files)
        return verify(copy), files

    v, files = damaged(1, lambda f: f[1].unlink())  # a whole rotated file removed
    assert not v.ok and v.problem.startswith(f"{files[2]}:1:") and "missing" in v.problem
    v, files = damaged(2, lambda f: f[-1].write_bytes(f[-1].read_bytes()[:-5]))  # a torn last line
    assert not v.ok and "incomplete" in v.problem
    v, files = damaged(3, lambda f: f[-1].write_text("".join(f[-1].read_text().splitlines(True)[:-1])))
    assert not v.ok and "a.log.head" in v.problem  # a cut at the end shows against the head file beside it
    v = verify(tmp_path / "copy3" / "a.log", head_file=False)
    assert v.ok and v.head != good.head  # ... and only against a head, the chain itself being intact


def test_keys_file_forms_and_errors(tmp_path):
    good = tmp_path / "k.json"
    good.write_text(json.dumps({"a": "a-key-12345678", "b": {"key": "b-key-12345678", "rate": "120/min"}}))
    keys = load_keys(good)
    assert [(k.id, k.rate) for k in keys] == [("a", None), ("b", 2.0)]
    access = Access("env-key-xyz12345", good, rate_limit=5.0)
    assert access.identify("a-key-12345678") == "a" and access.identify("env-key-xyz12345") == "default"
    assert access.identify("") is None and access.identify("a-key-1234567") is None
    assert access.rate_of("a") == 5.0 and access.rate_of("b") == 2.0
    for text, message in (("[{id: a, key: short}]", "shorter than 8"), ("- {id: a, key: k1234567890}\n- {id: a, key: k0987654321}", "duplicate"),
                          ("[{id: a, key: k1234567890, rate: fast}]", "expected a rate"), ("just text", "expected a mapping"),
                          ("[{id: a, key: k1234567890, role: admin}]", "unknown field")):
        bad = tmp_path / "bad.yaml"
        bad.write_text(text)
        with pytest.raises(PolyfuseError, match=message):
            load_keys(bad)
    assert parse_rate("10") == 10 and parse_rate("600/min") == 10 and parse_rate(" 3 / s ") == 3
    for text in ("0/s", "-1", "ten", "5/day"):
        with pytest.raises(PolyfuseError):
            parse_rate(text)


# ---------------------------------------------------------------------------- --key-env / --verify-key
def test_predict_and_evaluate_take_key_env_and_verify_key(toy_dir, toy_csv, tmp_path, monkeypatch, capsys):
    from polyfuse import artifact
    from polyfuse.cli.main import main
    from polyfuse.privacy import crypto, sign

    model = tmp_path / "toy"
    shutil.copytree(toy_dir, model)
    monkeypatch.delenv("POLYFUSE_KEY", raising=False)
    monkeypatch.setenv("POLYFUSE_TEST_MODEL_KEY", crypto.new_key())
    artifact.encrypt_artifact(model, crypto.key_from_env("POLYFUSE_TEST_MODEL_KEY"))
    private, public = sign.keygen(tmp_path / "signing.pem")
    artifact.sign_artifact(model, private)
    _, other = sign.keygen(tmp_path / "other.pem")
    keys = ["--key-env", "POLYFUSE_TEST_MODEL_KEY", "--verify-key", str(public)]

    out = tmp_path / "preds.csv"
    assert main(["predict", str(model), str(toy_csv), "--out", str(out), "--runtime", "onnx", "--quiet", *keys]) == 0
    assert out.exists() and len(out.read_text().splitlines()) == 91
    assert main(["evaluate", str(model), str(toy_csv), *keys]) == 0
    capsys.readouterr()
    assert main(["predict", str(model), str(toy_csv), "--out", str(out), "--runtime", "onnx"]) == 2
    assert "POLYFUSE_KEY is unset" in capsys.readouterr().err
    assert main(["evaluate", str(model), str(toy_csv), "--key-env", "POLYFUSE_TEST_MODEL_KEY",
                 "--verify-key", str(other)]) == 2
    assert "signature does not match" in capsys.readouterr().err


def test_audit_write_failure_is_reported_not_lost(tmp_path):
    """A writer that cannot write sets ``error`` (the server then answers 503) instead of dropping lines."""
    import numpy as np

    from polyfuse.privacy.audit import AuditWriteError

    log = AuditLog(tmp_path / "a.log", "m" * 64)
    os.close(log._fd)  # what a vanished disk looks like to the writer: writes fail
    log._fd = os.open(tmp_path / "a.log", os.O_RDONLY)
    done = log.record("r1", None, [{"x": 1}], {"y": ["a"]}, {"y": np.array([[1.0]])}, 0.0)
    with pytest.raises(AuditWriteError):  # the request waiting on its line is told: it answers 503
        done.result(10)
    assert log.error and "a.log" in log.error
    log.close()


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="thread names in /proc are Linux's")
def test_audit_writer_thread_is_named_for_the_os(tmp_path):
    """`top -H` and /proc show the writer as polyfuse-audit, so its CPU can be told from the server's."""
    log = AuditLog(tmp_path / "a.log", "m" * 64)
    try:
        comm = Path(f"/proc/self/task/{log._thread.native_id}/comm")
        deadline = time.monotonic() + 10
        while comm.read_text().strip() != "polyfuse-audit" and time.monotonic() < deadline:
            time.sleep(0.01)  # the thread names itself as it starts
        assert comm.read_text().strip() == "polyfuse-audit"
    finally:
        log.close()


def test_audit_input_digest_is_salted_and_tells_shapes_and_fields_apart():
    import numpy as np

    from polyfuse.privacy.audit import input_digest

    salt, other = b"s" * 16, b"t" * 16
    x = np.arange(6, dtype=np.float32)
    d = input_digest(salt, "scan", x.reshape(2, 3))
    assert d == input_digest(salt, "scan", x.reshape(2, 3).copy())  # the same value: the same digest
    assert d != input_digest(salt, "scan", x.reshape(3, 2))  # same bytes, another shape
    assert d != input_digest(salt, "photo", x.reshape(2, 3)) and d != input_digest(other, "scan", x.reshape(2, 3))
    assert input_digest(salt, "scan", None) is None

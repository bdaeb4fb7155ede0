"""`polyfuse k8s`: the KServe InferenceService against the (trimmed) CRD schema, its hardened pod, the
Secrets an encrypted and signed model needs wired from argument to mount to Secret, the image tag
(the model's digest) and the pinned, non-root Dockerfile. No Ray, no cluster, no trained model: a
small artifact written with the artifact module is enough for manifests."""
from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import yaml
from dockerfile_parse import DockerfileParser

from polyfuse.artifact import sha256, write_manifest
from polyfuse.cli.main import main
from polyfuse.errors import PolyfuseError
from polyfuse.scale import k8s

SCHEMA = yaml.safe_load((Path(__file__).parent / "schemas" / "kserve_inferenceservice_v1beta1.yaml").read_text())


@pytest.fixture
def model(tmp_path) -> Path:
    """A complete artifact (the files the manifest requires, and its manifest), named toy."""
    folder = tmp_path / "models" / "toy"
    folder.mkdir(parents=True)
    (folder / "spec.yaml").write_text("inputs: {x: {type: numeric}}\noutputs: {y: {type: category}}\n")
    (folder / "weights.safetensors").write_bytes(b"\0" * 64)
    (folder / "preprocess.json").write_text(json.dumps({"x": {}}))
    write_manifest(folder)
    return folder


def written(out: Path) -> tuple[dict, dict, list[tuple[str, str]]]:
    """The validated InferenceService, its one container, and the Dockerfile's (instruction, value) steps."""
    isvc = yaml.safe_load((out / "inference_service.yaml").read_text())
    jsonschema.Draft202012Validator(SCHEMA).validate(isvc)
    (container,) = isvc["spec"]["predictor"]["containers"]
    steps = [(i["instruction"], i["value"]) for i in DockerfileParser(path=str(out / "Dockerfile")).structure]
    return isvc, container, steps


def test_manifests_are_valid_and_hardened(model, tmp_path):
    out = tmp_path / "k8s"
    assert main(["k8s", str(model), "--out", str(out), "--replicas", "2", "--max-replicas", "4"]) == 0
    isvc, container, steps = written(out)
    predictor = isvc["spec"]["predictor"]
    assert (predictor["minReplicas"], predictor["maxReplicas"]) == (2, 4)
    assert container["name"] == "kserve-container" and {"name": "PROTOCOL", "value": "v2"} in container["env"]
    assert container["args"][:2] == ["serve", "/mnt/models"] and "--api-keys" not in container["args"]
    port = container["ports"][0]["containerPort"]
    assert container["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": port}
    assert container["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": port}

    # the restricted profile, on the container; nothing on the pod, which Knative would reject
    assert container["securityContext"] == {
        "runAsNonRoot": True, "runAsUser": k8s.UID, "runAsGroup": k8s.UID, "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"},
        "readOnlyRootFilesystem": True}
    assert "securityContext" not in predictor and predictor["automountServiceAccountToken"] is False
    # the read-only root's one writable place, and every temp/cache directory pointed at it
    assert {"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}} in predictor["volumes"]
    assert container["volumeMounts"] == [{"name": "tmp", "mountPath": "/tmp"}]
    env = {e["name"]: e.get("value") for e in container["env"]}
    for var in ("TMPDIR", "HOME", "XDG_CACHE_HOME", "POLYFUSE_CACHE"):
        assert env[var].startswith("/tmp"), var

    # the tag is the model's digest (as the server reports it), never latest
    assert container["image"] == f"polyfuse-toy:{sha256(model / 'manifest.json')[:12]}"

    kinds = [k for k, _ in steps if k != "COMMENT"]
    base = next(v for k, v in steps if k == "FROM")
    assert base == k8s.BASE_IMAGE and "latest" not in base and base.split(":")[1][0].isdigit()
    assert any(k == "COMMENT" and "@sha256:" in v for k, v in steps)  # how to pin the digest
    (user,) = [v for k, v in steps if k == "USER"]
    assert user == f"{k8s.UID}:{k8s.UID}"  # numeric, so Kubernetes can check runAsNonRoot against it
    assert any(k == "RUN" and f"useradd --uid {k8s.UID} --gid {k8s.UID}" in v for k, v in steps)
    assert kinds.index("USER") < kinds.index("ENTRYPOINT")  # the server never runs as root
    assert any(k == "HEALTHCHECK" and "/v2/health/live" in v for k, v in steps)
    assert any(k == "RUN" and "[serve]" in v for k, v in steps)
    assert ("EXPOSE", str(port)) in steps
    copies = [v.split()[-2:] for k, v in steps if k == "COPY"]
    for src, _ in copies:  # every COPY source is inside the build context written beside it
        assert (out / src).exists(), src
    assert ["model", "/mnt/models"] in copies and (out / "model" / "spec.yaml").exists()
    assert not (out / "create_secrets.sh").exists()

    # with a storage URI, KServe pulls the model: nothing is baked in
    assert main(["k8s", str(model), "--out", str(tmp_path / "pulled"), "--storage-uri", "s3://bucket/toy"]) == 0
    _, container, steps = written(tmp_path / "pulled")
    assert {"name": "STORAGE_URI", "value": "s3://bucket/toy"} in container["env"]
    assert not [v for k, v in steps if k == "COPY" and v.endswith("/mnt/models")]


def test_encrypted_signed_model_reads_its_keys_from_secrets(model, tmp_path, monkeypatch, capsys):
    pytest.importorskip("cryptography")
    from polyfuse.privacy.crypto import new_key

    key = new_key()
    monkeypatch.setenv("TOY_KEY", key)
    assert main(["encrypt", str(model), "--key-env", "TOY_KEY"]) == 0
    assert main(["keygen", "--sign", "--out", str(tmp_path / "signing.pem")]) == 0
    assert main(["sign", str(model), "--key-file", str(tmp_path / "signing.pem")]) == 0
    capsys.readouterr()

    # without its key the pod could never start: refused, with the flag to use
    assert main(["k8s", str(model), "--out", str(tmp_path / "nokey")]) == 2
    assert "--model-key-secret" in capsys.readouterr().err

    out = tmp_path / "k8s"
    assert main(["k8s", str(model), "--out", str(out), "--api-keys-secret", "toy-api-keys", "--verify-key-secret",
                 "toy-verify-key", "--model-key-secret", "toy-model-key", "--key-env", "TOY_KEY"]) == 0
    printed = capsys.readouterr().out
    isvc, container, _ = written(out)
    predictor, args = isvc["spec"]["predictor"], container["args"]
    volumes = {v["name"]: v for v in predictor["volumes"]}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    for flag, secret, secret_key in (("--api-keys", "toy-api-keys", k8s.API_KEYS_FILE),
                                     ("--verify-key", "toy-verify-key", k8s.VERIFY_KEY_FILE)):
        path = Path(args[args.index(flag) + 1])  # the serve flag's file ...
        mount = mounts[str(path.parent)]  # ... is in a read-only mount ...
        assert mount["readOnly"] is True and path.name == secret_key
        source = volumes[mount["name"]]["secret"]  # ... of the Secret, projecting exactly that key
        assert source["secretName"] == secret and source["items"] == [{"key": secret_key, "path": secret_key}]
        assert f"kubectl create secret generic {secret} --from-file={secret_key}=" in printed
    assert args[args.index("--key-env") + 1] == "TOY_KEY"
    (ref,) = [e for e in container["env"] if e["name"] == "TOY_KEY"]
    assert ref == {"name": "TOY_KEY", "valueFrom": {"secretKeyRef": {"name": "toy-model-key", "key": k8s.MODEL_KEY}}}
    assert "POLYFUSE_KEY" not in {e["name"] for e in container["env"]}

    script = (out / "create_secrets.sh").read_text()
    assert f"--from-file={k8s.MODEL_KEY}=/dev/stdin" in script and '"$TOY_KEY"' in script
    for name in ("toy-api-keys", "toy-verify-key", "toy-model-key"):
        assert name in script
    everything = "".join(p.read_text() for p in out.iterdir() if p.is_file()) + printed
    assert key not in everything and "PRIVATE KEY" not in everything  # names of secrets only, never one
    assert container["image"] == f"polyfuse-toy:{sha256(model / 'manifest.json')[:12]}"  # the encrypted manifest's
    assert (out / "model" / "manifest.sig").exists()  # the baked copy carries the signature it is checked against


def test_secret_flags_are_checked(model, tmp_path, capsys):
    assert main(["k8s", str(model), "--out", str(tmp_path / "a"), "--verify-key-secret", "vk"]) == 2
    assert "not signed" in capsys.readouterr().err  # a verify key for an unsigned baked model: refused at once
    assert main(["k8s", str(model), "--out", str(tmp_path / "b"), "--api-keys-secret", "Bad_Name"]) == 2
    assert "not a Kubernetes Secret name" in capsys.readouterr().err
    assert main(["k8s", str(model), "--out", str(tmp_path / "c"), "--model-key-secret", "mk", "--key-env", "1X"]) == 2
    modified = model / "weights.safetensors"
    modified.write_bytes(b"\1" * 64)  # the tag names the manifest's files: a modified model is refused
    assert main(["k8s", str(model), "--out", str(tmp_path / "d")]) == 2
    assert "modified" in capsys.readouterr().err


def test_images_are_pinned(model, tmp_path):
    digest = "sha256:" + "ab" * 32
    for moving in ("python", "python:latest", "python:slim", "registry:5000/python"):
        with pytest.raises(PolyfuseError, match="fixed version"):
            k8s.check_base_image(moving)
    for fixed in ("python:3.11.11-slim-bookworm", f"python:3.11.11-slim-bookworm@{digest}", f"python@{digest}",
                  "registry:5000/python:3.11.11"):
        assert k8s.check_base_image(fixed) == fixed
    assert k8s.image_name("toy", "0123456789ab", None) == "polyfuse-toy:0123456789ab"
    assert k8s.image_name("toy", "0123456789ab", "reg:5000/team/toy") == "reg:5000/team/toy:0123456789ab"
    assert k8s.image_name("toy", "0123456789ab", "reg/toy:v2") == "reg/toy:v2"
    assert k8s.image_name("toy", "0123456789ab", f"reg/toy@{digest}") == f"reg/toy@{digest}"
    with pytest.raises(PolyfuseError, match="latest"):
        k8s.image_name("toy", "0123456789ab", "reg/toy:latest")

    base = f"python:3.11.11-slim-bookworm@{digest}"
    assert main(["k8s", str(model), "--out", str(tmp_path / "k8s"), "--base-image", base]) == 0
    _, _, steps = written(tmp_path / "k8s")
    assert ("FROM", base) in steps and not any(k == "COMMENT" and "buildx" in v for k, v in steps)

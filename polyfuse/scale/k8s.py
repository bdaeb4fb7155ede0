"""`polyfuse k8s MODEL --out DIR`: a KServe InferenceService (custom predictor container running
`polyfuse serve`, V2 protocol) and the Dockerfile of its image.

The model reaches the pod one of two ways: ``storage_uri`` (s3://, gs://, pvc://...) is pulled by
KServe's storage initializer into /mnt/models (the STORAGE_URI variable of a custom predictor), or,
without it, the Dockerfile copies the model directory into the image at the same path.

Keys never enter the manifest or the image: API keys, the signature's public key and an encrypted
model's key come from Kubernetes Secrets the manifest only names (:class:`Secrets`).

Every hardening setting is on the container, none on the pod: KServe's default (Serverless) mode
runs the predictor as a Knative Revision, whose webhook rejects a pod-level ``securityContext``
unless the cluster enables ``kubernetes.podspec-securitycontext``; the container's fields
(capabilities, seccomp, read-only root, non-root user) are allowed by default and, in Kubernetes,
readOnlyRootFilesystem, allowPrivilegeEscalation and capabilities exist only there.
"""
from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from polyfuse.artifact import ENCRYPTION, MANIFEST, SIGNATURE, sha256, verify
from polyfuse.errors import PolyfuseError
from polyfuse.privacy.crypto import DEFAULT_KEY_ENV
from polyfuse.version import __version__

MODEL_PATH = "/mnt/models"  # where KServe's storage initializer puts a STORAGE_URI's files
PORT = 8080  # KServe's default port for a custom predictor container
UID = 10001  # the image's user and group; above the range distributions give system and login users
TMP = "/tmp"  # the one writable path (an emptyDir) under a read-only root filesystem
SECRETS_DIR = "/var/run/secrets/polyfuse"
# The key inside each Secret (what `kubectl create secret generic NAME --from-file=KEY=...` names)
API_KEYS_FILE = "api-keys.yaml"
VERIFY_KEY_FILE = "verify-key.pem"
MODEL_KEY = "model-key"
# A pinned patch release, not a moving `3.11-slim`; a digest is added with --base-image (see dockerfile())
BASE_IMAGE = "python:3.11.11-slim-bookworm"
_DNS1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")


@dataclass(frozen=True)
class Secrets:
    """The Kubernetes Secrets (names, in the InferenceService's namespace) the server reads; None: unused."""

    api_keys: str | None = None  # holds API_KEYS_FILE, mounted for `serve --api-keys`
    verify_key: str | None = None  # holds VERIFY_KEY_FILE, mounted for `serve --verify-key`
    model_key: str | None = None  # holds MODEL_KEY, given to the server as $key_env
    key_env: str = DEFAULT_KEY_ENV

    def __post_init__(self) -> None:
        for flag, name in (("api-keys", self.api_keys), ("verify-key", self.verify_key),
                           ("model-key", self.model_key)):
            if name is not None and not (len(name) <= 253 and _DNS1123.match(name)):
                raise PolyfuseError(f"--{flag}-secret {name!r}: not a Kubernetes Secret name (lower-case letters, "
                                    "digits, '-' and '.', at most 253)")
        if not _ENV_NAME.match(self.key_env):
            raise PolyfuseError(f"--key-env {self.key_env!r}: not an environment variable name")

    @property
    def any(self) -> bool:
        return bool(self.api_keys or self.verify_key or self.model_key)


def service_name(model_dir: Path) -> str:
    """A DNS-1035 label from the model's folder name (KServe names Services after it)."""
    name = re.sub(r"[^a-z0-9-]+", "-", model_dir.name.lower()).strip("-")
    name = name if name and name[0].isalpha() else f"polyfuse-{name}".rstrip("-")
    return name[:45]  # KServe appends -predictor-00001-... to it; 63 in all


def secret_wiring(secrets: Secrets) -> tuple[list[str], list[dict], list[dict], list[dict]]:
    """The serve arguments, env entries, volume mounts and pod volumes that hand ``secrets`` to the server."""
    args: list[str] = []
    env: list[dict] = []
    mounts: list[dict] = []
    volumes: list[dict] = []
    for flag, secret, key, volume in (("--api-keys", secrets.api_keys, API_KEYS_FILE, "api-keys"),
                                      ("--verify-key", secrets.verify_key, VERIFY_KEY_FILE, "verify-key")):
        if secret is None:
            continue
        folder = f"{SECRETS_DIR}/{volume}"
        args += [flag, f"{folder}/{key}"]
        mounts.append({"name": volume, "mountPath": folder, "readOnly": True})
        # 0444: without a pod-level fsGroup (see the module docstring) the files are root's, and the
        # non-root server must read them; only this container mounts the volume
        volumes.append({"name": volume, "secret": {"secretName": secret, "items": [{"key": key, "path": key}],
                                                   "defaultMode": 0o444}})
    if secrets.model_key is not None:
        args += ["--key-env", secrets.key_env]
        env.append({"name": secrets.key_env,
                    "valueFrom": {"secretKeyRef": {"name": secrets.model_key, "key": MODEL_KEY}}})
    return args, env, mounts, volumes


def container_security() -> dict[str, Any]:
    """The restricted Pod Security Standard, on the container (see the module docstring for why there)."""
    return {"runAsNonRoot": True, "runAsUser": UID, "runAsGroup": UID, "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"},
            "readOnlyRootFilesystem": True}


def inference_service(model_dir: Path, image: str, *, storage_uri: str | None = None, replicas: int = 1,
                      max_replicas: int = 1, cpu: str = "1", memory: str = "2Gi", secrets: Secrets | None = None,
                      serve_args: list[str] | None = None) -> dict[str, Any]:
    """The InferenceService as a dict (serving.kserve.io/v1beta1)."""
    secret_args, secret_env, secret_mounts, secret_volumes = secret_wiring(secrets or Secrets())
    env = [{"name": "PROTOCOL", "value": "v2"},  # KServe reads a custom predictor's protocol from here
           {"name": "ORT_DISABLE_TELEMETRY", "value": "1"},
           # `polyfuse serve` writes no file (traced, ONNX and torch runtimes); these put whatever a
           # library falls back to (tempfile, ~/.cache of torch/transformers) on the writable volume
           {"name": "TMPDIR", "value": TMP}, {"name": "HOME", "value": TMP},
           {"name": "XDG_CACHE_HOME", "value": f"{TMP}/.cache"},
           {"name": "POLYFUSE_CACHE", "value": f"{TMP}/.cache/polyfuse"}, *secret_env]
    if storage_uri:
        env.append({"name": "STORAGE_URI", "value": storage_uri})

    def probe(path: str, delay: int, period: int) -> dict[str, Any]:
        return {"httpGet": {"path": path, "port": PORT}, "initialDelaySeconds": delay, "periodSeconds": period,
                "timeoutSeconds": 2, "failureThreshold": 3}

    container = {
        "name": "kserve-container",
        "image": image,
        "args": ["serve", MODEL_PATH, "--host", "0.0.0.0", "--port", str(PORT), *secret_args, *(serve_args or [])],
        "ports": [{"containerPort": PORT, "name": "http1", "protocol": "TCP"}],
        "env": env,
        # readiness turns false while the model loads and while draining on SIGTERM (polyfuse.serve.server)
        "readinessProbe": probe("/v2/health/ready", 5, 5),
        "livenessProbe": probe("/v2/health/live", 30, 10),
        "resources": {"requests": {"cpu": cpu, "memory": memory}, "limits": {"cpu": cpu, "memory": memory}},
        "securityContext": container_security(),
        "volumeMounts": [{"name": "tmp", "mountPath": TMP}, *secret_mounts],
    }
    name = service_name(model_dir)
    predictor = {"minReplicas": replicas, "maxReplicas": max(replicas, max_replicas),
                 "terminationGracePeriodSeconds": 30,
                 # the server never calls the Kubernetes API: no token for an intruder to use
                 "automountServiceAccountToken": False,
                 "containers": [container],
                 "volumes": [{"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}}, *secret_volumes]}
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/name": name,
                                              "app.kubernetes.io/managed-by": "polyfuse"}},
        "spec": {"predictor": predictor},
    }


def check_base_image(ref: str) -> str:
    """``ref`` when it names a fixed image: a version tag and/or a sha256 digest, never `latest` or no tag."""
    if _DIGEST.search(ref):
        return ref
    tag = ref.rsplit("/", 1)[-1].partition(":")[2]  # after the last '/': a registry's :port is not a tag
    if not tag or tag == "latest" or not re.search(r"\d", tag):
        raise PolyfuseError(f"--base-image {ref!r}: name a fixed version (python:3.11.11-slim-bookworm) or a digest "
                            "(python:3.11.11-slim-bookworm@sha256:...), never a moving tag such as latest")
    return ref


def image_name(name: str, digest12: str, image: str | None) -> str:
    """``image`` (its tag defaulting to the model's digest), else polyfuse-NAME:DIGEST12; never :latest,
    so that a new model can never run under an old image's tag, or the reverse."""
    if image is None:
        return f"polyfuse-{name}:{digest12}"
    last = image.rsplit("/", 1)[-1]
    if "@" in last:
        return image
    if ":" not in last:
        return f"{image}:{digest12}"
    if last.partition(":")[2] == "latest":
        raise PolyfuseError(f"--image {image!r}: a :latest tag names whichever image was pushed last; leave the "
                            f"tag out (it becomes the model's digest, {digest12}) or give a fixed one")
    return image


def dockerfile(from_source: bool, bake_model: bool, base_image: str = BASE_IMAGE) -> str:
    """The server image: polyfuse with the serve extra, a non-root user, a HEALTHCHECK on /v2/health/live.

    Its build context is the folder it is written in: ``src/`` (polyfuse's source, when it runs from a
    checkout; else this polyfuse version comes from the package index) and ``model/`` (baked in at
    /mnt/models)."""
    install = ("COPY src /src\nRUN pip install \"/src[serve]\" && rm -rf /src\n" if from_source
               else f"RUN pip install \"polyfuse[serve]=={__version__}\"\n")
    bake = f"COPY --chown={UID}:{UID} model {MODEL_PATH}\n" if bake_model else ""
    pin = ("" if _DIGEST.search(base_image) else
           "# Pin the digest too (a tag can be re-pushed): `docker buildx imagetools inspect IMAGE` prints it;\n"
           "# regenerate with `polyfuse k8s ... --base-image IMAGE@sha256:<digest>`.\n")
    return f"""\
# syntax=docker/dockerfile:1
# polyfuse model server: docker build -t IMAGE <this folder>
{pin}FROM {base_image}
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \\
    ORT_DISABLE_TELEMETRY=1
# the numeric user the InferenceService runs as (runAsUser/runAsGroup {UID}); --no-log-init: no sparse lastlog
RUN groupadd --gid {UID} polyfuse \\
 && useradd --uid {UID} --gid {UID} --no-log-init --create-home --shell /usr/sbin/nologin polyfuse
{install}{bake}USER {UID}:{UID}
WORKDIR /home/polyfuse
EXPOSE {PORT}
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \\
  CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:{PORT}/v2/health/live', timeout=2).status != 200)"
ENTRYPOINT ["polyfuse"]
CMD ["serve", "{MODEL_PATH}", "--host", "0.0.0.0", "--port", "{PORT}"]
"""


def secret_commands(secrets: Secrets, model_dir: Path) -> str:
    """A shell script of the `kubectl create secret` commands ``secrets`` needs; it holds no secret itself:
    keys are read from files and from $key_env, never typed into argv or a shell history."""
    lines = ["#!/bin/sh", "# The Secrets the InferenceService reads; run in its namespace (kubectl -n NS ...).",
             "set -eu"]
    if secrets.api_keys:
        lines += ["# API keys: YAML/JSON, id -> key or a list of {id, key, rate} (polyfuse serve --api-keys)",
                  f"kubectl create secret generic {secrets.api_keys} --from-file={API_KEYS_FILE}=./api-keys.yaml"]
    if secrets.verify_key:
        lines += ["# the PUBLIC half of `polyfuse keygen --sign` (never the private key)",
                  f"kubectl create secret generic {secrets.verify_key} "
                  f"--from-file={VERIFY_KEY_FILE}=./polyfuse-signing.pem.pub"]
    if secrets.model_key:
        lines += [f"# the key {model_dir.name} was encrypted with, from ${secrets.key_env} (polyfuse encrypt)",
                  f"printf %s \"${secrets.key_env}\" | kubectl create secret generic {secrets.model_key} "
                  f"--from-file={MODEL_KEY}=/dev/stdin"]
    return "\n".join(lines) + "\n"


def check_secrets(manifest: dict[str, Any], model_dir: Path, secrets: Secrets, baked: bool) -> None:
    """Refuse manifests whose pod could only fail to start: an encrypted model without its key, or a
    verify key required of a baked-in model that is not signed."""
    if ENCRYPTION in manifest and not secrets.model_key:
        raise PolyfuseError(f"{model_dir} is encrypted (key {manifest[ENCRYPTION].get('key_id', '?')}): the pod needs "
                            "its key; store it in a Secret and pass --model-key-secret NAME")
    if baked and secrets.verify_key and not (model_dir / SIGNATURE).is_file():
        raise PolyfuseError(f"{model_dir} is not signed, so a server with --verify-key would refuse it: run "
                            f"`polyfuse sign {model_dir} --key-file KEY` first, or drop --verify-key-secret")


def copy_source(dest: Path) -> bool:
    """polyfuse's installable source (pyproject.toml, README.md, polyfuse/) into ``dest``, when this
    polyfuse runs from a checkout; False when it was installed from a wheel."""
    package = Path(__file__).resolve().parents[1]  # polyfuse/, from polyfuse/scale/k8s.py
    root = package.parent
    if not (root / "pyproject.toml").exists():
        return False
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    for name in ("pyproject.toml", "README.md"):
        if (root / name).exists():
            shutil.copy2(root / name, dest / name)
    shutil.copytree(package, dest / "polyfuse", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return True


def write_manifests(model_dir: str | Path, out: str | Path, *, image: str | None = None,
                    storage_uri: str | None = None, base_image: str = BASE_IMAGE, secrets: Secrets | None = None,
                    **service: Any) -> list[Path]:
    """Write inference_service.yaml and Dockerfile into ``out``, with the Dockerfile's build context
    beside it (``src/``, and ``model/`` when no storage_uri is given), and create_secrets.sh when the
    pod reads Secrets. Returns the files written."""
    model_dir, out, secrets = Path(model_dir), Path(out), secrets or Secrets()
    if not (model_dir / "spec.yaml").exists():
        raise PolyfuseError(f"{model_dir}: not a polyfuse model directory (no spec.yaml)")
    manifest = verify(model_dir)  # the image tag names these files: never tag (or bake) a modified model
    check_secrets(manifest, model_dir, secrets, baked=not storage_uri)
    base_image = check_base_image(base_image)
    image = image_name(service_name(model_dir), sha256(model_dir / MANIFEST)[:12], image)
    out.mkdir(parents=True, exist_ok=True)
    isvc = out / "inference_service.yaml"
    isvc.write_text(yaml.safe_dump(inference_service(model_dir, image, storage_uri=storage_uri, secrets=secrets,
                                                     **service), sort_keys=False))
    written = [isvc]
    if not storage_uri:  # baked in: a copy inside the build context
        baked = (out / "model").resolve()
        if baked != model_dir.resolve():
            shutil.rmtree(baked, ignore_errors=True)
            shutil.copytree(model_dir, baked)
    dfile = out / "Dockerfile"
    dfile.write_text(dockerfile(copy_source(out / "src"), bake_model=not storage_uri, base_image=base_image))
    written.append(dfile)
    if secrets.any:
        script = out / "create_secrets.sh"
        script.write_text(secret_commands(secrets, model_dir))
        written.append(script)
    return written

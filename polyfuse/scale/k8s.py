"""`polyfuse k8s MODEL --out DIR`: a KServe InferenceService (custom predictor container running
`polyfuse serve`, V2 protocol) and the Dockerfile of its image.

The model reaches the pod one of two ways: ``storage_uri`` (s3://, gs://, pvc://...) is pulled by
KServe's storage initializer into /mnt/models (the STORAGE_URI variable of a custom predictor), or,
without it, the Dockerfile copies the model directory into the image at the same path.
"""
from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import yaml

from polyfuse.errors import PolyfuseError

MODEL_PATH = "/mnt/models"  # where KServe's storage initializer puts a STORAGE_URI's files
PORT = 8080  # KServe's default port for a custom predictor container
UID = 10001


def service_name(model_dir: Path) -> str:
    """A DNS-1035 label from the model's folder name (KServe names Services after it)."""
    name = re.sub(r"[^a-z0-9-]+", "-", model_dir.name.lower()).strip("-")
    name = name if name and name[0].isalpha() else f"polyfuse-{name}".rstrip("-")
    return name[:45]  # KServe appends -predictor-00001-... to it; 63 in all


def inference_service(model_dir: Path, image: str, *, storage_uri: str | None = None, replicas: int = 1,
                      max_replicas: int = 1, cpu: str = "1", memory: str = "2Gi",
                      serve_args: list[str] | None = None) -> dict[str, Any]:
    """The InferenceService as a dict (serving.kserve.io/v1beta1)."""
    env = [{"name": "PROTOCOL", "value": "v2"},  # KServe reads a custom predictor's protocol from here
           {"name": "ORT_DISABLE_TELEMETRY", "value": "1"}]
    if storage_uri:
        env.append({"name": "STORAGE_URI", "value": storage_uri})

    def probe(path: str, delay: int, period: int) -> dict[str, Any]:
        return {"httpGet": {"path": path, "port": PORT}, "initialDelaySeconds": delay, "periodSeconds": period,
                "timeoutSeconds": 2, "failureThreshold": 3}

    container = {
        "name": "kserve-container",
        "image": image,
        "args": ["serve", MODEL_PATH, "--host", "0.0.0.0", "--port", str(PORT), *(serve_args or [])],
        "ports": [{"containerPort": PORT, "name": "http1", "protocol": "TCP"}],
        "env": env,
        # readiness turns false while the model loads and while draining on SIGTERM (polyfuse.serve.server)
        "readinessProbe": probe("/v2/health/ready", 5, 5),
        "livenessProbe": probe("/v2/health/live", 30, 10),
        "resources": {"requests": {"cpu": cpu, "memory": memory}, "limits": {"cpu": cpu, "memory": memory}},
        "securityContext": {"runAsNonRoot": True, "runAsUser": UID, "allowPrivilegeEscalation": False},
    }
    name = service_name(model_dir)
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/name": name,
                                              "app.kubernetes.io/managed-by": "polyfuse"}},
        "spec": {"predictor": {"minReplicas": replicas, "maxReplicas": max(replicas, max_replicas),
                               "terminationGracePeriodSeconds": 30, "containers": [container]}},
    }


def dockerfile(from_source: bool, bake_model: bool, python: str = "3.11") -> str:
    """The server image: polyfuse with the serve extra, a non-root user, a HEALTHCHECK on /v2/health/live.

    Its build context is the folder it is written in: ``src/`` (polyfuse's source, when it runs from a
    checkout; else polyfuse comes from the package index) and ``model/`` (baked in at /mnt/models)."""
    install = ("COPY src /src\nRUN pip install \"/src[serve]\" && rm -rf /src\n" if from_source
               else "RUN pip install \"polyfuse[serve]\"\n")
    bake = f"COPY --chown={UID}:{UID} model {MODEL_PATH}\n" if bake_model else ""
    return f"""\
# syntax=docker/dockerfile:1
# polyfuse model server: docker build -t IMAGE <this folder>
FROM python:{python}-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 ORT_DISABLE_TELEMETRY=1
RUN groupadd --gid {UID} polyfuse && useradd --uid {UID} --gid {UID} --create-home polyfuse
{install}{bake}USER {UID}:{UID}
WORKDIR /home/polyfuse
EXPOSE {PORT}
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \\
  CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:{PORT}/v2/health/live', timeout=2).status != 200)"
ENTRYPOINT ["polyfuse"]
CMD ["serve", "{MODEL_PATH}", "--host", "0.0.0.0", "--port", "{PORT}"]
"""


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
                    storage_uri: str | None = None, **service: Any) -> list[Path]:
    """Write inference_service.yaml and Dockerfile into ``out``, with the Dockerfile's build context
    beside it (``src/``, and ``model/`` when no storage_uri is given). Returns the two files."""
    model_dir, out = Path(model_dir), Path(out)
    if not (model_dir / "spec.yaml").exists():
        raise PolyfuseError(f"{model_dir}: not a polyfuse model directory (no spec.yaml)")
    out.mkdir(parents=True, exist_ok=True)
    name = service_name(model_dir)
    image = image or f"polyfuse-{name}:latest"
    written = []
    isvc = out / "inference_service.yaml"
    isvc.write_text(yaml.safe_dump(inference_service(model_dir, image, storage_uri=storage_uri, **service),
                                   sort_keys=False))
    written.append(isvc)
    if not storage_uri:  # baked in: a copy inside the build context
        baked = (out / "model").resolve()
        if baked != model_dir.resolve():
            shutil.rmtree(baked, ignore_errors=True)
            shutil.copytree(model_dir, baked)
    dfile = out / "Dockerfile"
    dfile.write_text(dockerfile(copy_source(out / "src"), bake_model=not storage_uri))
    written.append(dfile)
    return written

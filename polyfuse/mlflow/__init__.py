"""polyfuse models as an MLflow flavour: ``polyfuse.mlflow.log_model(model_dir)`` logs the artifact with a
pyfunc wrapper, so ``mlflow.pyfunc.load_model(uri)``, `mlflow models serve` and MLflow's model registry
take it like any MLflow model.

The pyfunc is MLflow's "model from code" (``polyfuse/mlflow/pyfunc.py`` is logged as source, nothing is
pickled); it runs the torch-free runtime on the model's verified ONNX export, its input a pandas
DataFrame of raw records (file paths absolute, or relative to ``folder`` given in ``params``).
May import: ``polyfuse.deploy`` (the ONNX export it needs), ``polyfuse.runtime`` and everything below them.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from polyfuse.errors import ArtifactError

ARTIFACT_KEY = "polyfuse_model"


def log_model(model_dir: str | Path, name: str = "model", registered_model_name: str | None = None) -> Any:
    """Log ``model_dir`` to the active MLflow run (started if none); exports its fp32 ONNX first when it has none.
    Returns MLflow's ModelInfo (``.model_uri`` loads it)."""
    import mlflow

    from polyfuse import artifact
    from polyfuse.runtime import VARIANTS, listed_files
    from polyfuse.version import __version__

    folder = Path(model_dir)
    manifest = artifact.verify(folder)
    if artifact.ENCRYPTION in manifest:
        raise ArtifactError(f"{folder} is encrypted: MLflow would need its key at every load; log the plain model")
    if VARIANTS["fp32"] not in listed_files(folder):
        from polyfuse.deploy.exporter import export

        export(folder)
    code = Path(__file__).with_name("pyfunc.py")
    return mlflow.pyfunc.log_model(name=name, python_model=str(code), artifacts={ARTIFACT_KEY: str(folder)},
                                   pip_requirements=[f"polyfuse=={__version__}"],
                                   registered_model_name=registered_model_name)

"""The pyfunc MLflow loads for a polyfuse model (logged as code by :func:`polyfuse.mlflow.log_model`).

``predict(DataFrame of raw records)`` -> a DataFrame: each output's prediction (and class probability),
from the torch-free runtime over the artifact's verified ONNX export.
"""
from __future__ import annotations

import mlflow
from mlflow.pyfunc import PythonModel


class PolyfuseModel(PythonModel):
    def load_context(self, context):  # noqa: ANN001 - MLflow reads hints as a schema: none given
        from polyfuse.runtime import Runtime

        self.runtime = Runtime(context.artifacts["polyfuse_model"])

    def predict(self, context, model_input, params=None):  # noqa: ANN001, ANN201 - as load_context
        import pandas as pd

        records = model_input.to_dict("records") if hasattr(model_input, "to_dict") else list(model_input)
        folder = (params or {}).get("folder")
        return pd.DataFrame(self.runtime.predict(records, folder=folder))


mlflow.models.set_model(PolyfuseModel())

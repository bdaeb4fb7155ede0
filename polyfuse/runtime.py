"""Torch-free inference over an exported artifact: numpy + onnxruntime + pillow + soundfile/soxr
(+ pydantic/pyyaml for the spec). It runs the very preprocessing code that training used.

    from polyfuse.runtime import Runtime
    rt = Runtime("runs/avdigits")                       # model.onnx; variant="int8" for the int8 build
    rt.predict([{"image": open("7.png", "rb").read(), "audio": "7.wav"}])
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from polyfuse.artifact import MANIFEST, open_artifact, verify
from polyfuse.errors import ArtifactError, BadInputError
from polyfuse.preprocess.pipeline import Preprocessor
from polyfuse.preprocess.targets import MODALITY_WEIGHTS, decode_outputs
from polyfuse.spec.schema import load_spec
from polyfuse.threads import usable_cpus

VARIANTS = {"fp32": "model.onnx", "int8-dynamic": "model.int8-dynamic.onnx", "int8-static": "model.int8-static.onnx"}
PT2 = "model.pt2"  # the torch.export program polyfuse.deploy.exporter writes (torch runs it, not this runtime)
# the ExecuTorch programs polyfuse.deploy.pte writes (ExecuTorch's runtime runs them, not this one)
PTE = {"fp32": "model.pte", "int8-static": "model.int8-static.pte", "int8-dynamic": "model.int8-dynamic.pte"}
# the LiteRT flatbuffers polyfuse.deploy.litert writes (LiteRT's interpreter runs them, not this runtime)
LITERT = {"fp32": "model.tflite", "int8-dynamic": "model.int8-dynamic.tflite"}


def listed_files(folder: Path) -> set[str]:
    """The files manifest.json lists (unverified: for choosing what to load; loading verifies)."""
    try:
        files = json.loads((folder / MANIFEST).read_text()).get("files")
    except (OSError, ValueError, AttributeError):
        return set()
    return set(files) if isinstance(files, dict) else set()


def variant_file(folder: Path, variant: str) -> Path:
    """The ONNX file of a variant; ``int8`` means the static build if present, else the dynamic one.
    Only files the manifest lists count: a graph dropped into the folder is never picked."""
    listed = listed_files(folder)
    if variant == "int8":
        for name in ("int8-static", "int8-dynamic"):
            if VARIANTS[name] in listed:
                return folder / VARIANTS[name]
        raise ArtifactError(f"{folder}: no int8 model; run `polyfuse export {folder} --to onnx --quantize dynamic` first")
    if variant not in VARIANTS:
        raise ArtifactError(f"unknown variant {variant!r}; expected one of {['int8', *VARIANTS]}")
    path = folder / VARIANTS[variant]
    if path.name not in listed:
        flag = "" if variant == "fp32" else f" --quantize {variant.split('-')[1]}"
        raise ArtifactError(f"{folder}: no {path.name}; run `polyfuse export {folder} --to onnx{flag}` first")
    return path


def open_session(path: Path, threads: int | None = None, data: bytes | None = None) -> Any:
    """An ONNX Runtime session over ``path``, or over ``data`` (the model's bytes, e.g. decrypted in memory)."""
    import onnxruntime as ort

    ort.disable_telemetry_events()  # the API switch too, for builds that ignore ORT_DISABLE_TELEMETRY
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads or usable_cpus()
    options.inter_op_num_threads = 1
    # idle worker threads otherwise spin for milliseconds after each call, stealing the CPU that
    # preprocessing and other requests need (measured: ~10x the CPU per single-record call)
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        return ort.InferenceSession(data if data is not None else str(path), options, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own Fail/InvalidProtobuf types without a common base
        raise ArtifactError(f"{path}: not a loadable ONNX model ({str(e).splitlines()[0][:200]}); re-export it") from None


class Runtime:
    """A loaded, verified ONNX model with its preprocessing."""

    def __init__(self, path: str | Path, variant: str = "fp32", threads: int | None = None, *,
                 key_env: str | None = None, verify_key: str | Path | None = None):
        """``key_env``: the variable holding the key of an encrypted artifact (default POLYFUSE_KEY;
        naming it demands an encrypted artifact); ``verify_key``: a PEM public key file; unsigned or
        mis-signed artifacts are then refused. Only files the manifest lists are read."""
        self.path = Path(path)
        try:
            self.model_file = variant_file(self.path, variant)
        except ArtifactError:
            verify(self.path)  # a missing or broken directory is named as such, before a missing export
            raise
        opened = open_artifact(self.path, key_env=key_env, verify_key=verify_key,
                               prefetch=("spec.yaml", "preprocess.json", self.model_file.name))
        self.manifest = opened.manifest
        spec_bytes = opened.read("spec.yaml")
        self.spec, _ = load_spec(yaml.safe_load(spec_bytes))
        self.preprocessor = Preprocessor.from_json(self.spec, opened.text("preprocess.json"))
        self.session = open_session(self.model_file, threads, opened.read(self.model_file.name))
        meta = self.session.get_modelmeta().custom_metadata_map
        digest = hashlib.sha256(spec_bytes).hexdigest()  # of the plain spec, which the export recorded
        if meta.get("polyfuse_spec_sha256") != digest:
            raise ArtifactError(f"{self.model_file}: this ONNX file was exported from another spec "
                                f"(spec digest {meta.get('polyfuse_spec_sha256', 'missing')[:12]} != {digest[:12]}); re-export it")
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.labels = json.loads(meta.get("polyfuse_labels", "{}"))

    def run_arrays(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Probabilities per output for a collated batch (the model alone)."""
        feed = {name: batch[name] for name in self.input_names}
        return dict(zip(self.output_names, self.session.run(self.output_names, feed)))

    def predict_proba(self, records: Any, folder: str | Path | None = None) -> dict[str, np.ndarray]:
        """Raw records -> {output: probabilities [N, classes]} (numbers: standardised values)."""
        batch, _ = self.preprocessor.transform(self._records(records), Path(folder) if folder else None)
        return self.run_arrays(batch)

    def predict(self, records: Any, folder: str | Path | None = None) -> list[dict[str, Any]]:
        """Raw records -> one dict per record: each output's prediction and its probability."""
        probs = self.predict_proba(records, folder)
        decoded = decode_outputs(self.spec, self.preprocessor.state, probs)
        results = []
        for i in range(len(next(iter(decoded.values())))):
            row: dict[str, Any] = {}
            for name, cfg in self.spec.outputs.items():
                row[name] = decoded[name][i]
                if cfg.type in ("category", "binary"):
                    row[f"{name}_probability"] = float(probs[name][i].max())
                    if row[name] is None:
                        row["reason"] = "low confidence"
            if MODALITY_WEIGHTS in probs:
                row["modality_weights"] = {n: float(w) for n, w in zip(self.spec.inputs, probs[MODALITY_WEIGHTS][i])}
            results.append(row)
        return results

    def stream(self, samples_iter: Any, hop: int, context: dict | None = None, clock: str | None = None) -> Any:
        """Predictions as samples arrive: ``samples_iter`` yields ``{input: samples}``; every ``hop`` clock
        samples (once each stream input's window is full) yields ``{"window_end": n, **prediction}``.
        The windows live in polyfuse.preprocess.streams.StreamWindows; each goes through ``predict``."""
        from polyfuse.preprocess.streams import StreamWindows

        windows = StreamWindows(self.spec, hop, context or {}, clock)
        for chunk in samples_iter:
            for name, samples in chunk.items():
                windows.push(name, samples)
            due = list(windows.ready_with_ends())
            if due:
                for (end, _), row in zip(due, self.predict([r for _, r in due])):
                    yield {"window_end": end, **row}

    def _records(self, records: Any) -> Any:
        if isinstance(records, dict):
            records = [records]
        if isinstance(records, (list, tuple)):
            known = {self.spec.column(n) for n in self.spec.inputs}
            for i, record in enumerate(records):
                if isinstance(record, dict) and not known & set(record):
                    raise BadInputError(f"record {i} has none of the model's inputs {sorted(known)} "
                                        f"(it has {sorted(record)[:10]}); name at least one")
        return records

"""The user-facing model: ``train`` / ``load`` and ``predict`` / ``predict_proba`` / ``evaluate`` / ``save``."""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from safetensors.torch import load as load_safetensors
from safetensors.torch import save_file

from polyfuse import artifact
from polyfuse.data.io import read_table
from polyfuse.errors import ArtifactError
from polyfuse.evaluate.scores import evaluate as _evaluate
from polyfuse.nn import heads, pruned
from polyfuse.nn.members import LinearMembers
from polyfuse.nn.model import FusionModel, predict_arrays
from polyfuse.preprocess import targets
from polyfuse.preprocess.pipeline import Decoded, Preprocessor, decode_table
from polyfuse.preprocess.targets import MODALITY_WEIGHTS
from polyfuse.spec.schema import Spec, load_spec
from polyfuse.version import __version__


@dataclass
class Model:
    """A trained fusion model with its fitted preprocessing (scikit-learn-style API)."""

    spec: Spec
    preprocessor: Preprocessor
    net: FusionModel
    metrics: dict[str, Any] = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    data_info: dict[str, Any] = field(default_factory=dict)

    # ------------------------------------------------------------------ inference
    def run_arrays(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Probabilities per output for a collated batch (the model alone)."""
        logits = predict_arrays(self.net, batch)
        out = {n: heads.probabilities(c, logits[n]).numpy() for n, c in self.spec.outputs.items()}
        if MODALITY_WEIGHTS in logits:
            out[MODALITY_WEIGHTS] = logits[MODALITY_WEIGHTS].numpy()
        return out

    def _probabilities(self, records: Any, folder: Path | None = None) -> tuple[dict[str, np.ndarray], Decoded]:
        batch, decoded = self.preprocessor.transform(records, folder)
        return self.run_arrays(batch), decoded

    def predict_proba(self, records: Any, folder: str | Path | None = None) -> Any:
        """Class probabilities: a DataFrame (one column per class) per classification output;
        a single DataFrame when the model has one output."""
        import pandas as pd

        probs, decoded = self._probabilities(records, Path(folder) if folder else None)
        out = {}
        for name, cfg in self.spec.outputs.items():
            if cfg.type == "number":
                continue
            out[name] = pd.DataFrame(probs[name], columns=self.preprocessor.classes(name), index=decoded.rows)
        return next(iter(out.values())) if len(out) == 1 else out

    def predict(self, records: Any, folder: str | Path | None = None) -> Any:
        """Predictions as a DataFrame with one column per output, indexed by row id.

        ``records`` is a dict, a list of dicts, a DataFrame or a table path; file paths in it
        are relative to ``folder`` (default: the table's folder, or the current directory).
        """
        import pandas as pd

        probs, decoded = self._probabilities(records, Path(folder) if folder else None)
        frame = pd.DataFrame(self.decode_predictions(probs), index=decoded.rows)
        if MODALITY_WEIGHTS in probs:  # gated fusion: how much each input counted for each record
            for i, name in enumerate(self.spec.inputs):
                frame[f"weight_{name}"] = probs[MODALITY_WEIGHTS][:, i]
        return frame

    def decode_predictions(self, probs: dict[str, np.ndarray]) -> dict[str, list]:
        """Turn head outputs into labels (category/binary), label lists (multilabel) or numbers."""
        return targets.decode_outputs(self.spec, self.preprocessor.state, probs)

    def evaluate(self, data: Any, folder: str | Path | None = None, on_bad_row: str = "skip") -> dict[str, Any]:
        """Metrics on a labelled table (path, DataFrame or records), with per-input ablation."""
        table = read_table(data, Path(folder) if folder else None)
        decoded = decode_table(self.spec, table, with_targets=True, on_bad_row=on_bad_row)
        result = _evaluate(self.net, self.preprocessor, decoded)
        result["rows"] = len(decoded)
        result["bad_rows"] = [str(b) for b in decoded.bad]
        return result

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | Path, extra_files: dict[str, Path] | None = None) -> Path:
        """Write the artifact directory atomically (safetensors + JSON/YAML, manifest last)."""
        from polyfuse.evaluate import card

        def fill(tmp: Path) -> None:
            (tmp / "spec.yaml").write_text(yaml.safe_dump(self.spec.to_dict(), sort_keys=False))
            save_file({k: v.contiguous() for k, v in self.net.state_dict().items()}, str(tmp / "weights.safetensors"))
            (tmp / "preprocess.json").write_text(self.preprocessor.to_json())
            if getattr(self.net, "pruned_layers", None):  # widths the spec alone no longer gives
                (tmp / "structure.json").write_text(json.dumps(self.net.pruned_layers, indent=1))
            (tmp / "metrics.json").write_text(json.dumps(self.metrics, indent=1, default=str))
            (tmp / "history.json").write_text(json.dumps(self.history, indent=1))
            if self.data_info:
                (tmp / "data.json").write_text(json.dumps(self.data_info, indent=1, default=str))
            for name, src in (extra_files or {}).items():
                shutil.copyfile(src, tmp / name)
            (tmp / "MODEL_CARD.md").write_text(card.render(self))
            artifact.write_manifest(tmp, {"polyfuse_version": __version__, **self.info, **_zoo_sources(self.spec)})

        return artifact.write_dir(path, fill)


def _zoo_sources(spec: Spec) -> dict[str, Any]:
    """The zoo models the network's backbones came from (source, licence, package), for the manifest."""
    from polyfuse.spec.inputs import hf_encoder
    from polyfuse.zoo.catalog import describe, entry

    used = {name: describe(entry(enc.pretrained)) for name, cfg in spec.inputs.items()
            if (enc := hf_encoder(cfg)) is not None and enc.pretrained is not None}
    return {"pretrained_zoo": used} if used else {}


def _spec_base(spec: Any) -> tuple[Spec, Path]:
    return load_spec(spec)


def train(spec: Any, data: Any = None, out: str | Path | None = None, resume: bool = False,
          show_progress: bool | None = None, callback: Any = None, *, base: str | Path | None = None,
          soft: Any = None) -> Model:
    """Train from a spec (YAML path, dict or Spec); ``data`` overrides ``data.train`` (e.g. a DataFrame).

    With ``out``, checkpoints go to ``<out>.checkpoint`` each epoch and the artifact to ``out``.
    ``base``: the folder relative paths start from (default: the spec file's, or the working directory);
    ``soft``: a :class:`polyfuse.training.soft_targets.SoftTargets` the network learns instead of the labels.
    """
    import time

    from polyfuse.evaluate import report
    from polyfuse.training.recipe import run

    from polyfuse.training.memory import peak_mb, reset_peak

    from polyfuse.training.tracking import tracker_for

    spec_obj, found = _spec_base(spec)
    base = Path(base) if base is not None else found
    t0 = time.perf_counter()
    fresh = reset_peak()
    tracker = tracker_for(spec_obj, base) if os.environ.get("RANK", "0") == "0" else None
    hook = callback
    if tracker is not None:
        def hook(epoch: int, record: dict) -> None:
            tracker.epoch(epoch, record)
            if callback is not None:
                callback(epoch, record)
    try:
        result = run(spec_obj, base, data=data, out=Path(out) if out else None, resume=resume,
                     show_progress=show_progress, callback=hook, soft=soft)
    except BaseException as e:
        if tracker is not None:
            tracker.stopped(e)
        raise
    metrics = dict(result.metrics)
    metrics["sizes"] = result.sizes
    metrics["train_seconds"] = round(result.train_seconds, 2)
    metrics["total_seconds"] = round(time.perf_counter() - t0, 2)
    # the run's peak resident memory (this process; workers of torchrun or a DataLoader are not in it)
    metrics["peak_rss_mb"] = {"mb": round(peak_mb(), 1), "since": "this run" if fresh else "the process started"}
    metrics["bad_rows"] = [str(b) for b in result.bad_rows]
    model = Model(result.spec or spec_obj, result.preprocessor, result.net, metrics, result.history, data_info=result.data_info)
    if out is not None and result.main:  # under torchrun, rank 0 writes the artifact
        with report.plots(model) as files:
            model.save(out, extra_files=files)
        shutil.rmtree(str(out) + ".checkpoint", ignore_errors=True)
    if tracker is not None:
        tracker.finish(metrics, Path(out) if out is not None and result.main else None)
    return model


def load(path: str | Path, *, key_env: str | None = None, verify_key: str | Path | None = None) -> Model:
    """Load an artifact directory after verifying every file against its manifest.

    An encrypted artifact is decrypted in memory with the key in ``$key_env`` (default
    POLYFUSE_KEY); naming ``key_env`` demands an encrypted artifact (a plain one is refused). With
    ``verify_key`` (a PEM public key file) an unsigned or mis-signed artifact is refused. Only
    files the manifest lists are read, each checked against its digest.
    """
    path = Path(path)
    opened = artifact.open_artifact(path, key_env=key_env, verify_key=verify_key,
                                    prefetch=("spec.yaml", "preprocess.json", "weights.safetensors"))
    try:
        spec, _ = load_spec(yaml.safe_load(opened.read("spec.yaml")))
        pre = Preprocessor.from_json(spec, opened.text("preprocess.json"))
        net = FusionModel(spec, pre.state)
        weights = load_safetensors(opened.read("weights.safetensors"))
        weights.setdefault("temperature", torch.ones(len(spec.outputs)))  # saved before calibration existed
        if net.members is not None and not any(k.startswith("members.") for k in weights):
            net.members = None  # saved before ensembles existed: the network alone, as it was selected
        if len(net.extra) and not any(k.startswith("extra.") for k in weights):
            # saved when pretrained inputs kept train.networks to one network: its mix had no further networks
            net.extra = torch.nn.ModuleList()
            net.members = LinearMembers(spec, pre.state, 0) if net.members is not None else None
        if opened.has("structure.json"):  # a pruned network: its layers narrowed as they were saved
            net.pruned_layers = json.loads(opened.read("structure.json"))
            pruned.reshape(net, net.pruned_layers, weights)
        net.load_state_dict(weights)
    except (KeyError, ValueError, RuntimeError, json.JSONDecodeError) as e:
        raise ArtifactError(f"{path}: the artifact does not load ({e}); it may come from another polyfuse version") from None
    net.eval()
    metrics = json.loads(opened.read("metrics.json")) if opened.has("metrics.json") else {}
    data_info = json.loads(opened.read("data.json")) if opened.has("data.json") else {}
    return Model(spec, pre, net, metrics, info={"manifest": opened.manifest, "path": str(path)}, data_info=data_info)


def set_threads(n: int | None) -> None:
    if n:
        torch.set_num_threads(n)

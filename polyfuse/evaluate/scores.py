"""Evaluation of a trained model on decoded rows: metrics per output and per-input ablation."""
from __future__ import annotations

from typing import Any

import numpy as np

from polyfuse.evaluate import metrics
from polyfuse.nn import heads
from polyfuse.nn.model import FusionModel, predict_arrays, with_frozen_features
from polyfuse.preprocess.pipeline import Decoded, Preprocessor


def output_metrics(net: FusionModel, pre: Preprocessor, batch: dict, target: dict, full: bool) -> dict[str, Any]:
    return metrics_from_logits(pre, predict_arrays(net, batch), target, full)


def metrics_from_logits(pre: Preprocessor, logits: dict, target: dict, full: bool) -> dict[str, Any]:
    result = {}
    for name, cfg in pre.spec.outputs.items():
        probs = heads.probabilities(cfg, logits[name]).numpy()
        result[name] = metrics.compute(cfg, pre.state[name], probs, target[name], full=full)
    return result


def evaluate(net: FusionModel, pre: Preprocessor, decoded: Decoded, ablation: bool = True,
             batch: dict | None = None) -> dict[str, Any]:
    """Full metrics for every output; with ``ablation``, the headline metric with each input removed
    (``without``) and, for three or more inputs, with only one input kept (``only``)."""
    batch = pre.collate(decoded) if batch is None else batch  # callers that already collated pass it
    if ablation:
        batch = with_frozen_features(net, batch)  # the backbones once, not once per ablation
    target = pre.targets(decoded)
    result: dict[str, Any] = {"outputs": output_metrics(net, pre, batch, target, full=True)}
    names = list(pre.spec.inputs)
    if ablation and len(names) > 1:
        def masked(keep: set[str]) -> dict[str, float]:
            b = dict(batch)
            for n in names:
                if n not in keep:
                    b[f"{n}__present"] = np.zeros_like(batch[f"{n}__present"])
            scores = output_metrics(net, pre, b, target, full=False)
            return {o: scores[o][metrics.headline(c)] for o, c in pre.spec.outputs.items()}

        result["ablation"] = {
            "all": {o: result["outputs"][o][metrics.headline(c)] for o, c in pre.spec.outputs.items()},
            "without": {n: masked(set(names) - {n}) for n in names},
        }
        if len(names) > 2:
            result["ablation"]["only"] = {n: masked({n}) for n in names}
        else:  # with two inputs, removing one leaves only the other
            result["ablation"]["only"] = {n: result["ablation"]["without"][m] for n, m in zip(names, names[::-1])}
    return result

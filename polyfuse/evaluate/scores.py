"""Evaluation of a trained model on decoded rows: metrics per output and per-input ablation."""
from __future__ import annotations

from typing import Any

import numpy as np

from polyfuse.evaluate import metrics
from polyfuse.nn import heads
from polyfuse.nn.model import FusionModel, predict_arrays, predict_masked
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
    (``without``) and, for three or more inputs, with only one input kept (``only``). The encoders run
    once for all of these (predict_masked): with I-94's 11 inputs, 22 more passes over the rows were
    most of the evaluation's time."""
    batch = pre.collate(decoded) if batch is None else batch  # callers that already collated pass it
    target = pre.targets(decoded)
    names = list(pre.spec.inputs)
    if not (ablation and len(names) > 1):
        return {"outputs": output_metrics(net, pre, batch, target, full=True)}
    eye = np.eye(len(names), dtype=bool)
    keeps = [np.ones(len(names), bool), *~eye, *(eye if len(names) > 2 else [])]
    logits = predict_masked(net, batch, keeps)
    result: dict[str, Any] = {"outputs": metrics_from_logits(pre, logits[0], target, full=True)}

    def headline(out: dict) -> dict[str, float]:
        scores = metrics_from_logits(pre, out, target, full=False)
        return {o: scores[o][metrics.headline(c)] for o, c in pre.spec.outputs.items()}

    result["ablation"] = {
        "all": {o: result["outputs"][o][metrics.headline(c)] for o, c in pre.spec.outputs.items()},
        "without": {n: headline(logits[1 + i]) for i, n in enumerate(names)},
    }
    if len(names) > 2:
        result["ablation"]["only"] = {n: headline(logits[1 + len(names) + i]) for i, n in enumerate(names)}
    else:  # with two inputs, removing one leaves only the other
        result["ablation"]["only"] = {n: result["ablation"]["without"][m] for n, m in zip(names, names[::-1])}
    return result

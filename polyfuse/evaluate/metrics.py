"""Evaluation metrics per output type (scikit-learn's implementations), and the headline metric."""
from __future__ import annotations

import warnings
from typing import Any

import numpy as np


def headline(cfg: Any) -> str:
    """The one figure summarising an output: accuracy for classes, R² for numbers."""
    return {"category": "accuracy", "binary": "accuracy", "multilabel": "f1_micro", "number": "r2"}[cfg.type]


def higher_is_better(metric: str) -> bool:
    return metric not in {"loss", "mae", "rmse", "mse"}


def compute(cfg: Any, state: dict, probs: np.ndarray, target: np.ndarray, full: bool = True) -> dict[str, Any]:
    """Metrics of one output: ``probs`` from the head, ``target`` as encoded for training."""
    from sklearn import metrics as skm

    out: dict[str, Any] = {"n": int(len(target))}
    if len(target) == 0:
        return out
    if cfg.type == "number":
        pred = probs * state["std"] + state["mean"]
        true = target * state["std"] + state["mean"]
        out.update(mae=float(skm.mean_absolute_error(true, pred)),
                   rmse=float(np.sqrt(skm.mean_squared_error(true, pred))),
                   r2=float(skm.r2_score(true, pred)) if len(true) > 1 else float("nan"))
        return out
    if cfg.type == "multilabel":
        pred = (probs >= 0.5).astype(int)
        true = target.astype(int)
        out.update(subset_accuracy=float(skm.accuracy_score(true, pred)),
                   f1_micro=float(skm.f1_score(true, pred, average="micro", zero_division=0)),
                   f1_macro=float(skm.f1_score(true, pred, average="macro", zero_division=0)))
        if full:
            out["roc_auc_macro"] = _auc(lambda: skm.roc_auc_score(true, probs, average="macro"))
        return out
    classes = state["classes"]
    true = target.astype(int)
    pred = probs.argmax(-1)
    labels = list(range(len(classes)))
    out["accuracy"] = float(skm.accuracy_score(true, pred))
    if not full:
        return out
    for avg in ("macro", "weighted"):
        p, r, f, _ = skm.precision_recall_fscore_support(true, pred, labels=labels, average=avg, zero_division=0)
        out.update({f"precision_{avg}": float(p), f"recall_{avg}": float(r), f"f1_{avg}": float(f)})
    out["log_loss"] = float(skm.log_loss(true, np.clip(probs, 1e-7, 1.0), labels=labels))
    out["ece"] = expected_calibration_error(probs, true)
    if cfg.type == "binary":
        out["roc_auc"] = _auc(lambda: skm.roc_auc_score(true, probs[:, 1]))
    else:
        out["roc_auc_ovr_macro"] = _auc(lambda: skm.roc_auc_score(true, probs, multi_class="ovr", labels=labels))
    out["confusion_matrix"] = {"labels": list(classes),
                               "matrix": skm.confusion_matrix(true, pred, labels=labels).tolist()}
    return out


def _auc(fn: Any) -> float | None:
    """ROC-AUC is undefined when a class is absent from the evaluated rows: report None then."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            value = float(fn())
        return None if np.isnan(value) else value
    except ValueError:
        return None


def expected_calibration_error(probs: np.ndarray, target: np.ndarray, bins: int = 15) -> float:
    """Top-label ECE: |accuracy − confidence| averaged over equal-width confidence bins."""
    if probs.ndim == 1:
        probs = np.stack([1 - probs, probs], axis=-1)
    confidence, predicted = probs.max(-1), probs.argmax(-1)
    correct = (predicted == target.astype(int)).astype(np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        inside = (confidence > lo) & (confidence <= hi)
        if inside.any():
            ece += inside.mean() * abs(correct[inside].mean() - confidence[inside].mean())
    return float(ece)

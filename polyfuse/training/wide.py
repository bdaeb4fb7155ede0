"""Fitting the wide half of wide-and-deep text inputs (see :mod:`polyfuse.nn.wide`) before training:
one logistic regression per class output (one per label of a multilabel output) over the hashed
n-grams of every ``wide`` text input, its strength C chosen on the validation rows, installed into the
network's frozen wide tables."""
from __future__ import annotations

import sys
import time
import warnings
from typing import Any

import numpy as np
import torch
from scipy import sparse

from polyfuse.nn.model import FusionModel
from polyfuse.nn.wide import wide_inputs
from polyfuse.preprocess.pipeline import Decoded, Preprocessor
from polyfuse.spec.schema import Spec
from polyfuse.training.linear_members import STRENGTHS, fit_labels, unfittable


def features(net: FusionModel, pre: Preprocessor, decoded: Decoded, names: list[str]) -> sparse.csr_matrix:
    """The wide features exactly as the network computes them: per input, IDF weights of the
    n-gram ids, L2-normalised per text, summed per bucket; inputs side by side."""
    batch = pre.collate(decoded, only=names)  # the text ids alone: no image or audio work
    blocks = []
    for name in names:
        ids = batch[name]
        w = net.wide[name].idf.numpy()[ids]
        w = w / np.maximum(np.sqrt((w ** 2).sum(1, keepdims=True)), 1e-6)
        rows = np.repeat(np.arange(len(ids)), ids.shape[1])
        m = sparse.csr_matrix((w.ravel(), (rows, ids.ravel())), shape=(len(ids), net.wide[name].table.shape[0]))
        m.sum_duplicates()
        blocks.append(m)
    return sparse.hstack(blocks, format="csr")


def _class_weight(cfg: Any, classes: list[str]) -> Any:
    if cfg.class_weights == "balanced":
        return "balanced"
    if isinstance(cfg.class_weights, dict):
        return {i: cfg.class_weights.get(c, 1.0) for i, c in enumerate(classes)}
    return None


def _fit(cfg: Any, classes: list[str], x: Any, y: np.ndarray, xv: Any, yv: np.ndarray | None) -> tuple[Any, float, float | None]:
    """The logistic regression with the best validation accuracy over ``STRENGTHS`` (the weakest regularisation without validation)."""
    from sklearn.linear_model import LogisticRegression

    # saga on these unit-norm rows: 1-2 s on 8,000 Chinese headlines where lbfgs took 13-40 s, same accuracy
    model = LogisticRegression(solver="saga", tol=1e-3, max_iter=100, warm_start=True, random_state=0,
                               class_weight=_class_weight(cfg, classes))
    best: tuple[Any, float, float | None] | None = None
    for c in STRENGTHS if yv is not None else STRENGTHS[1:2]:
        model.set_params(C=c)
        model.fit(x, y)
        score = float((model.predict(xv) == yv).mean()) if yv is not None else None
        if best is None or (score is not None and score > best[2]):
            best = ({"coef": model.coef_.copy(), "intercept": model.intercept_.copy(), "classes": model.classes_.copy()},
                    c, score)
    return best


def fit_wide(spec: Spec, pre: Preprocessor, net: FusionModel, train: Decoded, valid: Decoded | None) -> dict[str, Any]:
    """Fit and install the wide paths; returns what was fitted (for metrics.json)."""
    from threadpoolctl import threadpool_limits

    names = [n for n in wide_inputs(spec) if n in net.wide]
    if not names or not net.wide_slices:
        return {}
    started = time.perf_counter()
    x = features(net, pre, train, names)
    xv = features(net, pre, valid, names) if valid is not None and len(valid) else None
    y_all = pre.targets(train)
    yv_all = pre.targets(valid) if xv is not None else {}
    report: dict[str, Any] = {"inputs": names}
    buckets = [net.wide[n].table.shape[0] for n in names]
    with warnings.catch_warnings(), threadpool_limits(1):
        warnings.simplefilter("ignore")  # lbfgs convergence notes: the validation score says how it did
        for out, (a, b) in net.wide_slices.items():
            y = y_all[out].astype(int)
            why = unfittable(y)
            if why:
                report[out] = {"skipped": why}
                continue
            yv = yv_all[out].astype(int) if out in yv_all else None
            if y.ndim == 2:  # multilabel: a regression per label, each label's logit its own column
                coef, intercept, c = fit_labels(x, y, xv, yv)
                fitted = {"coef": coef, "intercept": intercept, "classes": np.arange(b - a)}
                score = None if yv is None else round(float(((_linear_logits(xv, coef, intercept) > 0) == yv).mean()), 5)
            else:
                fitted, c, score = _fit(spec.outputs[out], pre.classes(out), x, y, xv, yv)
            _install(net, names, buckets, fitted, a, b)
            report[out] = {"C": c, "valid_accuracy": score}
    report["seconds"] = round(time.perf_counter() - started, 3)
    shown = ", ".join(f"{o} C={r['C'] if isinstance(r['C'], list) else format(r['C'], 'g')} valid accuracy "
                      f"{r['valid_accuracy']}" for o, r in report.items() if isinstance(r, dict) and "C" in r)
    from polyfuse.training.trainset import log

    log(f"wide path over {', '.join(names)}: {shown} ({report['seconds']:.1f} s)")
    return report


def _linear_logits(x: Any, coef: np.ndarray, intercept: np.ndarray) -> np.ndarray:
    """Logits [N, K] of a fitted linear model on sparse rows."""
    return np.asarray(x @ coef.T) + intercept


def _install(net: FusionModel, names: list[str], buckets: list[int], fitted: dict, a: int, b: int) -> None:
    coef, intercept, classes = fitted["coef"], fitted["intercept"], fitted["classes"]
    # binary: one logit for the positive class; multiclass: one row per class seen in training
    columns = [a] if b - a == 1 else [a + int(c) for c in classes]
    offsets = np.concatenate([[0], np.cumsum(buckets)])
    with torch.no_grad():
        for i, name in enumerate(names):
            part = torch.from_numpy(coef[:, offsets[i] : offsets[i + 1]].T.astype(np.float32))
            net.wide[name].table[:, columns] = part
        net.wide_bias[columns] = torch.from_numpy(intercept.astype(np.float32))


def _nll(kind: str, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    if kind == "category":
        return torch.nn.functional.cross_entropy(logits, y.long())
    z = logits if kind == "multilabel" else logits.squeeze(-1)
    return torch.nn.functional.binary_cross_entropy_with_logits(z, y.float())


def _accuracy(kind: str, logits: torch.Tensor, y: torch.Tensor) -> float:
    """Accuracy (for a multilabel output: over every row's every label)."""
    pred = logits.argmax(-1) if kind == "category" else (logits if kind == "multilabel" else logits.squeeze(-1)) > 0
    return round(float((pred.long() == y.long()).float().mean()), 5)


def blend(spec: Spec, net: FusionModel, batch: dict | None, target: dict | None) -> dict[str, Any]:
    """How much of each output's wide logits to add to the trained deep half: the weight w of
    ``deep + w * wide`` (and a temperature) with the least validation log-loss; w stays 1 without
    validation rows. Returns validation accuracy of the deep half, the wide half and the blend."""
    from polyfuse.nn.model import predict_arrays

    if not net.wide_slices:
        return {}
    outputs = list(spec.outputs)
    if batch is None or target is None:
        with torch.no_grad():
            for name in net.wide_slices:
                net.wide_weight[outputs.index(name)] = 1.0
        return {"note": "no validation rows: the wide logits are added with weight 1"}
    saved = net.temperature.clone()
    with torch.no_grad():
        net.temperature.fill_(1.0)
        net.wide_weight.zero_()
    deep = predict_arrays(net, batch, chunk=512)
    with torch.no_grad():
        net.wide_weight.fill_(1.0)
    both = predict_arrays(net, batch, chunk=512)
    report: dict[str, Any] = {}
    with torch.no_grad():
        net.wide_weight.zero_()
        net.temperature.copy_(saved)
    for name in net.wide_slices:
        kind, y = spec.outputs[name].type, torch.from_numpy(target[name])
        d, w = deep[name], both[name] - deep[name]
        params = torch.zeros(2, requires_grad=True)  # softplus^-1-ish start: weight ~0.7, temperature 1
        opt = torch.optim.LBFGS([params], lr=0.1, max_iter=100)

        def loss() -> torch.Tensor:
            opt.zero_grad()
            value = _nll(kind, (d + torch.nn.functional.softplus(params[0]) * w) / params[1].exp(), y)
            value.backward()
            return value

        opt.step(loss)
        weight = float(torch.nn.functional.softplus(params[0]).detach())
        weight = weight if np.isfinite(weight) else 1.0
        with torch.no_grad():
            net.wide_weight[outputs.index(name)] = weight
        report[name] = {"weight": round(weight, 4), "valid_accuracy_deep": _accuracy(kind, d, y),
                        "valid_accuracy_wide": _accuracy(kind, w, y), "valid_accuracy_blend": _accuracy(kind, d + weight * w, y)}
        print(f"wide + deep {name}: weight {weight:.3f}; validation accuracy deep {report[name]['valid_accuracy_deep']}, "
              f"wide {report[name]['valid_accuracy_wide']}, blended {report[name]['valid_accuracy_blend']}",
              file=sys.stderr, flush=True)
    return report

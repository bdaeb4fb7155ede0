"""Ensemble selection after training (Caruana et al., "Ensemble selection from libraries of models",
ICML 2004): the linear members of :mod:`polyfuse.nn.members` are fitted by scikit-learn on the training
rows (:mod:`polyfuse.training.linear_members`), each is temperature-scaled on the validation rows, then
members are added greedily, with replacement, to the mix with the least validation log-loss (rows none of
them was fitted on), starting from the best single one. The counts become the weights
the network's graph mixes with, so the ensemble is what every runtime serves.

Log-loss rather than accuracy picks the members: it moves with every probability, where accuracy on a
few hundred validation rows stalls on ties; the report gives both, and the headline metric of each
member and of the mix on the validation and test rows.
"""
from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from polyfuse.evaluate import metrics
from polyfuse.nn.model import FusionModel, to_tensors
from polyfuse.preprocess.pipeline import Decoded, Preprocessor
from polyfuse.spec.schema import Spec
from polyfuse.training.linear_members import CHUNK, fit_members, pooled_vectors, scale_member

ROUNDS = 25  # greedy additions; the weights are counts over this many


def _member_probs(net: FusionModel, spec: Spec, batch: dict[str, np.ndarray]) -> dict[str, list[np.ndarray]]:
    """Per mixed output, each member's probabilities [N, classes]: the networks first, then the linear ones."""
    from polyfuse.nn.heads import probabilities
    from polyfuse.nn.model import predict_arrays

    m = net.members
    active, m.active = m.active, False
    try:
        logits = [predict_arrays(n, batch) for n in (net, *net.extra)]
    finally:
        m.active = active
    n_rows = len(next(iter(batch.values())))
    parts = []
    with torch.no_grad():
        for start in range(0, n_rows, CHUNK):
            xb = to_tensors({k: v[start : start + CHUNK] for k, v in batch.items()})
            present = torch.stack([xb[f"{n}__present"].bool() for n in net.names], 1)
            pooled = {n: pooled_vectors(net, n, xb) for n, k in m.kinds.items() if k == "pretrained"}
            parts.append(m(xb, present, net.names, pooled))
    linear = torch.cat(parts)
    out = {}
    for name, (a, b) in m.slices.items():
        cfg = spec.outputs[name]
        out[name] = [probabilities(cfg, z[name]).numpy() for z in logits] + [
            probabilities(cfg, linear[:, k, a:b]).numpy() for k in range(len(m.members))]
    return out


def _available(net: FusionModel, batch: dict[str, np.ndarray]) -> np.ndarray:
    """[N, networks + members]: whether each member answers a row (a linear member needs one of its inputs)."""
    m = net.members
    n_rows = len(next(iter(batch.values())))
    present = {n: batch[f"{n}__present"].astype(bool) for n in m.inputs}
    networks = [np.ones(n_rows, bool)] * (1 + len(net.extra))
    anything = np.any([present[n] for n in m.inputs], axis=0)  # the all-inputs member: any of its inputs
    cols = networks + [anything] + [present[n] for n in m.inputs]
    return np.stack(cols, 1).astype(np.float64)


def _mix(probs: list[np.ndarray], counts: np.ndarray, avail: np.ndarray) -> np.ndarray:
    """The members' probabilities weighted by ``counts`` where each answers (as nn/members.py mixes them)."""
    w = counts[None, :] * avail
    w[:, 0] += w.sum(1) <= 0  # no chosen member answers a row: the network does
    w = w / w.sum(1, keepdims=True)
    return np.clip(sum(w[:, k : k + 1] * p for k, p in enumerate(probs)), 1e-7, 1.0)


def _log_loss(p: np.ndarray, y: np.ndarray) -> float:
    """Mean log-loss of class ids ``y`` (rows of ``p`` a distribution), or of multi-hot ``y`` (each column
    of ``p`` a label's probability)."""
    if y.ndim == 2:
        p = np.clip(p, 1e-7, 1 - 1e-7)
        return float(-(y * np.log(p) + (1 - y) * np.log1p(-p)).mean())
    return float(-np.log(p[np.arange(len(y)), y] / p.sum(1)).mean())


def _logits(p: np.ndarray, labels: bool) -> np.ndarray:
    """Logits up to a per-row constant: log p (rows a distribution), or each label's log-odds."""
    if labels:
        p = np.clip(p, 1e-7, 1 - 1e-7)
        return np.log(p) - np.log1p(-p)
    return np.log(np.maximum(p, 1e-30))


def _from_logits(z: np.ndarray, labels: bool) -> np.ndarray:
    if labels:
        return 1.0 / (1.0 + np.exp(-z))
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


# a temperature's range: a member right on every validation row would otherwise be sharpened without
# bound into certainty, which a few hundred rows cannot vouch for (seen: 0.55-0.6 on CLINC150, 0.85-1.25 on
# zhtext and mvsa)
TEMPERATURES = (0.25, 4.0)


def temperature(p: np.ndarray, y: np.ndarray, labels: bool = False) -> float:
    """The temperature T in TEMPERATURES whose logits / T give the least log-loss on these rows (Guo et al., 2017)."""
    from scipy.optimize import minimize_scalar

    z = _logits(p, labels)
    found = minimize_scalar(lambda t: _log_loss(_from_logits(z / np.exp(t), labels), y), method="bounded",
                            bounds=tuple(np.log(TEMPERATURES)), options={"xatol": 1e-3})
    return float(np.exp(found.x))


def calibrate_members(net: FusionModel, spec: Spec, report: dict, probs: dict[str, list], y: dict[str, np.ndarray],
                      others: list[dict[str, list]]) -> dict[str, dict[str, float]]:
    """Temperature-scale each fitted linear member on the validation rows, in its installed weights and in
    ``probs`` and ``others`` (the same members' probabilities on other rows), before the selection.

    Selection by log-loss compares members' confidence as much as their answers: on CLINC150's 150
    intents the all-inputs member (validation accuracy 0.965, its regularised probabilities spread thin)
    lost to the network (0.943) and the mix kept 0.943. Scaled, each member is judged by what it knows."""
    m, first = net.members, len(net.extra) + 1
    temperatures: dict[str, dict[str, float]] = {}
    for name, (a, b) in m.slices.items():
        if name not in probs or name in report.get("skipped", {}):
            continue
        labels = spec.outputs[name].type == "multilabel"
        unfitted = set(report.get("unfitted", {}).get(name, []))
        for j, member in enumerate(m.members):
            if member in unfitted:
                continue
            k = first + j
            t = temperature(probs[name][k], y[name], labels)
            scale_member(m, j, member, a, b, 1.0 / t)
            for table in (probs, *others):
                table[name][k] = _from_logits(_logits(table[name][k], labels) / t, labels)
            temperatures.setdefault(name, {})[member] = round(t, 4)
    return temperatures


def select(probs: list[np.ndarray], y: np.ndarray, avail: np.ndarray, rounds: int = ROUNDS,
           allowed: np.ndarray | None = None) -> np.ndarray:
    """Caruana's greedy selection with replacement: member counts, starting from the best single member,
    kept at the round with the least validation log-loss (so never worse there than the best member).
    ``allowed`` (bool per member): members that may be chosen (an unfitted one may not)."""
    eye = np.eye(len(probs))
    allowed = np.ones(len(probs), bool) if allowed is None else allowed
    loss = lambda counts: _log_loss(_mix(probs, counts, avail), y)  # noqa: E731
    single = [loss(eye[k]) if allowed[k] else np.inf for k in range(len(probs))]
    counts = eye[int(np.argmin(single))].copy()
    best, best_loss = counts.copy(), min(single)
    for _ in range(rounds - 1):
        trials = [loss(counts + eye[k]) if allowed[k] else np.inf for k in range(len(probs))]
        counts[int(np.argmin(trials))] += 1
        if min(trials) < best_loss - 1e-12:
            best, best_loss = counts.copy(), min(trials)
    return best


def fit_and_select(spec: Spec, pre: Preprocessor, net: FusionModel, train: Decoded, valid: Decoded,
                   valid_batch: dict, test: Decoded | None, test_batch: dict | None,
                   deadline: float | None = None) -> dict[str, Any]:
    """Fit the linear members (those that fit before ``deadline``), choose the weights on ``valid``,
    install them; the report for metrics.json."""
    from polyfuse.training.trainset import log

    started = time.perf_counter()
    networks = ["network", *(f"network {k + 2}" for k in range(len(net.extra)))]
    report: dict[str, Any] = {"members": [*networks, *(f"linear {m}" for m in net.members.members)], **fit_members(
        spec, pre, net, train, valid, deadline)}
    valid_probs, valid_avail = _member_probs(net, spec, valid_batch), _available(net, valid_batch)
    test_probs = _member_probs(net, spec, test_batch) if test_batch is not None else None
    test_avail = _available(net, test_batch) if test_batch is not None else None
    targets = {"valid": pre.targets(valid), **({"test": pre.targets(test)} if test is not None else {})}
    y_valid = {name: t.astype(int) for name, t in targets["valid"].items()}
    report["temperatures"] = calibrate_members(net, spec, report, valid_probs, y_valid,
                                               [test_probs] if test_probs is not None else [])
    outputs = {}
    for i, name in enumerate(spec.outputs):
        if name not in valid_probs or name in report.get("skipped", {}):
            continue
        cfg, state = spec.outputs[name], pre.state[name]
        y = targets["valid"][name].astype(int)
        unfitted = {f"linear {m}" for m in report.get("unfitted", {}).get(name, [])}
        counts = select(valid_probs[name], y, valid_avail, allowed=np.array([m not in unfitted for m in report["members"]]))
        weights = counts / counts.sum()
        with torch.no_grad():
            net.members.weight[i] = torch.from_numpy(weights.astype(np.float32))
        score = lambda p, split: round(float(metrics.compute(cfg, state, p, targets[split][name], full=False)  # noqa: E731
                                             [metrics.headline(cfg)]), 6)
        rows = []
        for k, label in enumerate(report["members"]):
            row = {"member": label, "weight": round(float(weights[k]), 4), "valid": score(valid_probs[name][k], "valid")}
            if test_probs is not None:
                row["test"] = score(test_probs[name][k], "test")
            rows.append(row)
        mixed = {"valid": score(_mix(valid_probs[name], counts, valid_avail), "valid")}
        if test_probs is not None:
            mixed["test"] = score(_mix(test_probs[name], counts, test_avail), "test")
        best = max(rows, key=lambda r: r["valid"])
        outputs[name] = {"metric": metrics.headline(cfg), "members": rows, "ensemble": mixed, "best_member": best["member"]}
        log(f"ensemble {name}: " + ", ".join(f"{r['member']} {r['weight']:.2f}" for r in rows if r["weight"])
            + f"; validation {metrics.headline(cfg)} {mixed['valid']} (best member, {best['member']}: {best['valid']})")
    net.members.active = bool((net.members.weight[:, 1:] != 0).any())
    report.update(outputs=outputs, seconds=round(time.perf_counter() - started, 3))
    return report

"""Fitting the ensemble's linear members (:mod:`polyfuse.nn.members`) on the training rows with
scikit-learn, each one's strength chosen on the validation rows, and installing their coefficients
into the network's graph; :mod:`polyfuse.training.ensemble` then calibrates and mixes them."""
from __future__ import annotations

import time
import warnings
from typing import Any

import numpy as np
import torch
from scipy import sparse

from polyfuse.nn.model import FusionModel, to_tensors
from polyfuse.preprocess.pipeline import Decoded, Preprocessor
from polyfuse.spec.schema import Spec

# inverse L2 strengths tried per member, the better on validation kept (warm-started, as the wide half's):
# on mvsa's tweets the text member scored validation accuracy 0.644 at C=2 and the wide half 0.672 at C=10
STRENGTHS = (1.0, 10.0)
CHUNK = 512
DENSE_CELLS = 50_000_000  # a design up to this many cells (400 MB of float64) is fitted as an array


def _blocks(net: FusionModel, pre: Preprocessor, rows: Decoded) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Per member input, its raw features on these rows (dense [N, W] arrays, or (ids, weights) for text)
    and its presence; collated a chunk at a time, so a table of images is never all in memory as floats."""
    m = net.members
    out: dict[str, list] = {n: [] for n in m.inputs}
    present: dict[str, list] = {n: [] for n in m.inputs}
    with torch.no_grad():
        for start in range(0, len(rows), CHUNK):
            batch = pre.collate(rows, range(start, min(start + CHUNK, len(rows))), only=m.inputs)
            xb = to_tensors(batch)
            for name in m.inputs:
                present[name].append(batch[f"{name}__present"])
                if m.kinds[name] == "text":
                    ids = xb[name]
                    out[name].append((ids.numpy(), m.parts[name].weights(ids).numpy()))
                elif m.kinds[name] == "pretrained":  # the cached pooled vector, or the frozen backbone's
                    out[name].append(pooled_vectors(net, name, xb).numpy())
                else:
                    out[name].append(m.features(name, xb).numpy())
    raw = {n: (np.concatenate([a for a, _ in v]), np.concatenate([w for _, w in v])) if m.kinds[n] == "text"
           else np.concatenate(v) for n, v in out.items()}
    return raw, {n: np.concatenate(v) for n, v in present.items()}


def pooled_vectors(net: FusionModel, name: str, xb: dict[str, torch.Tensor]) -> torch.Tensor:
    """A pretrained input's pooled backbone vectors for these rows (the cache's, where the batch has them)."""
    cached = xb.get(f"{name}__features")
    return cached if cached is not None else net.encoders[name].features(xb[name], xb.get(f"{name}__length"))[0]


def _matrix(kind: str, raw: Any, present: np.ndarray, size: int, fit: dict | None) -> tuple[sparse.csr_matrix, dict]:
    """An input's design block (standardised or bagged, then a missing column), scaled to unit mean row norm
    on the training rows (``fit`` None: fit mean, std and norm here)."""
    p = present.astype(np.float64)[:, None]
    if kind == "text":
        ids, w = raw
        rows = np.repeat(np.arange(len(ids)), ids.shape[1])
        x = sparse.csr_matrix(((w * p).ravel(), (rows, ids.ravel())), shape=(len(ids), size))
        x.sum_duplicates()
        fit = fit or {}
    else:
        if fit is None:
            seen = raw[present] if present.any() else raw[:1] * 0
            std = seen.std(0)
            fit = {"mean": seen.mean(0), "scale": 1.0 / np.where(std < 1e-8, 1.0, std)}
        x = sparse.csr_matrix((raw - fit["mean"]) * fit["scale"] * p)
    x = sparse.hstack([x, sparse.csr_matrix(1.0 - p)], format="csr")
    if "norm" not in fit:
        fit["norm"] = float(np.sqrt(np.asarray(x.multiply(x).sum(1))).mean()) or 1.0
    return x / fit["norm"], fit


def _install_part(part: Any, kind: str, fit: dict, coef: np.ndarray, columns: list[int]) -> None:
    """Coefficients of one input's block (features then missing column) into its graph part."""
    w = torch.from_numpy((coef / fit["norm"]).T.astype(np.float32))  # [F + 1, k]
    with torch.no_grad():
        if kind == "text":
            part.table[:, columns] = w[:-1]
            part.missing[columns] = w[-1]
        else:
            part.mean.copy_(torch.from_numpy(fit["mean"].astype(np.float32)))
            part.scale.copy_(torch.from_numpy(fit["scale"].astype(np.float32)))
            part.weight[:, columns] = w


def _solver(x: Any) -> tuple[str, float, bool]:
    """(solver, tol, densify) for this design: saga where hashed n-grams hold most of its nonzeros, L-BFGS
    where dense columns (standardised numbers, pooled backbone vectors) do, on an array where all are dense.

    Measured on CLINC150 (15,000 rows, 150 classes, both strengths): e5's 384-d vectors took saga 79 s,
    L-BFGS 17 s on the sparse matrix and 7.8 s on an array; n-grams + e5 (77 % of nonzeros dense) 167 s
    against 62 s; n-grams alone 47 s against 53 s, and on zhtext's n-grams (15 classes) saga 1.2 s against
    13 s (evaluate/baseline.py). Same validation accuracy each time (within 0.001)."""
    n, width = x.shape
    if not sparse.issparse(x):
        return "lbfgs", 1e-4, False
    counts = np.bincount(x.indices, minlength=width)
    dense_share = counts[counts > n // 2].sum() / max(x.nnz, 1)
    if dense_share < 0.5:
        return "saga", 1e-3, False
    return "lbfgs", 1e-4, x.nnz > n * width // 2 and n * width <= DENSE_CELLS


def _fit(x: Any, y: np.ndarray, xv: Any, yv: np.ndarray | None, by_loss: bool = False) -> tuple[Any, ...]:
    """The logistic regression with the best validation score over ``STRENGTHS`` (accuracy, or log-loss
    where ``by_loss``; the weakest regularisation without validation rows): (coef, intercept, score, C, classes)."""
    from sklearn.linear_model import LogisticRegression

    solver, tol, densify = _solver(x)
    if densify:
        x, xv = x.toarray(), None if xv is None else xv.toarray()
    model = LogisticRegression(solver=solver, max_iter=100, tol=tol, random_state=0, warm_start=True)
    best = None
    for c in STRENGTHS if yv is not None else STRENGTHS[-1:]:
        model.set_params(C=c).fit(x, y)
        if yv is None:
            score = 0.0
        elif by_loss:
            p = np.clip(model.predict_proba(xv)[:, -1], 1e-7, 1 - 1e-7)
            score = float(np.mean(yv * np.log(p) + (1 - yv) * np.log1p(-p)))
        else:
            score = float((model.predict(xv) == yv).mean())
        if best is None or score > best[2]:
            best = (model.coef_.copy(), model.intercept_.copy(), score, c, model.classes_.copy())
    return best


def fit_labels(x: Any, y: np.ndarray, xv: Any, yv: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, list]:
    """A multilabel output's linear model: one binary logistic regression per label, its C chosen by
    validation log-loss (accuracy barely moves on a rare label); a label constant in the training rows
    answers its rate. (coef [K, F], intercept [K], each label's C or None)."""
    coef, intercept, strengths = np.zeros((y.shape[1], x.shape[1])), np.zeros(y.shape[1]), []
    for j in range(y.shape[1]):
        if y[:, j].min() == y[:, j].max():
            intercept[j] = 9.0 if y[0, j] else -9.0  # probability 1 - 1e-4 or 1e-4
            strengths.append(None)
            continue
        w, b, _, c, _ = _fit(x, y[:, j], xv, None if yv is None else yv[:, j], by_loss=True)
        coef[j], intercept[j] = w[0], b[0]
        strengths.append(c)
    return coef, intercept, strengths


def unfittable(y: np.ndarray) -> str | None:
    """Why no member can be fitted on these training targets (class ids, or multi-hot rows), or None."""
    if y.ndim == 2:
        return None if ((y == 1).any(0) & (y == 0).any(0)).any() else "no label both present and absent in the training rows"
    return None if len(np.unique(y)) > 1 else "one class in the training rows"


def _fit_member(y: np.ndarray, yv: np.ndarray, x: Any, xv: Any, a: int, b: int) -> tuple[Any, ...]:
    """One member for one output's logits [a, b): (coef [columns, F], intercept, C, columns)."""
    if y.ndim == 2:
        coef, intercept, c = fit_labels(x, y, xv, yv)
        return coef, intercept, c, list(range(a, b))
    coef, intercept, _, c, classes = _fit(x, y, xv, yv)
    columns = [a] if b - a == 1 else [a + int(i) for i in classes]
    if len(columns) == 2:  # two classes of several seen: scikit-learn gives one row, the second's logit
        coef, intercept = np.vstack([np.zeros_like(coef), coef]), np.array([0.0, intercept[0]])
    return coef, intercept, c, columns


def fit_members(spec: Spec, pre: Preprocessor, net: FusionModel, train: Decoded, valid: Decoded,
                deadline: float | None = None) -> dict[str, Any]:
    """Fit every linear member on the training rows (its strength chosen on ``valid``) and install it;
    returns each member's C and any skips. A member whose fit would start too late to end before
    ``deadline`` (a time.perf_counter() value; the last fit's time is the estimate) is left unfitted and listed.

    Fits run side by side on as many threads as torch was given (the ThreadGovernor's count: the cores
    other processes leave free); scikit-learn's solvers release the GIL. Each is installed by this thread."""
    from concurrent.futures import ThreadPoolExecutor

    from threadpoolctl import threadpool_limits

    m = net.members
    raw, present = _blocks(net, pre, train)
    raw_v, present_v = _blocks(net, pre, valid)
    sizes = {n: m.parts[n].table.shape[0] if m.kinds[n] == "text" else 0 for n in m.inputs}
    design, design_v, fits = {}, {}, {}
    for n in m.inputs:
        design[n], fits[n] = _matrix(m.kinds[n], raw[n], present[n], sizes[n], None)
        design_v[n], _ = _matrix(m.kinds[n], raw_v[n], present_v[n], sizes[n], fits[n])
    targets = {out: (t.astype(int), pre.targets(valid)[out].astype(int)) for out, t in pre.targets(train).items()
               if out in m.slices}
    report: dict[str, Any] = {"C": {}}
    jobs = []
    for out in m.slices:
        why = unfittable(targets[out][0])
        if why:
            report.setdefault("skipped", {})[out] = why
        else:
            jobs += [(out, k, member) for k, member in enumerate(m.members)]
    last = [0.0]  # seconds the last finished fit took

    def run(job: tuple[str, int, str]) -> tuple[Any, ...] | None:
        out, _, member = job
        if deadline is not None and time.perf_counter() + last[0] > deadline:
            return None
        began = time.perf_counter()
        names = m.inputs if member == "all" else [member]
        stack = lambda d: sparse.hstack([d[n] for n in names], format="csr")  # noqa: E731
        fitted = _fit_member(*targets[out], stack(design), stack(design_v), *m.slices[out])
        last[0] = time.perf_counter() - began
        return fitted

    workers = max(1, torch.get_num_threads())  # read first: inside threadpool_limits(1) torch reports 1
    with warnings.catch_warnings(), threadpool_limits(1), ThreadPoolExecutor(workers) as pool:
        warnings.simplefilter("ignore")  # convergence notes: the validation scores say how each did
        for (out, k, member), fitted in zip(jobs, pool.map(run, jobs)):
            if fitted is None:
                report.setdefault("unfitted", {}).setdefault(out, []).append(member)
                continue
            coef, intercept, report["C"].setdefault(out, {})[member], columns = fitted
            a, b = m.slices[out]
            with torch.no_grad():
                m.bias[k, a:b] = -30.0  # classes the training rows lack: never predicted
                m.bias[k, columns] = torch.from_numpy(intercept.astype(np.float32))
            names = m.inputs if member == "all" else [member]
            offsets = np.cumsum([0] + [design[n].shape[1] for n in names])
            own = [col + (m.width if member != "all" else 0) for col in columns]  # the part's half for this member
            for j, n in enumerate(names):
                _install_part(m.parts[n], m.kinds[n], fits[n], coef[:, offsets[j]:offsets[j + 1]], own)
    return report


def scale_member(m: Any, k: int, member: str, a: int, b: int, factor: float) -> None:
    """Multiply linear member ``k``'s logits for columns [a, b) by ``factor`` (its weights and bias)."""
    own = [c + (m.width if member != "all" else 0) for c in range(a, b)]
    with torch.no_grad():
        m.bias[k, a:b] *= factor
        for n in m.inputs if member == "all" else [member]:
            part = m.parts[n]
            if m.kinds[n] == "text":
                part.table[:, own] *= factor
                part.missing[own] *= factor
            else:
                part.weight[:, own] *= factor

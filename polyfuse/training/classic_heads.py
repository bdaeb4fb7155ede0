"""Classic heads on the fused features (the seed's classification step): ``svm``, ``logistic`` and
``gbdt`` are fitted by scikit-learn on the trained network's fused features, compared with the
softmax head on the same validation and test rows, and installed into the network as torch
modules (a linear layer, or :class:`polyfuse.nn.trees.TreeEnsemble`), so that they export in the
same ONNX graph and pass the same parity gate; the runtime and server stay torch-free."""
from __future__ import annotations

import time
import warnings
from typing import Any

import numpy as np
import torch
from torch import nn

from polyfuse.errors import PolyfuseError
from polyfuse.nn.model import FusionModel, embed_arrays
from polyfuse.preprocess.pipeline import Preprocessor
from polyfuse.spec.schema import Spec

PARITY = 1e-3  # max |raw score difference| between the installed module and scikit-learn


def fit_estimator(cfg: Any, x: np.ndarray, y: np.ndarray) -> Any:
    """The scikit-learn estimator of a head spec, fitted (seeded; linear ones on standardised features)."""
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import LinearSVC

    h = cfg.head
    if h.type == "gbdt":
        est = HistGradientBoostingClassifier(max_iter=h.trees, max_depth=h.max_depth, learning_rate=h.learning_rate,
                                             early_stopping=False, random_state=0)
    elif h.type == "svm":
        est = make_pipeline(StandardScaler(), LinearSVC(C=h.C, max_iter=5000, random_state=0))
    else:
        est = make_pipeline(StandardScaler(), LogisticRegression(C=h.C, max_iter=2000))
    from threadpoolctl import threadpool_limits

    # OpenMP's spinning threads beside torch's made a 300-row gbdt fit take 11 s instead of 0.04 s
    with warnings.catch_warnings(), threadpool_limits(1):
        warnings.simplefilter("ignore")  # convergence chatter; the scores below say how well it did
        return est.fit(x, y)


def to_module(est: Any, features: int) -> tuple[nn.Module, dict | None]:
    """A torch module computing ``est.decision_function`` (as logits), and the shape record a gbdt
    head needs to be rebuilt at load time."""
    if not hasattr(est, "steps"):
        from polyfuse.nn.trees import from_sklearn

        ens = from_sklearn(est, features)
        return ens, {"type": "gbdt", "nodes": len(ens.value), "trees": len(ens.roots),
                     "outputs": ens.tree_output.shape[1], "depth": ens.depth}
    scaler, linear = est.steps[0][1], est.steps[-1][1]
    coef = linear.coef_ / scaler.scale_
    bias = linear.intercept_ - (coef * scaler.mean_).sum(1)
    layer = nn.Linear(features, coef.shape[0])
    with torch.no_grad():
        layer.weight.copy_(torch.as_tensor(coef, dtype=torch.float32))
        layer.bias.copy_(torch.as_tensor(bias, dtype=torch.float32))
    return layer, None


def _scores(cfg: Any, state: dict, logits: torch.Tensor, target: np.ndarray) -> dict[str, float]:
    from polyfuse.evaluate import metrics
    from polyfuse.nn.heads import probabilities

    full = metrics.compute(cfg, state, probabilities(cfg, logits).numpy(), target, full=True)
    return {k: round(full[k], 5) for k in ("accuracy", "f1_macro") if k in full}


def _evaluate_head(cfg: Any, state: dict, head: nn.Module, feats: dict, targets: dict) -> dict[str, Any]:
    with torch.inference_mode():
        return {part: _scores(cfg, state, head(torch.from_numpy(x)), targets[part]) for part, x in feats.items()}


def fit_and_install(spec: Spec, pre: Preprocessor, net: FusionModel, splits: Any, valid_batch: dict | None,
                    test_batch: dict | None) -> dict[str, Any]:
    """Fit each output's classic head on the fused training features, compare it with the softmax
    head on valid/test, and install it in ``net``; returns the comparison for metrics.json."""
    net.eval()
    x = embed_arrays(net, pre.collate(splits.train))[0]
    feats, targets = {}, {}
    for part, batch, decoded in (("valid", valid_batch, splits.valid), ("test", test_batch, splits.test)):
        if batch is not None:
            feats[part], targets[part] = embed_arrays(net, batch)[0], decoded
    report: dict[str, Any] = {}
    y_all = pre.targets(splits.train)
    for name, cfg in spec.outputs.items():
        if cfg.head.type == "softmax":
            continue
        state, y = pre.state[name], y_all[name].astype(int)
        if len(np.unique(y)) < 2:
            raise PolyfuseError(f"outputs.{name}.head: {cfg.head.type} needs two classes in the training rows")
        truth = {part: pre.targets(d)[name] for part, d in targets.items()}
        entry: dict[str, Any] = {"softmax": _evaluate_head(cfg, state, net.heads[name], feats, truth)}
        t = time.perf_counter()
        est = fit_estimator(cfg, x, y)
        module, shape = to_module(est, x.shape[1])
        _check_parity(name, cfg, est, module, x[:512])
        net.heads[name] = module
        if shape:
            state["head"] = shape
        entry[cfg.head.type] = _evaluate_head(cfg, state, module, feats, truth)
        entry["fit_seconds"] = round(time.perf_counter() - t, 3)
        report[name] = entry
    return report


def _check_parity(name: str, cfg: Any, est: Any, module: nn.Module, x: np.ndarray) -> None:
    """The installed module must reproduce scikit-learn's decision function before it is kept."""
    want = np.asarray(est.decision_function(x), dtype=np.float64).reshape(len(x), -1)
    with torch.inference_mode():
        got = module(torch.from_numpy(x)).numpy().reshape(len(x), -1)
    delta = float(np.abs(want - got).max())
    if delta > PARITY:
        raise PolyfuseError(f"outputs.{name}.head: the {cfg.head.type} head as a torch module differs from "
                            f"scikit-learn by {delta:.2e} (allowed {PARITY:.0e}); please report this")

"""Temperature scaling (Guo et al., 2017): one scalar per classification output, fitted on the
validation split after training, so that predicted probabilities match observed frequencies.
Accuracy is unchanged (argmax is invariant); the expected calibration error is reported before
and after."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from polyfuse.evaluate.metrics import expected_calibration_error
from polyfuse.nn.model import FusionModel, predict_arrays


def _probs(kind: str, logits: torch.Tensor) -> np.ndarray:
    if kind == "category":
        return torch.softmax(logits, -1).numpy()
    p = torch.sigmoid(logits.squeeze(-1)).numpy()
    return np.stack([1 - p, p], axis=-1)


def no_errors(kind: str, logits: torch.Tensor, target: np.ndarray) -> bool:
    """Whether every validation row is classified right (then the likelihood keeps rising as T -> 0)."""
    if kind == "category":
        predicted = logits.argmax(-1).numpy()
    else:
        predicted = (logits.squeeze(-1) > 0).numpy().astype(int)
    return bool(np.all(predicted == target.astype(int)))


def fit_temperature(kind: str, logits: torch.Tensor, target: np.ndarray) -> float:
    """The temperature minimising the validation negative log-likelihood (LBFGS on log T).

    With no error on validation the minimum is at T -> 0: the fit would sharpen every probability
    toward 1 on the evidence of a split the model already gets right (on avdigits it reached
    T = 0.14), and a wrong answer on a noisy input would come out at ~100 % confidence. There is
    nothing to fit then, so T stays 1.
    """
    if no_errors(kind, logits, target):
        return 1.0
    logits = logits.clone()  # made under inference_mode; autograd needs a normal tensor
    log_t = torch.zeros(1, requires_grad=True)
    y = torch.from_numpy(target)
    opt = torch.optim.LBFGS([log_t], lr=0.1, max_iter=100)

    def nll() -> torch.Tensor:
        opt.zero_grad()
        scaled = logits / log_t.exp()
        if kind == "category":
            loss = F.cross_entropy(scaled, y)
        else:
            loss = F.binary_cross_entropy_with_logits(scaled.squeeze(-1) if kind == "binary" else scaled, y.float())
        loss.backward()
        return loss

    opt.step(nll)
    t = log_t.exp().item()
    return float(np.clip(t, 0.05, 20.0)) if np.isfinite(t) else 1.0  # a diverged fit leaves the model as it was


def calibrate(net: FusionModel, spec: Any, valid: dict, valid_target: dict, test: dict | None = None,
              test_target: dict | None = None) -> dict[str, Any]:
    """Fit and install a temperature per classification output; returns ECE before/after."""
    report: dict[str, Any] = {}
    net.temperature.fill_(1.0)
    raw_valid = predict_arrays(net, valid)
    raw_test = predict_arrays(net, test) if test is not None else None
    for i, (name, cfg) in enumerate(spec.outputs.items()):
        if cfg.type not in ("category", "binary"):
            continue
        t = fit_temperature(cfg.type, raw_valid[name], valid_target[name])
        entry = {"temperature": round(t, 4),
                 **({"note": "no errors on validation: nothing to fit, temperature left at 1"}
                    if no_errors(cfg.type, raw_valid[name], valid_target[name]) else {}),
                 "valid_ece_before": expected_calibration_error(_probs(cfg.type, raw_valid[name]), valid_target[name]),
                 "valid_ece_after": expected_calibration_error(_probs(cfg.type, raw_valid[name] / t), valid_target[name])}
        if raw_test is not None and test_target is not None:
            entry["test_ece_before"] = expected_calibration_error(_probs(cfg.type, raw_test[name]), test_target[name])
            entry["test_ece_after"] = expected_calibration_error(_probs(cfg.type, raw_test[name] / t), test_target[name])
        with torch.no_grad():
            net.temperature[i] = t
        report[name] = entry
    return report

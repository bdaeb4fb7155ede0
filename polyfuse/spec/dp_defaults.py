"""Training settings for DP-SGD, chosen from the training rows and the privacy budget.

A spec tuned without privacy trains badly with it: DP-SGD adds noise of the same size to every step,
so it wants far larger batches (the noise is shared by more rows), more steps, a higher rate and a
smaller clipping norm. Adding only ``privacy: {epsilon: 8}`` to the avdigits reference spec (batch
64, 30 epochs, lr 1e-3, clip 1.0) gave 0.805 test accuracy against 0.995 without privacy; batch 256,
80 epochs, lr 5e-3 and clip 0.3 gave 0.95-0.975 there. The rules below are general, not fitted to one
table:

- batch: about 6 * sqrt(rows), as a power of two (1.6k rows: 256; 100k: 2048). Larger batches lower
  the noise per row; past a few percent of the rows the steps get too few (De et al., "Unlocking
  high-accuracy differentially private image classification through scale", 2022, and Ponomareva
  et al., "How to DP-fy ML", 2023: batch size is the first knob).
- steps: 600 at epsilon 8, scaled by sqrt(epsilon / 8) (De et al. found the best number of steps
  to grow about as the square root of epsilon: 875 steps at 1, 2468 at 8), then epochs from steps.
- learning rate 5e-3 (Adam; 3e-3 and 8e-3 were both worse here) and clipping 0.3 (a norm most rows'
  gradients exceed, so each row counts alike: the "How to DP-fy ML" advice).
- early stopping waits a quarter of the epochs: a noisy validation curve is not a plateau.

Anything the privacy section sets itself (batch_size, epochs, lr, max_grad_norm) is kept;
``settings: train`` keeps the train section's values instead.
"""
from __future__ import annotations

import math

from polyfuse.spec.schema import Spec

BATCH_PER_SQRT_ROW = 6
BATCH_RANGE = (16, 4096)
STEPS_AT_8 = 600
STEPS_RANGE = (150, 1500)
EPOCH_RANGE = (5, 200)
LR = 5e-3
CLIP = 0.3


def choose(rows: int, epsilon: float | None) -> dict[str, tuple[float, str]]:
    """Batch size, epochs, lr and clipping norm for DP-SGD on ``rows`` training rows at ``epsilon``
    (a fixed noise multiplier is treated as epsilon 8), each with the reason said beside it."""
    eps = 8.0 if epsilon is None else epsilon
    batch = 2 ** round(math.log2(max(1.0, BATCH_PER_SQRT_ROW * math.sqrt(rows))))
    batch = int(min(BATCH_RANGE[1], max(BATCH_RANGE[0], batch), max(1, rows // 4)))
    steps = int(min(STEPS_RANGE[1], max(STEPS_RANGE[0], STEPS_AT_8 * math.sqrt(eps / 8))))
    epochs = int(min(EPOCH_RANGE[1], max(EPOCH_RANGE[0], math.ceil(steps * batch / max(1, rows)))))
    return {
        "batch_size": (batch, f"about {BATCH_PER_SQRT_ROW} x sqrt({rows} training rows), a power of two: the noise "
                              "is per step, so larger batches share it among more rows"),
        "epochs": (epochs, f"~{steps} steps (600 at epsilon 8, scaled by sqrt(epsilon / 8)) of {batch} rows"),
        "lr": (LR, "DP-SGD's clipped, noisy gradients want a higher rate than plain training"),
        "max_grad_norm": (CLIP, "small enough that most rows' gradients are clipped, so each row counts alike"),
    }


def apply(spec: Spec, rows: int) -> tuple[Spec, list[str]]:
    """``spec`` with its training settings chosen for DP-SGD (see :func:`choose`), and one line per
    choice for the log. Unchanged without privacy, with ``settings: train``, or where the privacy
    section sets a value itself."""
    cfg = spec.train.privacy
    if cfg is None or cfg.settings == "train":
        return spec, []
    chosen = choose(rows, cfg.epsilon)
    mine = cfg.model_fields_set
    values = {k: (getattr(cfg, k), "set in train.privacy") if k in mine else chosen[k] for k in chosen}
    train = {k: v for k, (v, _) in values.items() if k != "max_grad_norm"}
    if spec.train.early_stopping is not None:
        train["early_stopping"] = max(spec.train.early_stopping, math.ceil(values["epochs"][0] / 4))
    privacy = cfg.model_copy(update={"max_grad_norm": values["max_grad_norm"][0]})
    new = spec.model_copy(update={"train": spec.train.model_copy(update={**train, "privacy": privacy})})
    lines = [f"privacy: {k} {v:g} ({why})" for k, (v, why) in values.items()]
    if "early_stopping" in train:
        lines.append(f"privacy: early_stopping {train['early_stopping']} (a quarter of the epochs: DP-SGD's "
                     "validation curve is noisy)")
    lines.append("privacy: settings chosen for DP-SGD; set them in train.privacy, or `settings: train` to use "
                 "the train section's")
    return new, lines

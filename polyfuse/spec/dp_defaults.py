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
- hashed n-gram tables small enough for their per-row gradients: Opacus holds a trained embedding
  table's gradient once per row of a batch, so a 65,536 x 128 n-gram table at a batch of ~320 needs
  10.7 GB; each ngram text input's ``buckets`` becomes the largest power of two whose per-row gradients
  fit TABLE_BYTES shared among those inputs (the medical example's reports: 65,536 -> 4,096 each).

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
TABLE_BYTES = 2 << 30  # per-row gradients of the embedding tables, for the largest likely batch


def poisson_batch(expected: int, rows: int | None = None) -> int:
    """The batch a Poisson sample of ``expected`` rows rarely exceeds (4 standard deviations), at most ``rows``."""
    expected = min(expected, rows or expected)  # a sample rate of 1 takes every row, no more
    return min(int(expected + 4 * expected ** 0.5), rows or 1 << 62)


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
    inputs, buckets = _table_sizes(spec, poisson_batch(int(values["batch_size"][0]), rows))
    new = spec.model_copy(update={"train": spec.train.model_copy(update={**train, "privacy": privacy}),
                                  "inputs": inputs})
    lines = [f"privacy: {k} {v:g} ({why})" for k, (v, why) in values.items()] + buckets
    if "early_stopping" in train:
        lines.append(f"privacy: early_stopping {train['early_stopping']} (a quarter of the epochs: DP-SGD's "
                     "validation curve is noisy)")
    lines.append("privacy: settings chosen for DP-SGD; set them in train.privacy, or `settings: train` to use "
                 "the train section's")
    return new, lines


def _table_sizes(spec: Spec, batch: int) -> tuple[dict, list[str]]:
    """The inputs with each ngram text input's ``buckets`` (where the spec does not set it) cut to the
    largest power of two whose per-row gradients at ``batch`` fit its share of TABLE_BYTES; a line each."""
    ngram = [n for n, c in spec.inputs.items() if c.type == "text" and c.encoder == "ngram"]
    share = TABLE_BYTES / max(1, len(ngram))
    inputs, lines = dict(spec.inputs), []
    for name in ngram:
        cfg = spec.inputs[name]
        fits = max(1024, 1 << int(math.log2(max(1.0, share / (batch * cfg.dim * 4)))))
        if "buckets" in cfg.model_fields_set or fits >= cfg.buckets:
            continue
        inputs[name] = cfg.model_copy(update={"buckets": fits})
        lines.append(f"privacy: inputs.{name}.buckets {fits} (was {cfg.buckets}: per-row gradients of a {fits} x "
                     f"{cfg.dim} table for a batch of ~{batch} take {batch * fits * cfg.dim * 4 / 2**30:.2f} GB; "
                     "set buckets to keep yours)")
    return inputs, lines

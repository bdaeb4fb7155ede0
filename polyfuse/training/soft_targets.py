"""Probability targets for the network's loss, in place of the labels (distillation: a teacher's
softened outputs mixed with the labels, :mod:`polyfuse.deploy.distill`).

They come per output as a matrix over the training table's rows in the teacher's class order; the
rows a split kept are picked by their row ids (positions: the table is a DataFrame with a fresh
index) and the columns put in the student's class order. Cross-entropy takes them as they are
(category), a binary head the positive class's probability. Only the network's loss reads them:
class weights, the linear members and the metrics keep the labels.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from polyfuse.errors import SpecError


@dataclass
class SoftTargets:
    classes: dict[str, list[str]]  # per output, the columns of ``probs``
    probs: dict[str, np.ndarray]  # per output, [table rows, classes]; each row sums to 1
    about: dict = field(default_factory=dict)  # what the model card and metrics.json say of where they came from
    # per table row, whether only the teacher labelled it (an unlabelled row, a missing label): such rows
    # only train, so the student's validation and test rows score real labels (training.trainset.split_decoded)
    train_only: np.ndarray | None = None


def replace(target: dict[str, np.ndarray], soft: SoftTargets, rows: list, student: dict[str, list[str]],
            kinds: dict[str, str]) -> dict[str, np.ndarray]:
    """``target`` (encoded labels of the rows ``rows``) with each soft output's probabilities instead."""
    out = dict(target)
    for name, probs in soft.probs.items():
        order = [soft.classes[name].index(c) if c in soft.classes[name] else -1 for c in student[name]]
        picked = probs[np.asarray(rows, dtype=np.int64)]
        matrix = np.stack([picked[:, j] if j >= 0 else np.zeros(len(picked)) for j in order], axis=1)
        matrix = matrix / np.clip(matrix.sum(1, keepdims=True), 1e-12, None)  # classes the student never saw
        if kinds[name] == "binary":
            out[name] = matrix[:, -1].astype(np.float32)  # the positive class, as the 0/1 labels encode it
        elif kinds[name] == "category":
            out[name] = matrix.astype(np.float32)
        else:
            raise SpecError(f"outputs.{name}: soft targets need a category or binary output, not {kinds[name]}")
    return out

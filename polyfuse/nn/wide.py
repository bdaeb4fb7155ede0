"""The wide half of a wide-and-deep text input (Cheng et al., 2016): a linear model on the hashed
n-grams of an ``ngram`` text input that adds its class logits to the deep network's.

On small tables a regularised linear model over n-grams (TF-IDF + logistic regression) is the
baseline a network trained from scratch most often loses to. Here that linear model is part of
the network: fitted by scikit-learn before training (:mod:`polyfuse.training.wide`), kept frozen, so the
deep half learns what it misses. Its features are the n-grams' IDF weights, L2-normalised per
text, computed from the same ids the deep half reads; it exports in the same ONNX graph.
"""
from __future__ import annotations

import torch
from torch import nn


class WideText(nn.Module):
    """ids [B, N] -> logits [B, K] (K: every class output's logits, concatenated)."""

    def __init__(self, buckets: int, width: int, idf: torch.Tensor):
        super().__init__()
        self.register_buffer("table", torch.zeros(buckets, width))
        self.register_buffer("idf", idf.clone())

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        w = self.idf[ids]  # 0 on padding
        w = w / w.pow(2).sum(1, keepdim=True).sqrt().clamp(min=1e-6)
        return (self.table[ids] * w.unsqueeze(-1)).sum(1)


def wide_outputs(spec: object, state: dict) -> list[tuple[str, int]]:
    """(output, logits) of the outputs a wide path feeds: category and multilabel (one per class or
    label) and binary (one)."""
    return [(n, 1 if c.type == "binary" else len(state[n]["classes"]))
            for n, c in spec.outputs.items() if c.type in ("category", "binary", "multilabel")]


def wide_inputs(spec: object) -> list[str]:
    """The ngram text inputs with a wide path. None under ``train.privacy``: the linear half is fitted
    on the training rows without noise, which DP-SGD's guarantee would not cover."""
    if spec.train.privacy is not None:
        return []
    return [n for n, c in spec.inputs.items() if c.type == "text" and c.encoder == "ngram" and c.wide]

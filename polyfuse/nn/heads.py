"""One head per output, its loss, and how its logits become probabilities and predictions."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F


def build_head(cfg: Any, state: dict, dim: int) -> nn.Module:
    """A linear layer to logits (softmax, and the svm/logistic classic heads, which are linear too),
    or the fitted tree ensemble of a gbdt head (its shape is recorded in the output's state)."""
    trees = state.get("head")
    if trees and trees["type"] == "gbdt":
        from polyfuse.nn.trees import TreeEnsemble

        return TreeEnsemble(trees["nodes"], trees["trees"], trees["outputs"], trees["depth"])
    if cfg.type == "category":
        return nn.Linear(dim, len(state["classes"]))
    if cfg.type == "multilabel":
        return nn.Linear(dim, len(state["classes"]))
    return nn.Linear(dim, 1)  # binary logit or standardised number


def loss(cfg: Any, logits: torch.Tensor, target: torch.Tensor, class_weight: torch.Tensor | None) -> torch.Tensor:
    """Cross-entropy (category), BCE (binary, multilabel) or MSE (number)."""
    if cfg.type == "category":
        return F.cross_entropy(logits, target, weight=class_weight)
    if cfg.type == "binary":
        pos_weight = None if class_weight is None else class_weight[1:] / class_weight[:1]
        return F.binary_cross_entropy_with_logits(logits.squeeze(-1), target, pos_weight=pos_weight)
    if cfg.type == "multilabel":
        return F.binary_cross_entropy_with_logits(logits, target)
    return F.mse_loss(logits.squeeze(-1), target)


def probabilities(cfg: Any, logits: torch.Tensor) -> torch.Tensor:
    """Class probabilities ([B, classes]); for numbers the standardised prediction [B]."""
    if cfg.type == "category":
        return torch.softmax(logits, dim=-1)
    if cfg.type == "binary":
        p = torch.sigmoid(logits.squeeze(-1))
        return torch.stack([1 - p, p], dim=-1)
    if cfg.type == "multilabel":
        return torch.sigmoid(logits)
    return logits.squeeze(-1)

"""Fusion of per-input vectors into one, respecting which inputs are present.

Every method takes ``vectors`` (one [B, d_i] tensor per input) and ``present`` [B, n_inputs]
(bool) and returns [B, dim]. An absent input never influences the result: concat swaps in
a learned "absent" vector, mean and max pool over present inputs only.
"""
from __future__ import annotations

import torch
from torch import nn


class ConcatFusion(nn.Module):
    def __init__(self, dims: list[int], dim: int, dropout: float):
        super().__init__()
        self.absent = nn.ParameterList([nn.Parameter(torch.zeros(d)) for d in dims])
        self.proj = nn.Sequential(nn.Dropout(dropout), nn.Linear(sum(dims), dim), nn.ReLU(inplace=True), nn.Dropout(dropout))

    def forward(self, vectors: list[torch.Tensor], present: torch.Tensor) -> torch.Tensor:
        parts = [torch.where(present[:, i : i + 1], v, a.expand_as(v)) for i, (v, a) in enumerate(zip(vectors, self.absent))]
        return self.proj(torch.cat(parts, dim=-1))


class PoolFusion(nn.Module):
    """Mean or max over the present inputs, after projecting each to a common width."""

    def __init__(self, dims: list[int], dim: int, dropout: float, mode: str):
        super().__init__()
        self.mode = mode
        self.projs = nn.ModuleList([nn.Linear(d, dim) for d in dims])
        self.out = nn.Sequential(nn.ReLU(), nn.Dropout(dropout))

    def forward(self, vectors: list[torch.Tensor], present: torch.Tensor) -> torch.Tensor:
        h = torch.stack([p(v) for p, v in zip(self.projs, vectors)], dim=1)  # [B, n, dim]
        mask = present.unsqueeze(-1)
        if self.mode == "mean":
            pooled = (h * mask).sum(1) / mask.sum(1).clamp(min=1)
        else:
            pooled = h.masked_fill(~mask, -1e4).amax(1)
            pooled = torch.where(mask.any(1), pooled, torch.zeros_like(pooled))
        return self.out(pooled)


def build_fusion(method: str, dims: list[int], dim: int, dropout: float) -> nn.Module:
    if method == "concat":
        return ConcatFusion(dims, dim, dropout)
    if method in ("mean", "max"):
        return PoolFusion(dims, dim, dropout, method)
    raise ValueError(f"unknown fusion method {method!r}; expected concat, mean or max")

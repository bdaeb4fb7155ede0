"""Fusion of per-input vectors into one, respecting which inputs are present.

Every method takes ``vectors`` (one [B, d_i] tensor per input) and ``present`` [B, n_inputs]
(bool) and returns [B, dim]. An absent input never influences the result: concat swaps in
a learned "absent" vector, mean and max pool over present inputs only.
"""
from __future__ import annotations

import torch
from torch import nn


class AbsentVectors(nn.ParameterList):
    """One learned "absent" vector per input, swapped in where the input is missing, concatenated.

    A module of its own, called on tensors only, so that DP-SGD (opacus) can take its per-row
    gradients (:mod:`polyfuse.training.dp` registers them); its weights keep the names of the plain
    ParameterList it replaced (``absent.0``, ...), so models saved before still load."""

    __call__ = nn.Module.__call__  # a ParameterList refuses to be called; this one runs forward (with hooks)

    def forward(self, present: torch.Tensor, *vectors: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.where(present[:, i : i + 1], v, a.expand_as(v))
                          for i, (v, a) in enumerate(zip(vectors, self))], dim=-1)


class ConcatFusion(nn.Module):
    def __init__(self, dims: list[int], dim: int, dropout: float):
        super().__init__()
        self.absent = AbsentVectors([nn.Parameter(torch.zeros(d)) for d in dims])
        self.proj = nn.Sequential(nn.Dropout(dropout), nn.Linear(sum(dims), dim), nn.ReLU(inplace=True), nn.Dropout(dropout))

    def forward(self, vectors: list[torch.Tensor], present: torch.Tensor) -> torch.Tensor:
        return self.proj(self.absent(present, *vectors))


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


class GatedFusion(nn.Module):
    """Learned per-sample weights over the present inputs (a softmax gate), then a weighted sum.

    The weights are the model's own account of which input it relied on for each record; they
    are returned as ``last_weights`` and exposed in predictions.
    """

    def __init__(self, dims: list[int], dim: int, dropout: float):
        super().__init__()
        self.projs = nn.ModuleList([nn.Sequential(nn.Linear(d, dim), nn.Tanh()) for d in dims])
        self.gates = nn.ModuleList([nn.Linear(d, 1) for d in dims])
        self.out = nn.Dropout(dropout)
        self.last_weights: torch.Tensor | None = None

    def forward(self, vectors: list[torch.Tensor], present: torch.Tensor) -> torch.Tensor:
        h = torch.stack([p(v) for p, v in zip(self.projs, vectors)], dim=1)  # [B, n, dim]
        logits = torch.cat([g(v) for g, v in zip(self.gates, vectors)], dim=1).masked_fill(~present, -1e4)
        weights = torch.softmax(logits, dim=1) * present  # all-absent rows get all-zero weights
        self.last_weights = weights
        return self.out((weights.unsqueeze(-1) * h).sum(1))


class AttentionFusion(nn.Module):
    """A small transformer over modality tokens: each input is a token (plus a learned modality
    embedding), a [CLS] token attends to the present ones (absent tokens are masked out of every
    attention), and its final state is the fused vector. Hand-written so it exports to ONNX as is."""

    def __init__(self, dims: list[int], dim: int, dropout: float, heads: int = 4, layers: int = 2):
        super().__init__()
        self.heads = heads if dim % heads == 0 else 1
        self.projs = nn.ModuleList([nn.Linear(d, dim) for d in dims])
        self.modality = nn.Parameter(torch.randn(len(dims), dim) * 0.02)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.blocks = nn.ModuleList([_Block(dim, self.heads, dropout) for _ in range(layers)])
        self.norm = nn.LayerNorm(dim)

    def forward(self, vectors: list[torch.Tensor], present: torch.Tensor) -> torch.Tensor:
        tokens = torch.stack([p(v) for p, v in zip(self.projs, vectors)], dim=1) + self.modality
        x = torch.cat([self.cls.expand(tokens.shape[0], -1, -1), tokens], dim=1)
        keep = torch.cat([torch.ones_like(present[:, :1]), present], dim=1)  # [CLS] always attends to itself
        for block in self.blocks:
            x = block(x, keep)
        return self.norm(x[:, 0])


class _Block(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        scores = (q @ k.transpose(-1, -2)) / (d // self.heads) ** 0.5
        scores = scores.masked_fill(~keep[:, None, None, :], -1e4)
        attended = (torch.softmax(scores, dim=-1) @ v).transpose(1, 2).reshape(b, n, d)
        x = x + self.drop(self.out(attended))
        return x + self.drop(self.ff(self.norm2(x)))


class LowRankFusion(nn.Module):
    """Low-rank multimodal fusion (Liu et al., 2018): the outer product of all inputs' vectors
    (each with an appended 1, so lower-order interactions survive) through rank-r factors,
    without ever forming the tensor. An absent input contributes only its constant term."""

    def __init__(self, dims: list[int], dim: int, dropout: float, rank: int = 8):
        super().__init__()
        self.factors = nn.ParameterList([nn.Parameter(torch.randn(rank, d + 1, dim) * (1.0 / (d + 1)) ** 0.5)
                                         for d in dims])
        self.rank_weights = nn.Parameter(torch.full((1, rank), 1.0 / rank))
        self.bias = nn.Parameter(torch.zeros(dim))
        self.out = nn.Sequential(nn.ReLU(), nn.Dropout(dropout))

    def forward(self, vectors: list[torch.Tensor], present: torch.Tensor) -> torch.Tensor:
        product = None
        for i, (v, w) in enumerate(zip(vectors, self.factors)):
            z = torch.cat([v * present[:, i : i + 1], torch.ones_like(v[:, :1])], dim=-1)  # [B, d+1]
            part = torch.einsum("bd,rdo->rbo", z, w)  # [rank, B, dim]
            product = part if product is None else product * part
        assert product is not None
        fused = torch.einsum("kr,rbo->bo", self.rank_weights, product) + self.bias
        return self.out(fused)


METHODS = ("concat", "mean", "max", "gated", "attention", "lowrank")


def build_fusion(method: str, dims: list[int], dim: int, dropout: float) -> nn.Module:
    if method == "concat":
        return ConcatFusion(dims, dim, dropout)
    if method in ("mean", "max"):
        return PoolFusion(dims, dim, dropout, method)
    if method == "gated":
        return GatedFusion(dims, dim, dropout)
    if method == "attention":
        return AttentionFusion(dims, dim, dropout)
    if method == "lowrank":
        return LowRankFusion(dims, dim, dropout)
    raise ValueError(f"unknown fusion method {method!r}; expected one of {METHODS}")

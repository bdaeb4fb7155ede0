"""Encoders of time series [B, T, C] with a per-step mask [B, T] (1 = a real step): each pools over
the real steps only, so gaps and padding never reach the vector. ONNX-exportable (static T, no
packed sequences, attention masked by an additive bias rather than nested tensors)."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from polyfuse.nn.encoders import norm


def masked_mean_max(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean and max over time of h [B, T, D] at the steps where mask [B, T] is 1 -> [B, 2D];
    a row without real steps gives zeros."""
    m = mask.to(h.dtype).unsqueeze(-1)
    count = m.sum(1)
    mean = (h * m).sum(1) / count.clamp(min=1.0)
    peak = h.masked_fill(m == 0, -1e4).amax(1)
    peak = torch.where(count > 0, peak, torch.zeros_like(peak))
    return torch.cat([mean, peak], dim=-1)


def _full_mask(x: torch.Tensor, length: torch.Tensor | None) -> torch.Tensor:
    steps = torch.arange(x.shape[1], device=x.device)[None, :]
    if length is None:
        return torch.ones(x.shape[:2], device=x.device)
    return (steps < length[:, None]).to(x.dtype)


class SeriesCNN(nn.Module):
    """Three same-length 1-D convolutions (kernels 7/5/3, 64 channels), masked mean+max pooling."""

    def __init__(self, channels: int, dim: int, width: int = 64, private: bool = False):
        super().__init__()
        layers, cin = [], channels
        for k in (7, 5, 3):
            layers += [nn.Conv1d(cin, width, k, 1, k // 2, bias=False), norm(width, 1, private), nn.ReLU(inplace=True)]
            cin = width
        self.convs = nn.Sequential(*layers)
        self.proj = nn.Sequential(nn.Linear(2 * width, dim), nn.ReLU(inplace=True))
        self.seq_dim = width

    def sequence(self, x: torch.Tensor, length: torch.Tensor | None = None, mask: torch.Tensor | None = None):
        """Per-step features [B, T, width] and the step mask [B, T] (what sequence fusion reads)."""
        mask = _full_mask(x, length) if mask is None else mask
        return self.convs((x * mask.unsqueeze(-1)).transpose(1, 2)).transpose(1, 2), mask

    def forward(self, x: torch.Tensor, length: torch.Tensor | None = None, mask: torch.Tensor | None = None):
        h, mask = self.sequence(x, length, mask)
        return self.proj(masked_mean_max(h, mask))


class SeriesRNN(nn.Module):
    """A bidirectional GRU or LSTM over the steps, masked mean+max pooling of its outputs."""

    def __init__(self, channels: int, dim: int, cell: str = "gru", hidden: int = 64):
        super().__init__()
        self.inp = nn.Linear(channels + 1, hidden)  # + the mask, so the RNN sees where the gaps are
        self.rnn = (nn.GRU if cell == "gru" else nn.LSTM)(hidden, hidden, batch_first=True, bidirectional=True)
        self.proj = nn.Sequential(nn.Linear(4 * hidden, dim), nn.ReLU(inplace=True))
        self.seq_dim = 2 * hidden

    def sequence(self, x: torch.Tensor, length: torch.Tensor | None = None, mask: torch.Tensor | None = None):
        """Per-step outputs [B, T, 2 * hidden] and the step mask [B, T]."""
        mask = _full_mask(x, length) if mask is None else mask
        h, _ = self.rnn(torch.relu(self.inp(torch.cat([x, mask.unsqueeze(-1).to(x.dtype)], dim=-1))))
        return h, mask

    def forward(self, x: torch.Tensor, length: torch.Tensor | None = None, mask: torch.Tensor | None = None):
        h, mask = self.sequence(x, length, mask)
        return self.proj(masked_mean_max(h, mask))


class _Block(nn.Module):
    def __init__(self, d: int, heads: int):
        super().__init__()
        self.heads, self.qkv, self.out = heads, nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.n1, self.n2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.ff = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))

    def forward(self, h: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        B, T, D = h.shape
        q, k, v = self.qkv(self.n1(h)).reshape(B, T, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        att = torch.softmax(q @ k.transpose(-1, -2) / (D // self.heads) ** 0.5 + bias, dim=-1)
        h = h + self.out((att @ v).transpose(1, 2).reshape(B, T, D))
        return h + self.ff(self.n2(h))


class SeriesTransformer(nn.Module):
    """A small pre-norm transformer (2 layers, 4 heads, width 64) over learned-position step tokens;
    masked steps are neither attended to nor pooled."""

    def __init__(self, channels: int, dim: int, length: int, width: int = 64, layers: int = 2, heads: int = 4):
        super().__init__()
        self.inp = nn.Linear(channels, width)
        self.pos = nn.Parameter(torch.zeros(1, length, width))
        nn.init.normal_(self.pos, std=0.02)
        self.blocks = nn.ModuleList(_Block(width, heads) for _ in range(layers))
        self.norm = nn.LayerNorm(width)
        self.proj = nn.Sequential(nn.Linear(2 * width, dim), nn.ReLU(inplace=True))
        self.seq_dim = width

    def sequence(self, x: torch.Tensor, length: torch.Tensor | None = None, mask: torch.Tensor | None = None):
        """Per-step tokens [B, T, width] after the blocks and the step mask [B, T]."""
        mask = _full_mask(x, length) if mask is None else mask
        h = self.inp(x) + self.pos[:, : x.shape[1]]
        bias = ((1.0 - mask.to(h.dtype)) * -1e4)[:, None, None, :]  # [B, 1, 1, T]
        for block in self.blocks:
            h = block(h, bias)
        return self.norm(h), mask

    def forward(self, x: torch.Tensor, length: torch.Tensor | None = None, mask: torch.Tensor | None = None):
        h, mask = self.sequence(x, length, mask)
        return self.proj(masked_mean_max(h, mask))


def build(cfg: Any, state: dict, private: bool = False) -> nn.Module:
    c = len(state["mean"])
    if cfg.encoder == "cnn1d":
        return SeriesCNN(c, cfg.dim, private=private)
    if cfg.encoder in ("gru", "lstm"):
        return SeriesRNN(c, cfg.dim, cfg.encoder)
    return SeriesTransformer(c, cfg.dim, cfg.length)

"""One encoder per input: each maps (tensor, lengths) to a [batch, dim] vector.

Encoders do not look at presence masks; fusion does. They must stay ONNX-exportable, so
no packed sequences: padded steps are masked out in pooling instead.

``private`` (the spec's ``train.privacy``) builds the variant DP-SGD can train: GroupNorm where
BatchNorm would mix rows of a batch (the same layer opacus' ``ModuleValidator.fix`` substitutes,
chosen here from the spec so that a loaded or exported model has the architecture it was trained
with, without opacus), a dense n-gram table (DP noise makes every update dense anyway) and no
dropout (DP-SGD's noise already regularises; the private model underfits).
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn


def masked_pool(h: torch.Tensor, length: torch.Tensor | None) -> torch.Tensor:
    """Mean and max over time of h [B, T, D] using only the first ``length`` steps -> [B, 2D]."""
    if length is None:
        return torch.cat([h.mean(1), h.amax(1)], dim=-1)
    steps = torch.arange(h.shape[1], device=h.device)[None, :]
    valid = (steps < length.clamp(min=1)[:, None]).unsqueeze(-1)
    mean = (h * valid).sum(1) / valid.sum(1).clamp(min=1)
    peak = h.masked_fill(~valid, -1e4).amax(1)
    return torch.cat([mean, peak], dim=-1)


def norm(channels: int, dims: int, private: bool = False) -> nn.Module:
    """BatchNorm over a batch, or for DP-SGD GroupNorm(gcd(32, C), C) -- opacus' own substitute."""
    if private:
        return nn.GroupNorm(math.gcd(32, channels), channels)
    return nn.BatchNorm2d(channels) if dims == 2 else nn.BatchNorm1d(channels)


def _conv2d(cin: int, cout: int, stride: int = 1, private: bool = False) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), norm(cout, 2, private), nn.ReLU(inplace=True))


class ImageCNN(nn.Module):
    """Small VGG-style CNN: conv-pool stages of 16/32/64 channels, a ~3x3 spatial summary, a projection.

    Narrow first layers keep it cheap on CPUs (most of a CNN's cost is at full resolution). The
    summary pool is sized from the (fixed) input size, so the graph has only static shapes.
    """

    def __init__(self, channels: int, dim: int, size: tuple[int, int] = (28, 28), private: bool = False):
        super().__init__()
        h, w = size[0] // 4, size[1] // 4
        self.features = nn.Sequential(
            _conv2d(channels, 16, private=private), nn.MaxPool2d(2),
            _conv2d(16, 32, private=private), nn.MaxPool2d(2),
            _conv2d(32, 64, private=private), nn.MaxPool2d((max(1, -(-h // 3)), max(1, -(-w // 3))), ceil_mode=True),
        )
        with torch.no_grad():
            flat = self.features(torch.zeros(2, channels, *size)).flatten(1).shape[1]
        self.proj = nn.Sequential(nn.Flatten(), nn.Linear(flat, dim), nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor, length: torch.Tensor | None = None) -> torch.Tensor:
        return self.proj(self.features(x))


class _Residual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, private: bool = False):
        super().__init__()
        self.body = nn.Sequential(_conv2d(cin, cout, stride, private), nn.Conv2d(cout, cout, 3, 1, 1, bias=False),
                                  norm(cout, 2, private))
        self.skip = nn.Identity() if cin == cout and stride == 1 else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, bias=False), norm(cout, 2, private))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.skip(x))


class ImageResNet(nn.Module):
    """ResNet-style CNN: stem, three residual stages (32/64/128), global average pooling."""

    def __init__(self, channels: int, dim: int, private: bool = False):
        super().__init__()
        self.features = nn.Sequential(
            _conv2d(channels, 32, private=private), _Residual(32, 32, 1, private), _Residual(32, 64, 2, private),
            _Residual(64, 128, 2, private),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.proj = nn.Sequential(nn.Linear(128, dim), nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor, length: torch.Tensor | None = None) -> torch.Tensor:
        return self.proj(self.features(x))


def _conv1d(cin: int, cout: int, k: int, private: bool = False) -> nn.Sequential:
    return nn.Sequential(nn.Conv1d(cin, cout, k, 1, k // 2, bias=False), norm(cout, 1, private), nn.ReLU(inplace=True))


class AudioCNN(nn.Module):
    """1-D CNN over feature frames [B, T, F] with masked mean+max pooling over valid frames."""

    def __init__(self, n_features: int, dim: int, lstm: bool = False, private: bool = False):
        super().__init__()
        self.convs = nn.Sequential(_conv1d(n_features, 64, 5, private), nn.MaxPool1d(2), _conv1d(64, 128, 3, private),
                                   nn.MaxPool1d(2), _conv1d(128, 128, 3, private))
        self.lstm = nn.LSTM(128, 64, batch_first=True, bidirectional=True) if lstm else None
        self.proj = nn.Sequential(nn.Linear(256, dim), nn.ReLU(inplace=True))
        self.seq_dim = 128

    def sequence(self, x: torch.Tensor, length: torch.Tensor | None = None, mask: torch.Tensor | None = None):
        """Per-frame features [B, T/4, 128] (after the LSTM when there is one) and their mask [B, T/4]:
        what sequence fusion reads. Frames past ``length`` are zeroed first, so padding never leaks in."""
        if length is not None:
            x = x * (torch.arange(x.shape[1], device=x.device)[None, :] < length[:, None]).unsqueeze(-1).to(x.dtype)
        h = self.convs(x.transpose(1, 2)).transpose(1, 2)
        if self.lstm is not None:
            h, _ = self.lstm(h)
        steps = torch.arange(h.shape[1], device=h.device)[None, :]
        if length is None:
            return h, torch.ones(h.shape[:2], dtype=h.dtype, device=h.device)
        return h, (steps < torch.div(length, 4, rounding_mode="floor").clamp(min=1)[:, None]).to(h.dtype)

    def forward(self, x: torch.Tensor, length: torch.Tensor | None = None) -> torch.Tensor:
        h = self.convs(x.transpose(1, 2)).transpose(1, 2)  # [B, T/4, 128]
        if self.lstm is not None:
            h, _ = self.lstm(h)
        pooled_length = None if length is None else torch.div(length, 4, rounding_mode="floor").clamp(min=1)
        return self.proj(masked_pool(h, pooled_length))


class TextRNN(nn.Module):
    """Embedding + bidirectional GRU/LSTM with masked mean+max pooling."""

    def __init__(self, vocab: int, dim: int, cell: str = "gru"):
        super().__init__()
        self.embed = nn.Embedding(vocab, 64, padding_idx=0)
        rnn = nn.GRU if cell == "gru" else nn.LSTM
        self.rnn = rnn(64, dim // 2, batch_first=True, bidirectional=True)
        self.proj = nn.Sequential(nn.Linear(2 * (dim // 2) * 2, dim), nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor, length: torch.Tensor | None = None) -> torch.Tensor:
        h, _ = self.rnn(self.embed(x))
        return self.proj(masked_pool(h, length))


class TextNgram(nn.Module):
    """Hashed word + char n-gram embedding bag (fastText-style): an IDF-weighted (or plain) mean of
    the n-grams' embeddings. Few operations per token and no recurrence, which is why it is strong
    on small data and fast to serve; the n-grams are hashed in the shared numpy preprocessing."""

    def __init__(self, buckets: int, dim: int, idf: Any = None, drop: float = 0.0, width: int | None = None,
                 sparse: bool = True):
        super().__init__()
        self.drop = drop
        width = width or dim
        # sparse gradients: a batch touches a few thousand of the table's rows (see polyfuse.training.optim)
        self.embed = nn.Embedding(buckets, width, padding_idx=0, sparse=sparse)
        nn.init.uniform_(self.embed.weight, -1.0 / width, 1.0 / width)
        with torch.no_grad():
            self.embed.weight[0].zero_()
        weights = torch.ones(buckets) if idf is None else torch.as_tensor(idf, dtype=torch.float32)
        weights[0] = 0.0  # padding
        self.register_buffer("idf", weights)
        self.proj = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, dim), nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor, length: torch.Tensor | None = None) -> torch.Tensor:
        w = self.idf[x].unsqueeze(-1)  # [B, N, 1]; 0 on padding
        if self.training and self.drop:  # n-gram dropout: no single rare n-gram can carry a label
            w = w * (torch.rand_like(w) >= self.drop)
        total = (self.embed(x) * w).sum(1)
        return self.proj(total / w.sum(1).clamp(min=1e-6))


class TextCNN(nn.Module):
    """Parallel convolutions (widths 2, 3, 4, 5) over token embeddings, each max-pooled over the
    valid steps (Kim 2014): order-aware phrases without recurrence."""

    WIDTHS = (2, 3, 4, 5)

    def __init__(self, vocab: int, dim: int, embed: int = 96, dropout: float = 0.2):
        super().__init__()
        self.embed = nn.Embedding(vocab, embed, padding_idx=0)
        channels = max(16, dim // 2)
        self.convs = nn.ModuleList(nn.Conv1d(embed, channels, k, padding=k // 2) for k in self.WIDTHS)
        self.proj = nn.Sequential(nn.Dropout(dropout), nn.Linear(channels * len(self.WIDTHS), dim), nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor, length: torch.Tensor | None = None) -> torch.Tensor:
        e = self.embed(x).transpose(1, 2)  # [B, E, T]
        steps = torch.arange(x.shape[1], device=x.device)[None, :]
        n = x.shape[1] if length is None else length.clamp(min=1)[:, None]
        pooled = []
        for conv in self.convs:
            h = torch.relu(conv(e))[:, :, : x.shape[1]]  # even widths pad one step more
            pooled.append(h.masked_fill(~(steps < n).unsqueeze(1), 0.0).amax(-1))
        return self.proj(torch.cat(pooled, dim=-1))


class NumberMLP(nn.Module):
    def __init__(self, dim: int, linear: bool = False):
        super().__init__()
        self.net = nn.Linear(1, dim) if linear else nn.Sequential(nn.Linear(1, dim), nn.ReLU(inplace=True), nn.Linear(dim, dim))

    def forward(self, x: torch.Tensor, length: torch.Tensor | None = None) -> torch.Tensor:
        return self.net(x)


class CategoryEmbedding(nn.Module):
    def __init__(self, vocab: int, dim: int):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)

    def forward(self, x: torch.Tensor, length: torch.Tensor | None = None) -> torch.Tensor:
        return self.embed(x)

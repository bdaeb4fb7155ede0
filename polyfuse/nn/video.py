"""Encoders of video clips [B, T, 3, S, S] with a per-frame mask [B, T] (1 = a real frame): padded
frames never reach the vector. ONNX-exportable: static T, no packed sequences (the GRU is unrolled
and carries its state over masked frames)."""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from polyfuse.nn.encoders import ImageCNN
from polyfuse.nn.timeseries import masked_mean_max


def _mask(x: torch.Tensor, length: torch.Tensor | None, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is not None:
        return mask.to(x.dtype)
    if length is None:
        return torch.ones(x.shape[:2], dtype=x.dtype, device=x.device)
    return (torch.arange(x.shape[1], device=x.device)[None, :] < length[:, None]).to(x.dtype)


class FrameCNN(nn.Module):
    """The image inputs' small CNN applied to every frame: [B, T, 3, S, S] -> [B, T, width]."""

    def __init__(self, size: int, width: int, private: bool = False):
        super().__init__()
        self.cnn = ImageCNN(3, width, (size, size), private)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T = x.shape[0], x.shape[1]
        return self.cnn(x.reshape(B * T, *x.shape[2:])).reshape(B, T, -1)


class VideoPool(nn.Module):
    """Per-frame CNN, masked mean+max over the real frames."""

    def __init__(self, size: int, dim: int, width: int = 64, private: bool = False):
        super().__init__()
        self.frames = FrameCNN(size, width, private)
        self.proj = nn.Sequential(nn.Linear(2 * width, dim), nn.ReLU(inplace=True))
        self.seq_dim = width

    def sequence(self, x: torch.Tensor, length: torch.Tensor | None = None, mask: torch.Tensor | None = None):
        """Per-frame features [B, T, width] and the frame mask [B, T] (what sequence fusion reads)."""
        return self.frames(x), _mask(x, length, mask)

    def forward(self, x: torch.Tensor, length: torch.Tensor | None = None, mask: torch.Tensor | None = None):
        f, m = self.sequence(x, length, mask)
        return self.proj(masked_mean_max(f, m))


class VideoGRU(nn.Module):
    """Per-frame CNN, then a GRU cell unrolled over the frames: on a masked frame the state is carried
    forward unchanged, so the last state summarises the real frames only. Output: that state with the
    masked mean of the frame features."""

    def __init__(self, size: int, dim: int, width: int = 64, hidden: int = 64, private: bool = False):
        super().__init__()
        self.frames = FrameCNN(size, width, private)
        self.cell = nn.GRUCell(width, hidden)
        self.proj = nn.Sequential(nn.Linear(hidden + 2 * width, dim), nn.ReLU(inplace=True))
        self.seq_dim = width

    def sequence(self, x: torch.Tensor, length: torch.Tensor | None = None, mask: torch.Tensor | None = None):
        """Per-frame CNN features [B, T, width] (before the GRU) and the frame mask [B, T]."""
        return self.frames(x), _mask(x, length, mask)

    def forward(self, x: torch.Tensor, length: torch.Tensor | None = None, mask: torch.Tensor | None = None):
        f, m = self.sequence(x, length, mask)
        h = f.new_zeros(f.shape[0], self.cell.hidden_size)
        for t in range(f.shape[1]):  # static T: unrolled in the graph
            keep = m[:, t:t + 1]
            h = keep * self.cell(f[:, t], h) + (1.0 - keep) * h
        return self.proj(torch.cat([h, masked_mean_max(f, m)], dim=-1))


def _norm3d(channels: int, private: bool) -> nn.Module:
    return nn.GroupNorm(math.gcd(32, channels), channels) if private else nn.BatchNorm3d(channels)


class Video3DCNN(nn.Module):
    """A small 3-D CNN (16/32/64 channels, 3x3x3 kernels, spatial pooling only, so each output step is
    one frame), spatial mean, masked mean+max over the real frames. Padded frames are zeroed first."""

    def __init__(self, dim: int, private: bool = False):
        super().__init__()
        layers, cin = [], 3
        for cout in (16, 32, 64):
            layers += [nn.Conv3d(cin, cout, 3, 1, 1, bias=False), _norm3d(cout, private), nn.ReLU(inplace=True),
                       nn.MaxPool3d((1, 2, 2))]
            cin = cout
        self.convs = nn.Sequential(*layers)
        self.proj = nn.Sequential(nn.Linear(2 * cin, dim), nn.ReLU(inplace=True))
        self.seq_dim = cin

    def sequence(self, x: torch.Tensor, length: torch.Tensor | None = None, mask: torch.Tensor | None = None):
        """Per-frame features [B, T, 64] (spatial means of the 3-D CNN) and the frame mask [B, T]."""
        m = _mask(x, length, mask)
        h = self.convs((x * m[:, :, None, None, None]).transpose(1, 2))  # [B, C, T, H, W]
        return h.mean(dim=(3, 4)).transpose(1, 2), m

    def forward(self, x: torch.Tensor, length: torch.Tensor | None = None, mask: torch.Tensor | None = None):
        h, m = self.sequence(x, length, mask)
        return self.proj(masked_mean_max(h, m))


def build(cfg: Any, state: dict, private: bool = False) -> nn.Module:
    if cfg.encoder == "cnn_gru":
        return VideoGRU(cfg.size, cfg.dim, private=private)
    if cfg.encoder == "cnn3d":
        return Video3DCNN(cfg.dim, private=private)
    return VideoPool(cfg.size, cfg.dim, private=private)

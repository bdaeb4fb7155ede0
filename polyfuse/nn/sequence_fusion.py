"""Sequence fusion (MM-RNN): time-aligned inputs on one grid of ``steps`` steps, one RNN over it.

Each time-aligned input (timeseries, video, audio with a built-in encoder) gives its encoder's
per-step features [B, T_i, D_i] and step mask [B, T_i]. :func:`to_grid` resamples them in time onto
``steps`` cells by masked average pooling over equal fractions of each row's valid span (first to
last real step): cell k averages the real steps overlapping [k/steps, (k+1)/steps) of the span,
weighted by overlap, so series of any length and sample rate line up. A cell with no real step is
masked. The grid travels to the fusion module flattened into one vector per input ([B, steps *
(D_i+1)], the mask last), so the model's encode / decide / alone plumbing stays one vector per
input.

The fusion projects each input's grid to a common width, concatenates per step, and runs a GRU or
LSTM cell unrolled over the steps (static ``steps``: no data-dependent control flow,
ONNX-exportable); a step where no input is present carries the state forward unchanged. A missing
input (present false, also under modality dropout) is zeroed and masked. Non-temporal inputs'
vectors (zeroed when missing) are concatenated to the final state before the output projection.
"""
from __future__ import annotations

import torch
from torch import nn


def to_grid(seq: torch.Tensor, mask: torch.Tensor, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Resample seq [B, T, D] with mask [B, T] onto ``steps`` cells -> ([B, steps, D], [B, steps] float)."""
    m = mask.to(seq.dtype)
    T = seq.shape[1]
    idx = torch.arange(T, device=seq.device, dtype=seq.dtype)[None, :]  # [1, T]
    start = (idx + T * (1.0 - m)).amin(1, keepdim=True)  # first real step (T when none)
    end = ((idx + 1.0) * m).amax(1, keepdim=True)  # one past the last real step (0 when none)
    span = (end - start).clamp(min=0.0)  # [B, 1]
    k = torch.arange(steps, device=seq.device, dtype=seq.dtype)[None, :, None]  # [1, S, 1]
    lo = start[:, :, None] + span[:, :, None] * k / steps  # [B, S, 1]
    hi = start[:, :, None] + span[:, :, None] * (k + 1.0) / steps
    t = idx[:, None, :]  # [1, 1, T]
    overlap = (torch.minimum(hi, t + 1.0) - torch.maximum(lo, t)).clamp(min=0.0)  # [B, S, T]
    w = overlap * m[:, None, :]
    total = w.sum(-1, keepdim=True)  # [B, S, 1]
    grid = (w @ seq) / total.clamp(min=1e-6)
    cell = (total.squeeze(-1) > 1e-6).to(seq.dtype)
    return grid * cell.unsqueeze(-1), cell


def pack(seq: torch.Tensor, mask: torch.Tensor, steps: int) -> torch.Tensor:
    """One input's grid flattened to [B, steps * (D + 1)] (features, then the cell mask)."""
    grid, cell = to_grid(seq, mask, steps)
    return torch.cat([grid.flatten(1), cell], dim=1)


class SequenceFusion(nn.Module):
    """``temporal[i]``: input i's width of per-step features when it is time-aligned, else None
    (then ``dims[i]`` is its vector's width)."""

    def __init__(self, dims: list[int], temporal: list[int | None], dim: int, dropout: float,
                 rnn: str = "gru", steps: int = 16, width: int | None = None):
        super().__init__()
        if not any(d is not None for d in temporal):
            raise ValueError("sequence fusion needs at least one time-aligned input (timeseries or video)")
        self.steps, self.temporal, self.rnn = steps, list(temporal), rnn
        self.width = width or dim
        self.step_projs = nn.ModuleDict({str(i): nn.Linear(d, self.width) for i, d in enumerate(temporal)
                                         if d is not None})
        n_seq = len(self.step_projs)
        hidden = dim
        self.cell = (nn.GRUCell if rnn == "gru" else nn.LSTMCell)(n_seq * self.width, hidden)
        static = sum(d for d, t in zip(dims, temporal) if t is None)
        self.out = nn.Sequential(nn.Dropout(dropout), nn.Linear(hidden + static, dim), nn.ReLU(inplace=True),
                                 nn.Dropout(dropout))

    def packed_dim(self, i: int) -> int:
        d = self.temporal[i]
        assert d is not None
        return self.steps * (d + 1)

    def forward(self, vectors: list[torch.Tensor], present: torch.Tensor) -> torch.Tensor:
        B, S = present.shape[0], self.steps
        frames, cells, static = [], [], []
        for i, (v, d) in enumerate(zip(vectors, self.temporal)):
            here = present[:, i : i + 1].to(v.dtype)  # [B, 1]
            if d is None:
                static.append(v * here)
                continue
            grid = v[:, : S * d].reshape(B, S, d)
            cell = v[:, S * d :] * here  # [B, S]: a missing input is masked at every step
            frames.append(self.step_projs[str(i)](grid) * cell.unsqueeze(-1))
            cells.append(cell)
        x = torch.cat(frames, dim=-1)  # [B, S, n_seq * width]
        step = torch.stack(cells, dim=-1).amax(-1)  # [B, S]: any input present at that step
        h = x.new_zeros(B, self.cell.hidden_size)
        c = x.new_zeros(B, self.cell.hidden_size)
        for t in range(S):  # static steps: unrolled in the graph
            keep = step[:, t : t + 1]
            if self.rnn == "gru":
                h = keep * self.cell(x[:, t], h) + (1.0 - keep) * h
            else:
                h_new, c_new = self.cell(x[:, t], (h, c))
                h = keep * h_new + (1.0 - keep) * h
                c = keep * c_new + (1.0 - keep) * c
        return self.out(torch.cat([h, *static], dim=-1))

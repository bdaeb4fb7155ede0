"""An exponential moving average of the network's weights (``train.ema``), kept beside training.

After each optimiser step the average moves toward the new weights by ``1 - decay`` (with the usual
warm-up, ``min(decay, (1 + t) / (10 + t))``, so early steps are not frozen in). Validation, the
best-epoch choice and the saved model use the averaged weights; training continues on the raw ones.
The average smooths the step-to-step noise of small or noisy batches; under DP-SGD, whose every
step carries Gaussian noise, it is pure post-processing and costs no privacy budget.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

import torch
from torch import nn


@dataclass
class WeightAverage:
    """The averaged copy of ``net``'s floating-point state (weights and running statistics)."""

    net: nn.Module
    decay: float
    steps: int = 0
    shadow: dict[str, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        live = {k: v for k, v in self.net.state_dict().items() if v.is_floating_point()}
        self.shadow = {k: v.detach().clone() for k, v in live.items()}
        # state_dict's tensors share storage with the parameters and buffers, which the optimiser and
        # load_state_dict update in place: found once, not rebuilt on every step
        self._pairs = [(self.shadow[k], v.detach()) for k, v in live.items()]

    @torch.no_grad()
    def update(self) -> None:
        """One optimiser step was taken: move the average toward the weights."""
        self.steps += 1
        d = min(self.decay, (1 + self.steps) / (10 + self.steps))
        for avg, now in self._pairs:
            avg.lerp_(now, 1.0 - d)

    @contextmanager
    def applied(self) -> Iterator[None]:
        """``net`` holds the averaged weights inside the block, its own again after it."""
        own = {k: v.detach().clone() for k, v in self.net.state_dict().items() if k in self.shadow}
        self.net.load_state_dict(self.shadow, strict=False)
        try:
            yield
        finally:
            self.net.load_state_dict(own, strict=False)

"""A pretrained image backbone (``encoder: {hf: ...}`` on a video input) run on every frame.

Clips [B, T, 3, H, W] (the image processor's pixels, :mod:`polyfuse.preprocess.video_hf`) with a frame
mask [B, T]: the backbone sees the B*T frames as one image batch, each frame is pooled as an image
input's would be (cls, mean or learned attention over its patches), and the frame vectors are
averaged over the real frames only before the usual projection to ``dim``.

A frozen backbone's frame vectors [n_frames, H] are what the feature cache stores per clip (a
sequence, like attention-pooled text), so later epochs read them back and only the mean and the
projection train. With attention pooling the learned weights read every patch of every frame, which
the cache does not keep: that backbone runs every epoch.
"""
from __future__ import annotations

import torch
from torch import nn

from polyfuse.nn.hf import PretrainedEncoder, hidden_size
from polyfuse.nn.video import _mask
from polyfuse.spec.inputs import HFEncoder


def _exporting() -> bool:
    """Inside ONNX export (dynamo or TorchScript) the graph must keep static shapes."""
    return bool(torch.compiler.is_exporting() or torch.onnx.is_in_onnx_export() or torch.jit.is_tracing())


def masked_mean(f: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Mean of f [B, T, D] over the frames where m [B, T] is 1 (zeros when none); padded frames are
    selected away, never multiplied in, so whatever the backbone makes of a blank frame cannot leak."""
    keep = m.unsqueeze(-1) > 0
    total = torch.where(keep, f, torch.zeros_like(f)).sum(1)
    return total / keep.to(f.dtype).sum(1).clamp(min=1.0)


class PretrainedFrames(PretrainedEncoder):
    """backbone per frame -> frame vectors [B, T, H] -> masked mean over frames -> projection to ``dim``."""

    def __init__(self, backbone: nn.Module, enc: HFEncoder, dim: int):
        super().__init__(backbone, "image", enc, dim)
        self.seq_dim = hidden_size(backbone)  # the width sequence fusion reads per frame

    @property
    def caches_sequence(self) -> bool:
        return True  # a clip's frame vectors, as many as it has real frames

    @property
    def cacheable(self) -> bool:
        return self.attend is None

    def _frame(self, pixels: torch.Tensor) -> torch.Tensor:
        """Image batch [N, 3, H, W] -> one vector per frame [N, H] (the image input's pooling)."""
        h, length = super().features(pixels)
        return self.pool(h, length)

    def frame_vectors(self, x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        """[B, T, 3, H, W] -> [B, T, H]. Eager runs only the real frames (padding costs nothing and
        cannot reach batch statistics while layers train); an exported graph runs all B*T (static
        shapes), and padded frames are then dropped by the mask."""
        B, T = x.shape[0], x.shape[1]
        flat = x.reshape(B * T, *x.shape[2:])
        if _exporting():
            return self._frame(flat).reshape(B, T, -1)
        keep = m.reshape(-1) > 0
        out = flat.new_zeros(B * T, self.seq_dim)
        if bool(keep.any()):
            out[keep] = self._frame(flat[keep]).to(out.dtype)
        return out.reshape(B, T, -1)

    def sequence(self, x: torch.Tensor, length: torch.Tensor | None = None, mask: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """Frame vectors [B, T, H] and the frame mask [B, T] (what sequence fusion reads)."""
        m = _mask(x, length, mask)
        return self.frame_vectors(x, m), m

    def cached_sequence(self, h: torch.Tensor, length: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`sequence` from cached frame vectors [B, T', H] and their counts."""
        return h, _mask(h, length, None)

    def features(self, x: torch.Tensor, length: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """For the cache: frame vectors [B, T, H] and each clip's number of real frames (they come first)."""
        m = _mask(x, length, None)
        return self.frame_vectors(x, m), m.sum(1).long()

    def head(self, h: torch.Tensor, length: torch.Tensor | None = None) -> torch.Tensor:
        """Cached frame vectors [B, T', H] with their counts -> [B, dim]."""
        return self.proj(masked_mean(h, _mask(h, length, None)))

    def forward(self, x: torch.Tensor, length: torch.Tensor | None = None, mask: torch.Tensor | None = None
                ) -> torch.Tensor:
        f, m = self.sequence(x, length, mask)
        return self.proj(masked_mean(f, m))

"""Where training runs and in what precision: ``train.device`` (auto|cpu|cuda|mps) and
``train.precision`` (fp32|bf16|fp16 autocast), checked against what this machine has."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Iterator

import torch

from polyfuse.errors import SpecError

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Placement:
    device: torch.device
    precision: str = "fp32"

    @property
    def scaled(self) -> bool:
        """fp16 gradients underflow without loss scaling (bf16 has fp32's range and needs none)."""
        return self.precision == "fp16"

    @contextlib.contextmanager
    def autocast(self) -> Iterator[None]:
        if self.precision == "fp32":
            yield
        else:
            with torch.autocast(self.device.type, dtype=DTYPES[self.precision]):
                yield


CPU = Placement(torch.device("cpu"))


def _has_mps() -> bool:
    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


def resolve(train: Any, local_rank: int = 0) -> Placement:
    """The device and precision a spec's ``train`` section asks for, or a SpecError saying why not here."""
    want = train.device
    if want == "auto":
        want = "cuda" if torch.cuda.is_available() else "mps" if _has_mps() else "cpu"
    if want == "cuda" and not torch.cuda.is_available():
        raise SpecError("train.device: cuda, but torch sees no CUDA GPU here (torch.cuda.is_available() is False); "
                        "use device: auto or cpu")
    if want == "mps" and not _has_mps():
        raise SpecError("train.device: mps, but this torch build or machine has no MPS; use device: auto or cpu")
    device = torch.device(f"cuda:{local_rank}" if want == "cuda" else want)
    if train.precision == "fp16" and want != "cuda":
        raise SpecError(f"train.precision: fp16 needs a CUDA GPU (this run is on {want}); use bf16 or fp32")
    if train.precision == "bf16" and want == "cuda" and not torch.cuda.is_bf16_supported():
        raise SpecError("train.precision: bf16 is not supported by this GPU; use fp16 or fp32")
    return Placement(device, train.precision)


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    if device.type == "cpu":
        return batch
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}

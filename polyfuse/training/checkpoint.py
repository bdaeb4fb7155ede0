"""Atomic per-epoch training checkpoints (safetensors + JSON, no pickle) for ``--resume``.

A checkpoint holds the model, the best model so far, the optimiser's tensors and everything
else (epoch, history, early-stopping counters, scheduler) as JSON. Data order and
augmentation are seeded per epoch, so resuming reproduces the uninterrupted run exactly.
"""
from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from polyfuse.errors import ArtifactError


def _flatten_optimizer(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    tensors, scalars = {}, {}
    for idx, slots in state["state"].items():
        for key, value in slots.items():
            if torch.is_tensor(value):
                tensors[f"opt.{idx}.{key}"] = value.contiguous()
            else:
                scalars[f"{idx}.{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("opt."):
            _, idx, slot = key.split(".", 2)
            state.setdefault(int(idx), {})[slot] = value
    for key, value in meta["scalars"].items():
        idx, slot = key.split(".", 1)
        state.setdefault(int(idx), {})[slot] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def frozen_parameters(net: torch.nn.Module) -> set[str]:
    """Parameters training never changes: a frozen pretrained backbone's (hundreds of MB for e5)."""
    return {n for n, p in net.named_parameters() if not p.requires_grad}


def save(folder: Path, *, model: torch.nn.Module, best: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer,
         scheduler: Any, info: dict, average: Any = None) -> None:
    """Write the checkpoint into ``folder`` atomically (temp dir + rename); ``average``: train.ema's
    :class:`polyfuse.training.averaging.WeightAverage`, so a resumed run averages on as an unbroken one."""
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    opt_tensors, opt_meta = _flatten_optimizer(optimizer.state_dict())
    frozen = frozen_parameters(model)  # a frozen backbone is rebuilt from its folder, not saved
    tensors = {f"model.{k}": v.detach().contiguous() for k, v in model.state_dict().items() if k not in frozen}
    tensors.update({f"best.{k}": v.contiguous() for k, v in best.items()})
    tensors.update(opt_tensors)
    if average is not None:
        tensors.update({f"ema.{k}": v.contiguous() for k, v in average.shadow.items()})
        info = {**info, "ema_steps": average.steps}
    save_file(tensors, str(tmp / "state.safetensors"))
    meta = {**info, "optimizer": opt_meta, "scheduler": scheduler.state_dict() if scheduler else None}
    (tmp / "state.json").write_text(json.dumps(meta, default=_json_default))
    old = folder.with_name(folder.name + ".old")
    if folder.exists():
        os.replace(folder, old)
    os.replace(tmp, folder)
    shutil.rmtree(old, ignore_errors=True)


def load(folder: Path) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict, dict]:
    """Returns (model state, best state, optimizer state, info)."""
    try:
        tensors = load_file(str(folder / "state.safetensors"))
        info = json.loads((folder / "state.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError, OSError) as e:
        raise ArtifactError(f"checkpoint {folder} is missing or corrupt ({e}); train again without --resume") from None
    model = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
    best = {k[5:]: v for k, v in tensors.items() if k.startswith("best.")}
    optimizer = _unflatten_optimizer(tensors, info.pop("optimizer"))
    return model, best, optimizer, info


def restore_average(folder: Path, average: Any) -> None:
    """Put a checkpoint's weight average (train.ema) back into ``average``."""
    tensors = load_file(str(folder / "state.safetensors"))
    for k in average.shadow:
        if f"ema.{k}" in tensors:
            average.shadow[k].copy_(tensors[f"ema.{k}"])
    average.steps = int(json.loads((folder / "state.json").read_text()).get("ema_steps", 0))


def _json_default(value: Any) -> Any:
    if torch.is_tensor(value):
        return value.item() if value.numel() == 1 else value.tolist()
    if isinstance(value, float) and math.isinf(value):
        return str(value)
    raise TypeError(f"cannot store {type(value).__name__} in a checkpoint")

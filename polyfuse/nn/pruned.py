"""A network narrowed by structured pruning, rebuilt from its spec: the spec builds the full widths, then
each pruned layer takes the widths recorded in the artifact's structure.json (JSON, not a pickled
module) and the shapes of its saved weights."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

# the attributes that hold a layer's widths, per layer type polyfuse knows how to rebuild
WIDTHS: dict[type, tuple[str, ...]] = {
    nn.Linear: ("in_features", "out_features"),
    nn.Conv1d: ("in_channels", "out_channels", "groups"),
    nn.Conv2d: ("in_channels", "out_channels", "groups"),
    nn.BatchNorm1d: ("num_features",),
    nn.BatchNorm2d: ("num_features",),
    nn.LayerNorm: ("normalized_shape",),
    nn.Embedding: ("embedding_dim",),
    nn.EmbeddingBag: ("embedding_dim",),
}


def _widths(module: nn.Module) -> dict[str, Any] | None:
    names = WIDTHS.get(type(module))
    if names is None:
        return None
    return {a: list(v) if isinstance(v := getattr(module, a), tuple) else v for a in names}


def changed_layers(before: dict[str, tuple], net: nn.Module) -> dict[str, dict[str, Any]]:
    """The widths of every layer whose tensors' shapes differ from ``before`` (name -> shape); raises
    ValueError for a changed layer of a type that could not be rebuilt at load time."""
    out = {}
    for name, module in net.named_modules():
        tensors = {**dict(module.named_parameters(recurse=False)), **dict(module.named_buffers(recurse=False))}
        if not any(tuple(t.shape) != before.get(f"{name}.{k}" if name else k) for k, t in tensors.items()):
            continue
        widths = _widths(module)
        if widths is None:
            raise ValueError(f"pruning changed layer {name!r} ({type(module).__name__}), which polyfuse cannot "
                             "rebuild from its spec")
        out[name] = widths
    return out


def reshape(net: nn.Module, layers: dict[str, dict[str, Any]], weights: dict[str, torch.Tensor]) -> None:
    """Give each layer in ``layers`` its recorded widths and tensors shaped like its saved ``weights``
    (their values arrive with ``load_state_dict``)."""
    modules = dict(net.named_modules())
    for name, widths in layers.items():
        module = modules.get(name)
        if module is None or _widths(module) is None:
            raise KeyError(f"structure.json names layer {name!r}, which this spec's network does not have as a "
                           "prunable layer")
        for attr, value in widths.items():
            setattr(module, attr, tuple(value) if isinstance(value, list) else value)
        for key in list(module._parameters):
            if module._parameters[key] is not None:
                module._parameters[key] = nn.Parameter(torch.empty_like(weights[f"{name}.{key}"]))
        for key in list(module._buffers):
            if module._buffers[key] is not None and f"{name}.{key}" in weights:
                module._buffers[key] = torch.empty_like(weights[f"{name}.{key}"])

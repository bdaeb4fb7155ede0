"""EfficientNet-Lite (Tan & Le 2019; the mobile variant without squeeze-excitation, ReLU6) as a
transformers model, so the zoo's ImageNet weights run through the same pretrained-encoder path as any
Hugging Face vision backbone: the embedding cache, ONNX export, int8 and per-frame video.

timm has the architecture (``tf_efficientnet_lite0``) but imports torchvision, which has no build for
the CPU torch this project pins; transformers' EfficientNet always has squeeze-excitation. The model is
registered with transformers' Auto classes (:func:`register`), the documented way to add one.

The weights come as a torch state dict in the layout of the ``efficientnet_pytorch`` port
(``_conv_stem``, ``_blocks.N._depthwise_conv`` ...), read with ``torch.load(weights_only=True)`` (no
code runs) and written once as safetensors (:func:`write_folder`). Convolutions pad as TensorFlow's
"SAME" does, which is what the weights were trained with.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F
from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutputWithPoolingAndNoAttention

# EfficientNet-B0's stages (the Lite variants share them at width and depth 1.0): per block, its stride
STAGES = ((1, 1), (2, 2), (2, 2), (3, 2), (3, 1), (4, 2), (1, 1))  # (repeats, stride of the first block)
BLOCK_STRIDES = [s if i == 0 else 1 for repeats, s in STAGES for i in range(repeats)]


class EfficientNetLiteConfig(PretrainedConfig):
    model_type = "efficientnet_lite"

    def __init__(self, stem_channels: int = 32, head_channels: int = 1280, blocks: list | None = None,
                 batch_norm_eps: float = 1e-3, num_channels: int = 3, **kwargs):
        super().__init__(**kwargs)
        # per block: [in, expanded, out, kernel, stride]
        self.stem_channels, self.head_channels, self.blocks = stem_channels, head_channels, blocks or []
        self.batch_norm_eps, self.num_channels = batch_norm_eps, num_channels
        self.hidden_size = head_channels  # what the pretrained encoder pools and projects


class SameConv(nn.Conv2d):
    """Conv2d padded as TensorFlow's SAME: output ceil(n / stride), the odd pixel of padding at the end."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for n, k, s in ((x.shape[-1], self.kernel_size[1], self.stride[1]), (x.shape[-2], self.kernel_size[0],
                                                                             self.stride[0])):
            total = max((math.ceil(n / s) - 1) * s + k - n, 0)
            pads += [total // 2, total - total // 2]
        return super().forward(F.pad(x, pads) if any(pads) else x)


def conv_bn(cin: int, cout: int, kernel: int, stride: int, eps: float, groups: int = 1, act: bool = True):
    layers = [SameConv(cin, cout, kernel, stride, groups=groups, bias=False), nn.BatchNorm2d(cout, eps=eps)]
    return nn.Sequential(*layers, nn.ReLU6(inplace=True)) if act else nn.Sequential(*layers)


class Block(nn.Module):
    """Inverted residual: 1x1 expand, depthwise k x k, 1x1 project; the input added when shapes agree."""

    def __init__(self, cin: int, mid: int, cout: int, kernel: int, stride: int, eps: float):
        super().__init__()
        self.expand = conv_bn(cin, mid, 1, 1, eps) if mid != cin else nn.Identity()
        self.depthwise = conv_bn(mid, mid, kernel, stride, eps, groups=mid)
        self.project = conv_bn(mid, cout, 1, 1, eps, act=False)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.depthwise(self.expand(x)))
        return x + y if self.residual else y


class EfficientNetLiteModel(PreTrainedModel):
    config_class = EfficientNetLiteConfig
    base_model_prefix = "efficientnet_lite"
    main_input_name = "pixel_values"

    def __init__(self, config: EfficientNetLiteConfig):
        super().__init__(config)
        eps = config.batch_norm_eps
        self.stem = conv_bn(config.num_channels, config.stem_channels, 3, 2, eps)
        self.blocks = nn.ModuleList(Block(*b, eps=eps) for b in config.blocks)
        last = config.blocks[-1][2] if config.blocks else config.stem_channels
        self.head = conv_bn(last, config.head_channels, 1, 1, eps)
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out")
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    def forward(self, pixel_values: torch.Tensor, **_) -> BaseModelOutputWithPoolingAndNoAttention:
        h = self.stem(pixel_values)
        for block in self.blocks:
            h = block(h)
        h = self.head(h)
        return BaseModelOutputWithPoolingAndNoAttention(last_hidden_state=h, pooler_output=h.mean((2, 3)))


def register() -> None:
    """Make ``model_type: efficientnet_lite`` known to AutoConfig and AutoModel (idempotent)."""
    AutoConfig.register(EfficientNetLiteConfig.model_type, EfficientNetLiteConfig, exist_ok=True)
    AutoModel.register(EfficientNetLiteConfig, EfficientNetLiteModel, exist_ok=True)


# ----------------------------------------------------------------------------- conversion
_BN = {"weight", "bias", "running_mean", "running_var", "num_batches_tracked"}


def convert_state_dict(sd: dict[str, torch.Tensor]) -> tuple[EfficientNetLiteConfig, dict[str, torch.Tensor]]:
    """The config (read off the weights' shapes) and the renamed weights of an efficientnet_pytorch
    state dict; the ImageNet classifier (``_fc``) is dropped."""
    n_blocks = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("_blocks."))
    if n_blocks != len(BLOCK_STRIDES):
        raise ValueError(f"expected EfficientNet-Lite's {len(BLOCK_STRIDES)} blocks, found {n_blocks}")
    names = {"_conv_stem.weight": "stem.0.weight", "_conv_head.weight": "head.0.weight"}
    names.update({f"_bn0.{p}": f"stem.1.{p}" for p in _BN} | {f"_bn1.{p}": f"head.1.{p}" for p in _BN})
    blocks = []
    for i in range(n_blocks):
        src, dst = f"_blocks.{i}.", f"blocks.{i}."
        dw = sd[src + "_depthwise_conv.weight"]
        mid, kernel = dw.shape[0], dw.shape[-1]
        expand = src + "_expand_conv.weight" in sd
        cin = sd[src + "_expand_conv.weight"].shape[1] if expand else mid
        blocks.append([int(cin), int(mid), int(sd[src + "_project_conv.weight"].shape[0]), int(kernel),
                       BLOCK_STRIDES[i]])
        parts = [("_depthwise_conv.weight", "depthwise.0.weight"), ("_project_conv.weight", "project.0.weight")]
        parts += [(f"_bn1.{p}", f"depthwise.1.{p}") for p in _BN] + [(f"_bn2.{p}", f"project.1.{p}") for p in _BN]
        if expand:
            parts += [("_expand_conv.weight", "expand.0.weight")] + [(f"_bn0.{p}", f"expand.1.{p}") for p in _BN]
        names.update({src + a: dst + b for a, b in parts})
    unknown = sorted(k for k in sd if k not in names and not k.startswith("_fc."))
    if unknown:
        raise ValueError(f"not EfficientNet-Lite weights: unexpected {unknown[:5]}")
    config = EfficientNetLiteConfig(stem_channels=int(sd["_conv_stem.weight"].shape[0]),
                                    head_channels=int(sd["_conv_head.weight"].shape[0]), blocks=blocks)
    return config, {names[k]: v for k, v in sd.items() if k in names}


# what the weights were evaluated with (timm's tf_efficientnet_lite0): shortest edge 256, centre 224,
# bicubic, pixels scaled to [-1, 1]
PREPROCESSOR = {"image_processor_type": "BitImageProcessor", "do_resize": True, "size": {"shortest_edge": 256},
                "resample": 3, "do_center_crop": True, "crop_size": {"height": 224, "width": 224},
                "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": [0.5] * 3,
                "image_std": [0.5] * 3, "do_convert_rgb": True}


def write_folder(source: Path, folder: Path) -> None:
    """Convert the state dict file ``source`` into a transformers folder (config, safetensors, processor)."""
    register()
    sd = torch.load(source, map_location="cpu", weights_only=True)
    config, weights = convert_state_dict(sd)
    model = EfficientNetLiteModel(config)
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise ValueError(f"{source}: weights do not fit EfficientNet-Lite (missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]})")
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    (folder / "preprocessor_config.json").write_text(json.dumps(PREPROCESSOR, indent=1))

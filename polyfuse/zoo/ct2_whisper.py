"""A CTranslate2 Whisper model (``model.bin``, as ``ct2-transformers-converter`` writes it) back to a
transformers Whisper folder, so the zoo's whisper-tiny.en runs through the pretrained audio path.

CTranslate2's file (binary version 6): a header (version, spec name, revision), then each variable as
its name, shape, data type and raw bytes, then aliases (the output projection is the token embedding).
Its converter fused attention projections: a self-attention's ``linear_0`` is q, k and v stacked (k has
no bias in Whisper: CTranslate2 stored zeros), a cross-attention's ``linear_0`` is q and ``linear_1``
k and v. Weights are fp16 in the file and become float32 here; nothing else changes, and
``benchmarks/zoo.py`` checks the encoder against CTranslate2's own.
"""
from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path
from typing import BinaryIO

import numpy as np

# CTranslate2's DataType enum, in order
DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16, 5: "bfloat16"}


def _take(f: BinaryIO, fmt: str):
    size = struct.calcsize(fmt)
    data = f.read(size)
    if len(data) != size:
        raise ValueError("the file ends early")
    return struct.unpack("<" + fmt, data)[0]


def _string(f: BinaryIO) -> str:
    n = _take(f, "H")
    return f.read(n)[:-1].decode("utf-8")  # stored with its NUL


def read(path: Path) -> tuple[str, dict[str, np.ndarray]]:
    """(spec name, variables by name with aliases resolved) of a CTranslate2 model file."""
    out: dict[str, np.ndarray] = {}
    with open(path, "rb") as f:
        version = _take(f, "I")
        if version != 6:
            raise ValueError(f"{path}: CTranslate2 binary version {version}; this reader knows version 6")
        spec, _revision = _string(f), _take(f, "I")
        for _ in range(_take(f, "I")):
            name = _string(f)
            shape = [_take(f, "I") for _ in range(_take(f, "B"))]
            dtype, nbytes = DTYPES[_take(f, "B")], _take(f, "I")
            raw = f.read(nbytes)
            if dtype == "bfloat16":  # the high half of a float32
                value = (np.frombuffer(raw, np.uint16).astype(np.uint32) << 16).view(np.float32)
            else:
                value = np.frombuffer(raw, dtype)
            out[name] = value.reshape(shape).astype(np.float32 if value.dtype.kind == "f" else value.dtype)
        for _ in range(_take(f, "I")):
            alias, target = _string(f), _string(f)
            out[alias] = out[target]
    return spec, out


def _count(v: dict, prefix: str) -> int:
    """Layers under ``prefix`` (``layer_0``, ``layer_1``...; not ``layer_norm``)."""
    return len({k.split("/")[1] for k in v if k.startswith(prefix + "/layer_") and k.split("/")[1][6:].isdigit()})


def _attention(v: dict, src: str, dst: str, fused: str) -> dict[str, np.ndarray]:
    """HF q/k/v/out projections from CTranslate2's fused ones (``fused``: "qkv" or "q+kv")."""
    out = {}
    if fused == "qkv":
        w, b = np.split(v[f"{src}/linear_0/weight"], 3), np.split(v[f"{src}/linear_0/bias"], 3)
        out_proj = "linear_1"
    else:
        kv_w, kv_b = np.split(v[f"{src}/linear_1/weight"], 2), np.split(v[f"{src}/linear_1/bias"], 2)
        w, b = [v[f"{src}/linear_0/weight"], *kv_w], [v[f"{src}/linear_0/bias"], *kv_b]
        out_proj = "linear_2"
    for i, proj in enumerate(("q_proj", "k_proj", "v_proj")):
        out[f"{dst}.{proj}.weight"] = w[i]
        if proj != "k_proj":  # Whisper's key projection has no bias (CTranslate2 holds zeros for it)
            out[f"{dst}.{proj}.bias"] = b[i]
    out[f"{dst}.out_proj.weight"] = v[f"{src}/{out_proj}/weight"]
    out[f"{dst}.out_proj.bias"] = v[f"{src}/{out_proj}/bias"]
    return out


def _norm(v: dict, src: str, dst: str) -> dict[str, np.ndarray]:
    return {f"{dst}.weight": v[f"{src}/gamma"], f"{dst}.bias": v[f"{src}/beta"]}


def _ffn(v: dict, src: str, dst: str) -> dict[str, np.ndarray]:
    return {f"{dst}.fc1.weight": v[f"{src}/linear_0/weight"], f"{dst}.fc1.bias": v[f"{src}/linear_0/bias"],
            f"{dst}.fc2.weight": v[f"{src}/linear_1/weight"], f"{dst}.fc2.bias": v[f"{src}/linear_1/bias"],
            **_norm(v, f"{src}/layer_norm", f"{dst}.final_layer_norm")}


def state_dict(v: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """transformers WhisperModel weights (names without the ``model.`` prefix) from CTranslate2 variables."""
    sd = {f"encoder.{c}.{p}": v[f"encoder/{c}/{p}"] for c in ("conv1", "conv2") for p in ("weight", "bias")}
    sd["encoder.embed_positions.weight"] = v["encoder/position_encodings/encodings"]
    sd.update(_norm(v, "encoder/layer_norm", "encoder.layer_norm"))
    for i in range(_count(v, "encoder")):
        src, dst = f"encoder/layer_{i}", f"encoder.layers.{i}"
        sd.update(_attention(v, f"{src}/self_attention", f"{dst}.self_attn", "qkv"))
        sd.update(_norm(v, f"{src}/self_attention/layer_norm", f"{dst}.self_attn_layer_norm"))
        sd.update(_ffn(v, f"{src}/ffn", dst))
    sd["decoder.embed_tokens.weight"] = v["decoder/embeddings/weight"]
    sd["decoder.embed_positions.weight"] = v["decoder/position_encodings/encodings"]
    sd.update(_norm(v, "decoder/layer_norm", "decoder.layer_norm"))
    for i in range(_count(v, "decoder")):
        src, dst = f"decoder/layer_{i}", f"decoder.layers.{i}"
        sd.update(_attention(v, f"{src}/self_attention", f"{dst}.self_attn", "qkv"))
        sd.update(_norm(v, f"{src}/self_attention/layer_norm", f"{dst}.self_attn_layer_norm"))
        sd.update(_attention(v, f"{src}/attention", f"{dst}.encoder_attn", "q+kv"))
        sd.update(_norm(v, f"{src}/attention/layer_norm", f"{dst}.encoder_attn_layer_norm"))
        sd.update(_ffn(v, f"{src}/ffn", dst))
    return sd


def config(v: dict[str, np.ndarray], tokens: dict[str, int]) -> dict:
    """WhisperConfig settings read off the variables' shapes and the tokenizer's special tokens."""
    d_model, mels = v["encoder/conv1/weight"].shape[:2]
    eos = tokens.get("<|endoftext|>", 50256)
    start = tokens.get("<|startoftranscript|>", eos + 1)
    return {"vocab_size": int(v["decoder/embeddings/weight"].shape[0]), "num_mel_bins": int(mels),
            "d_model": int(d_model), "encoder_layers": _count(v, "encoder"), "decoder_layers": _count(v, "decoder"),
            "encoder_attention_heads": int(v["encoder/num_heads"]), "decoder_attention_heads": int(v["decoder/num_heads"]),
            "encoder_ffn_dim": int(v["encoder/layer_0/ffn/linear_0/weight"].shape[0]),
            "decoder_ffn_dim": int(v["decoder/layer_0/ffn/linear_0/weight"].shape[0]),
            "max_source_positions": int(v["encoder/position_encodings/encodings"].shape[0]),
            "max_target_positions": int(v["decoder/position_encodings/encodings"].shape[0]),
            "bos_token_id": start, "decoder_start_token_id": start, "eos_token_id": eos, "pad_token_id": eos}


def write_folder(source: Path, folder: Path) -> None:
    """Convert ``source`` (a model.bin with tokenizer.json beside it) into a transformers Whisper folder."""
    import torch
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration

    spec, variables = read(source)
    if spec != "WhisperSpec":
        raise ValueError(f"{source}: a CTranslate2 {spec}, not a Whisper model")
    tokenizer = source.with_name("tokenizer.json")
    added = json.loads(tokenizer.read_text(encoding="utf-8")).get("added_tokens", []) if tokenizer.is_file() else []
    conf = WhisperConfig(**config(variables, {t["content"]: t["id"] for t in added}))
    model = WhisperForConditionalGeneration(conf)
    weights = {f"model.{k}": torch.from_numpy(np.ascontiguousarray(a)) for k, a in state_dict(variables).items()}
    weights["proj_out.weight"] = weights["model.decoder.embed_tokens.weight"]
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise ValueError(f"{source}: weights do not fit Whisper (missing {missing[:3]}, unexpected {unexpected[:3]})")
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    window = conf.max_source_positions * 2 * 160 // 16000  # 1500 positions: 3000 frames of 10 ms
    WhisperFeatureExtractor(feature_size=conf.num_mel_bins, chunk_length=window).save_pretrained(folder)
    if tokenizer.is_file():
        shutil.copyfile(tokenizer, folder / "tokenizer.json")

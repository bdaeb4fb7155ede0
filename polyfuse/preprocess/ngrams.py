"""Hashed n-gram features (fastText-style) for the ``ngram`` text encoder, in numpy.

A text becomes bucket ids: its token n-grams of order 1..``word_ngrams`` first (for the char
tokenizer these are character n-grams across the whole text), then the character n-grams of
each token with boundary marks (``<word>``, orders ``char_ngrams``). CRC-32 hashing is stable
across processes and machines, so training, the torch-free runtime and the server agree on
every id. Bucket 0 is padding; ids are 1..buckets-1.
"""
from __future__ import annotations

import math
import zlib
from typing import Any

import numpy as np

_CACHE_LIMIT = 200_000  # tokens whose char n-gram ids are remembered (text follows Zipf's law)
_char_cache: dict[tuple, tuple[int, ...]] = {}


def bucket(key: str, buckets: int) -> int:
    """The bucket (1..buckets-1) of one n-gram key."""
    return 1 + zlib.crc32(key.encode("utf-8", "surrogatepass")) % (buckets - 1)


def _char_ids(token: str, lo: int, hi: int, buckets: int) -> tuple[int, ...]:
    key = (token, lo, hi, buckets)
    got = _char_cache.get(key)
    if got is None:
        marked = f"<{token}>"
        grams = [marked[i : i + n] for n in range(lo, hi + 1) for i in range(len(marked) - n + 1)]
        got = tuple(bucket("c\x1f" + g, buckets) for g in grams if g not in ("<", ">") and g != marked)
        if len(_char_cache) >= _CACHE_LIMIT:
            _char_cache.clear()
        _char_cache[key] = got
    return got


def ids(tokens: list[str], cfg: Any) -> np.ndarray:
    """Bucket ids of one tokenised text, token n-grams first, at most ``cfg.max_ngrams``."""
    out: list[int] = []
    limit, buckets = cfg.max_ngrams, cfg.buckets
    for n in range(1, cfg.word_ngrams + 1):
        for i in range(len(tokens) - n + 1):
            out.append(bucket(f"w{n}\x1f" + "\x1f".join(tokens[i : i + n]), buckets))
        if len(out) >= limit:
            return np.asarray(out[:limit], dtype=np.int64)
    if cfg.char_ngrams and cfg.tokenizer != "char":  # a char token has no n-grams inside it
        lo, hi = cfg.char_ngrams
        for token in tokens:
            out.extend(_char_ids(token, lo, hi, buckets))
            if len(out) >= limit:
                break
    return np.asarray(out[:limit], dtype=np.int64)


def fit_idf(docs: list[np.ndarray], buckets: int) -> dict:
    """Smoothed inverse document frequency of the buckets seen in training (sklearn's formula:
    ln((1 + n) / (1 + df)) + 1); unseen buckets get the largest value."""
    n = len(docs)
    df = np.zeros(buckets, dtype=np.int64)
    for d in docs:
        df[np.unique(d)] += 1
    seen = np.flatnonzero(df)
    idf = np.log((1 + n) / (1 + df[seen])) + 1.0
    return {"docs": n, "idf_ids": seen.tolist(), "idf": np.round(idf, 5).tolist(),
            "idf_unseen": round(math.log(1 + n) + 1.0, 5)}


def idf_table(state: dict, buckets: int) -> np.ndarray:
    """The fitted IDF as a dense [buckets] float32 table (padding bucket 0 weighs 0)."""
    table = np.full(buckets, state.get("idf_unseen", 1.0), dtype=np.float32)
    table[np.asarray(state.get("idf_ids", []), dtype=np.int64)] = np.asarray(state.get("idf", []), dtype=np.float32)
    table[0] = 0.0
    return table

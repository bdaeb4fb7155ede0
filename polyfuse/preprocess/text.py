"""Text inputs: tokenisation (word, char or jieba), then either hashed n-grams (the ``ngram``
encoder) or ids from a fitted vocabulary with an unknown bucket (``cnn``, ``bigru``, ``bilstm``).

The char tokeniser needs no word boundaries, so it covers Chinese, Japanese, Thai and other
unsegmented scripts; ``jieba`` segments Chinese into words; ``word`` splits on Unicode word
characters and punctuation. N-gram hashing lives in :mod:`polyfuse.preprocess.ngrams`.
"""
from __future__ import annotations

import logging
import re
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from polyfuse.errors import BadInputError
from polyfuse.extras import require
from polyfuse.preprocess import ngrams
from polyfuse.privacy import pii

PAD, UNK = "<pad>", "<unk>"
_WORD = re.compile(r"\w+|[^\w\s]", re.UNICODE)
_jieba = None


def _segmenter() -> Any:
    global _jieba
    if _jieba is None:
        require("jieba", "`tokenizer: jieba`")
        import jieba

        jieba.setLogLevel(logging.WARNING)  # it logs its dictionary loading at INFO on every start
        _jieba = jieba
    return _jieba


def tokenize(text: str, tokenizer: str = "word", lowercase: bool = True) -> list[str]:
    """Split text into tokens: ``word`` (Unicode words + punctuation), ``char`` (every non-space
    character) or ``jieba`` (Chinese word segmentation; non-Chinese runs stay whole words)."""
    if lowercase:
        text = text.lower()
    if tokenizer == "char":
        return [c for c in text if not c.isspace()]
    if tokenizer == "jieba":
        return [t for t in _segmenter().lcut(text) if not t.isspace()]
    return _WORD.findall(text)


def decode(value: Any, cfg: Any, folder: Path, budget: Any = None) -> list[str]:
    """Tokenise one cell (after de-identification when the spec asks); numbers are accepted as
    text, other types are an error."""
    if isinstance(value, (int, float, np.integer, np.floating)):
        value = str(value)
    if not isinstance(value, str):
        raise BadInputError(f"expected text, got {type(value).__name__}")
    value = deidentify(value, cfg)
    return tokenize(value, cfg.tokenizer, cfg.lowercase)[: cfg.max_length]


# Characters per kept token before de-identification cuts a text: a word, sub-word or character token
# averages under 8 characters with its spaces in English and Chinese, so 32 leaves room for long words,
# links and runs of spaces; the cap bounds what one cell costs the rules (a 100 KB text is ~0.1 s at the
# slowest rule's 1 MB/s) whatever max_length a spec sets
CHARS_PER_TOKEN = 32
MAX_DEIDENTIFY_CHARS = 100_000


def deidentify_ceiling(max_length: int) -> int:
    """The characters of a text kept and de-identified for ``max_length`` tokens."""
    return min(max_length * CHARS_PER_TOKEN, MAX_DEIDENTIFY_CHARS)


def deidentify(value: str, cfg: Any) -> str:
    """``value`` de-identified when the spec asks (else unchanged), after it is cut to
    :func:`deidentify_ceiling` characters: the rules never read a longer text (a megabyte cell cannot
    hold the server), and what is cut is dropped, never passed on unredacted. Runs before anything
    else sees the text, so no later step can keep or log the raw value; the pretrained text decode
    (:mod:`polyfuse.preprocess.hf`) calls it too."""
    if not cfg.deidentify:
        return value
    return pii.redact_prefix(value, pii.entity_types(cfg.deidentify), deidentify_ceiling(cfg.max_length))


def fit(values: list[list[str] | None], cfg: Any) -> dict:
    """The ngram encoder's document frequencies, or a vocabulary: tokens seen at least
    ``min_count`` times, most frequent first, at most ``max_vocab``."""
    if cfg.encoder == "ngram":
        return ngrams.fit_idf([ngrams.ids(t, cfg) for t in values if t], cfg.buckets)
    counts = Counter(t for tokens in values if tokens is not None for t in tokens)
    kept = sorted((t for t, c in counts.items() if c >= cfg.min_count), key=lambda t: (-counts[t], t))
    return {"vocab": [PAD, UNK] + kept[: max(0, cfg.max_vocab - 2)]}


def encode(tokens: list[str], index: dict[str, int], max_length: int) -> np.ndarray:
    """Token ids, truncated to ``max_length`` (unknown tokens -> 1)."""
    return np.asarray([index.get(t, 1) for t in tokens[:max_length]], dtype=np.int64)


def collate(values: list[list[str] | None], cfg: Any, state: dict, train: bool, rng: np.random.Generator | None) -> dict[str, np.ndarray]:
    """Padded ids with a presence mask (empty text = missing): hashed n-gram ids [B, max_ngrams]
    for the ngram encoder, else vocabulary ids [B, max_length] with lengths."""
    if train and rng is not None:
        values = [augment(t, cfg.augment, rng) if t else t for t in values]
    if cfg.encoder == "ngram":
        x = np.zeros((len(values), cfg.max_ngrams), dtype=np.int64)
        for i, tokens in enumerate(values):
            if tokens:
                ids = ngrams.ids(tokens, cfg)
                x[i, : len(ids)] = ids
        return {"": x, "present": x[:, 0] > 0}
    index = state.get("_index")
    if index is None:  # built once per state; not saved (the vocab list is)
        index = state["_index"] = {t: i for i, t in enumerate(state["vocab"])}
    x = np.zeros((len(values), cfg.max_length), dtype=np.int64)
    length = np.zeros(len(values), dtype=np.int64)
    for i, tokens in enumerate(values):
        if tokens:
            ids = encode(tokens, index, cfg.max_length)
            x[i, : len(ids)] = ids
            length[i] = len(ids)
    return {"": x, "length": length, "present": length > 0}


def augment(tokens: list[str], aug: Any, rng: np.random.Generator) -> list[str]:
    """Training-time corruption so the model learns not to trust text blindly: drops and typos."""
    if aug.word_drop:
        kept = [t for t in tokens if rng.random() >= aug.word_drop]
        tokens = kept or tokens[:1]  # dropping every word would turn the input into 'missing'
    if aug.typo:
        alphabet = "abcdefghijklmnopqrstuvwxyz"
        out = []
        for t in tokens:
            if len(t) > 1 and rng.random() < aug.typo:
                k = int(rng.integers(len(t)))
                t = t[:k] + alphabet[int(rng.integers(26))] + t[k + 1 :]
            out.append(t)
        tokens = out
    return tokens


def augments(cfg: Any) -> bool:
    return bool(cfg.augment.word_drop or cfg.augment.typo)

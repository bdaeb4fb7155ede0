"""INTERIM (replaced by the full module from branch hf-preprocess): text through `tokenizers`."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from polyfuse.errors import BadInputError, SpecError
from polyfuse.privacy import pii

_TOKENIZERS: dict[int, Any] = {}


def processor(cfg: Any) -> dict:
    proc = cfg.encoder._processor
    if proc is None:
        raise SpecError("pretrained encoder's processor is not bound")
    return proc


def read_processor(kind: str, folder: Path, cfg: Any) -> dict:
    if kind != "text":
        raise SpecError("interim: text only")
    path = folder / "tokenizer.json"
    if not path.is_file():
        raise SpecError(f"{folder}: no tokenizer.json")
    return {"kind": "text", "tokenizer": path.read_text(), "max_length": cfg.max_length, "pad_id": 0}


def _tokenizer(proc: dict) -> Any:
    from tokenizers import Tokenizer

    tok = _TOKENIZERS.get(id(proc))
    if tok is None:
        tok = _TOKENIZERS[id(proc)] = Tokenizer.from_str(proc["tokenizer"])
        tok.enable_truncation(proc["max_length"])
        tok.no_padding()
    return tok


def decode(value: Any, cfg: Any, folder: Path, budget: Any = None) -> Any:
    if isinstance(value, (int, float, np.integer, np.floating)):
        value = str(value)
    if not isinstance(value, str):
        raise BadInputError(f"expected text, got {type(value).__name__}")
    if cfg.deidentify:
        value = pii.redact(value, pii.entity_types(cfg.deidentify))
    return value


def fit(values: list, cfg: Any) -> dict:
    return {"processor": processor(cfg)}


def collate(values: list, cfg: Any, state: dict, train: bool, rng: Any) -> dict[str, np.ndarray]:
    proc = processor(cfg)
    present = np.asarray([bool(v) for v in values])
    enc = _tokenizer(proc).encode_batch([v if v else "" for v in values])
    length = np.asarray([len(e.ids) if p else 0 for e, p in zip(enc, present)], dtype=np.int64)
    x = np.full((len(values), max(1, int(length.max(initial=1)))), proc["pad_id"], dtype=np.int64)
    for i, e in enumerate(enc):
        if present[i]:
            x[i, : len(e.ids)] = e.ids
    return {"": x, "length": length, "present": present}


def augments(cfg: Any) -> bool:
    return False

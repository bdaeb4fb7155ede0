"""Tiny random-weight transformers models saved with ``save_pretrained`` (2 layers, width 32):
the real loading code runs on them, offline, in a temp dir."""
from __future__ import annotations

from pathlib import Path

WORDS = ["the", "a", "small", "big", "cat", "dog", "owl", "##ish", "red", "green", "good", "bad", "movie", "film",
         "great", "awful", "not", "very", "is", "was", "ok", "fine", "##s", "好", "电", "影", "不", "错", ",", ".", "!"]
SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)


def tiny_bert(folder: Path, max_positions: int = 64) -> Path:
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    BertTokenizerFast(vocab_file=str(vocab), do_lower_case=True).save_pretrained(folder)
    config = BertConfig(vocab_size=len(WORDS) + 5, max_position_embeddings=max_positions, **SMALL)
    BertModel(config).save_pretrained(folder)
    return folder


def tiny_vit(folder: Path, size: int = 32) -> Path:
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    ViTModel(ViTConfig(image_size=size, patch_size=8, **SMALL)).save_pretrained(folder)
    ViTImageProcessor(size={"height": size, "width": size}).save_pretrained(folder)
    return folder

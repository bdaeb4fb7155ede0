"""Tiny random-weight transformers models saved with ``save_pretrained`` (2 layers, width 32):
the real loading code runs on them, offline, in a temp dir."""
from __future__ import annotations

from pathlib import Path

WORDS = ["the", "a", "small", "big", "cat", "dog", "owl", "##ish", "red", "green", "good", "bad", "movie", "film",
         "great", "awful", "not", "very", "is", "was", "ok", "fine", "##s", "好", "电", "影", "不", "错", ",", ".", "!"]
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)


def bert_tokenizer(folder: Path) -> None:
    from transformers import BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    # vocab= (a path): transformers 5 ignores vocab_file= and maps every word to [UNK]
    BertTokenizerFast(vocab=str(folder / "vocab.txt"), do_lower_case=True).save_pretrained(folder)


def tiny_bert(folder: Path, max_positions: int = 64) -> Path:
    from transformers import BertConfig, BertModel

    bert_tokenizer(folder)
    BertModel(BertConfig(vocab_size=len(VOCAB), max_position_embeddings=max_positions, **SMALL)).save_pretrained(folder)
    return folder


def tiny_vit(folder: Path, size: int = 32) -> Path:
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    ViTModel(ViTConfig(image_size=size, patch_size=8, **SMALL)).save_pretrained(folder)
    ViTImageProcessor(size={"height": size, "width": size}).save_pretrained(folder)
    return folder


def tiny_clip(folder: Path, size: int = 32) -> Path:
    """A CLIP model (vision + text towers), its image processor and a WordPiece tokenizer."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    text = dict(vocab_size=len(VOCAB), max_position_embeddings=32, eos_token_id=3, pad_token_id=0, bos_token_id=2, **SMALL)
    vision = dict(image_size=size, patch_size=8, **SMALL)
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size}).save_pretrained(folder)
    bert_tokenizer(folder)
    return folder


def tiny_wav2vec2(folder: Path) -> Path:
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model

    config = Wav2Vec2Config(conv_dim=(16, 16), conv_stride=(5, 4), conv_kernel=(10, 4), num_conv_pos_embeddings=8,
                            num_conv_pos_embedding_groups=2, feat_extract_norm="layer", do_stable_layer_norm=True,
                            **SMALL)
    Wav2Vec2Model(config).save_pretrained(folder)
    Wav2Vec2FeatureExtractor(sampling_rate=8000, return_attention_mask=True).save_pretrained(folder)
    return folder


def tiny_whisper(folder: Path) -> Path:
    """A Whisper model whose encoder reads 2 s windows (200 log-mel frames) of 16 kHz audio."""
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperModel

    config = WhisperConfig(d_model=32, encoder_layers=2, decoder_layers=1, encoder_attention_heads=2,
                           decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, num_mel_bins=16,
                           max_source_positions=100, max_target_positions=16, vocab_size=64,
                           pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=1)
    WhisperModel(config).save_pretrained(folder)
    WhisperFeatureExtractor(feature_size=16, chunk_length=2).save_pretrained(folder)
    return folder

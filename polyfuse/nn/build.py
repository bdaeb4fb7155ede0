"""The encoder each spec input asks for, sized from its fitted preprocessing state.

The one place that knows every encoder family (built-in, time series, video, pretrained); the
families themselves never import it, so they stay free of cycles.
"""
from __future__ import annotations

from typing import Any

from torch import nn

from polyfuse.nn import timeseries, video
from polyfuse.nn.encoders import (
    AudioCNN,
    CategoryEmbedding,
    ImageCNN,
    ImageResNet,
    NumberMLP,
    TextCNN,
    TextNgram,
    TextRNN,
)
from polyfuse.nn.hf import PretrainedEncoder, backbone_key, build_backbone
from polyfuse.nn.video_hf import PretrainedFrames
from polyfuse.preprocess.ngrams import idf_table
from polyfuse.spec.inputs import hf_encoder


def build_encoder(cfg: Any, state: dict, private: bool = False, backbones: dict | None = None) -> nn.Module:
    """The encoder a spec input asks for, sized from the fitted preprocessing state; ``private``: the
    variant DP-SGD can train (see :mod:`polyfuse.nn.encoders`); ``backbones``: frozen pretrained
    backbones already built for other inputs or networks, by :func:`polyfuse.nn.hf.backbone_key`."""
    if not isinstance(cfg.encoder, str):  # {hf: ...}: a pretrained backbone
        return _pretrained(cfg, state, {} if backbones is None else backbones)
    if cfg.type == "image":
        if cfg.encoder == "resnet":
            return ImageResNet(cfg.channels, cfg.dim, private)
        return ImageCNN(cfg.channels, cfg.dim, tuple(cfg.size), private)
    if cfg.type == "audio":
        return AudioCNN(len(state["mean"]), cfg.dim, lstm=cfg.encoder == "cnn_lstm", private=private)
    if cfg.type == "text":
        if cfg.encoder == "ngram":
            return TextNgram(cfg.buckets, cfg.dim, idf_table(state, cfg.buckets) if cfg.pooling == "tfidf" else None,
                             sparse=not private)
        vocab = len(state["vocab"])
        if cfg.encoder == "cnn":
            return TextCNN(vocab, cfg.dim, dropout=0.0 if private else 0.2)
        return TextRNN(vocab, cfg.dim, "gru" if cfg.encoder == "bigru" else "lstm")
    if cfg.type == "number":
        return NumberMLP(cfg.dim, linear=cfg.encoder == "linear")
    if cfg.type == "category":
        return CategoryEmbedding(len(state["vocab"]), cfg.dim)
    if cfg.type == "timeseries":
        return timeseries.build(cfg, state, private)
    if cfg.type == "video":
        return video.build(cfg, state, private)
    raise ValueError(f"no encoder for input type {cfg.type!r}")


def _pretrained(cfg: Any, state: dict, backbones: dict) -> nn.Module:
    """The encoder of an ``encoder: {hf: ...}`` input, from the config stored in its state; a frozen
    backbone built before for the same model is used again (one module for every input and network)."""
    enc = hf_encoder(cfg)
    key = backbone_key(cfg, state)
    backbone = backbones.get(key) if key is not None else None
    if backbone is None:
        backbone = build_backbone(state["backbone"], cfg.type)
        if key is not None:
            backbones[key] = backbone
    if cfg.type == "video":
        return PretrainedFrames(backbone, enc, cfg.dim)
    return PretrainedEncoder(backbone, cfg.type, enc, cfg.dim)

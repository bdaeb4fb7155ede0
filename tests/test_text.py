"""Text: tokenisers (word, char, jieba), hashed n-grams, the ngram/cnn encoders and their ONNX parity."""
import numpy as np
import pandas as pd
import pytest
import torch

import polyfuse
from polyfuse.deploy.exporter import export
from polyfuse.preprocess import ngrams, text
from polyfuse.runtime import Runtime
from polyfuse.spec.schema import load_spec


def _cfg(**fields):
    spec, _ = load_spec({"inputs": {"t": {"type": "text", **fields}}, "outputs": {"y": {"type": "category"}}})
    return spec.inputs["t"]


def test_tokenisers_word_char_jieba():
    assert text.tokenize("Hello, World!") == ["hello", ",", "world", "!"]
    assert text.tokenize("我爱北京 天安门", "char") == ["我", "爱", "北", "京", "天", "安", "门"]
    words = text.tokenize("我来到北京清华大学", "jieba")
    assert "".join(words) == "我来到北京清华大学"
    assert "清华大学" in words and 2 <= len(words) <= 5  # real segmentation, neither chars nor one run
    assert text.tokenize("OpenAI发布GPT模型 hello", "jieba")[-1] == "hello"  # Latin runs stay whole words


def test_decode_truncates_to_max_length():
    cfg = _cfg(max_length=3)
    assert text.decode("a b c d e", cfg, None) == ["a", "b", "c"]
    assert text.decode(42, cfg, None) == ["42"]


def test_ngram_ids_are_stable_ordered_and_bounded():
    cfg = _cfg(word_ngrams=2, char_ngrams=[2, 3], buckets=1 << 12, max_ngrams=64)
    ids = ngrams.ids(["new", "york"], cfg)
    # token unigrams, then the bigram, then char n-grams of <new> and <york>
    assert ids[0] == ngrams.bucket("w1\x1fnew", 1 << 12) and ids[2] == ngrams.bucket("w2\x1fnew\x1fyork", 1 << 12)
    assert len(ids) == 3 + (4 + 3) + (5 + 4)
    assert ids.min() >= 1 and ids.max() < 1 << 12
    # the same text hashes identically in another process (crc32, not Python's salted hash)
    import subprocess
    import sys

    code = ("from polyfuse.preprocess import ngrams; from polyfuse.spec.schema import load_spec; "
            "s,_=load_spec({'inputs':{'t':{'type':'text','char_ngrams':[2,3],'buckets':4096,'max_ngrams':64}},"
            "'outputs':{'y':{'type':'category'}}}); print(ngrams.ids(['new','york'], s.inputs['t']).tolist())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == str(ids.tolist())
    short = _cfg(max_ngrams=5)
    assert len(ngrams.ids(["a", "b", "c", "d"], short)) == 5  # unigrams + first bigram: token n-grams come first


def test_char_tokenizer_ngrams_are_char_ngrams_across_the_text():
    cfg = _cfg(tokenizer="char", word_ngrams=2, buckets=1 << 12)
    ids = ngrams.ids(text.decode("北京大学", cfg, None), cfg)
    assert len(ids) == 4 + 3  # char unigrams and bigrams only; no n-grams inside a one-char token


def test_collate_pads_marks_missing_and_fits_idf():
    cfg = _cfg(buckets=1 << 10, max_ngrams=16, char_ngrams=None)
    docs = [text.decode(s, cfg, None) for s in ["good film", "bad film", "film"]]
    state = text.fit(docs, cfg)
    table = ngrams.idf_table(state, cfg.buckets)
    film, good = ngrams.bucket("w1\x1ffilm", 1 << 10), ngrams.bucket("w1\x1fgood", 1 << 10)
    assert table[film] == pytest.approx(1.0) and table[good] == pytest.approx(np.log(4 / 2) + 1, rel=1e-4)
    assert table[0] == 0.0
    out = text.collate([docs[0], None, []], cfg, state, False, None)
    assert out[""].shape == (3, 16) and out["present"].tolist() == [True, False, False]
    assert (out[""][0] > 0).sum() == 3 and not out[""][1:].any()


def test_ngram_encoder_weights_by_idf_and_ignores_padding():
    from polyfuse.nn.encoders import TextNgram

    enc = TextNgram(16, 4, idf=np.arange(16, dtype=np.float32))
    x = torch.tensor([[3, 5, 0, 0], [3, 5, 0, 7]])
    with torch.no_grad():
        e = enc.embed.weight
        pooled = (3 * e[3] + 5 * e[5]) / 8
        enc.proj = torch.nn.Identity()
        out = enc(x)
    assert torch.allclose(out[0], pooled, atol=1e-6)
    assert not torch.allclose(out[1], pooled)  # a real n-gram changes it; padding (0) does not


def _keyword_table(n: int = 120, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    topics = {"sport": ["比赛", "球队", "冠军"], "money": ["股票", "银行", "市场"], "tech": ["手机", "芯片", "网络"]}
    filler = ["今天", "我们", "看到", "新闻", "消息", "关于"]
    rows = []
    for i in range(n):
        label = list(topics)[i % 3]
        words = list(rng.choice(filler, 3)) + [rng.choice(topics[label])] + list(rng.choice(filler, 2))
        rows.append({"headline": "".join(words), "label": label})
    return pd.DataFrame(rows)


@pytest.mark.parametrize("encoder,tokenizer", [("ngram", "char"), ("ngram", "jieba"), ("cnn", "char")])
def test_text_model_learns_chinese_and_onnx_matches_preprocessing(encoder, tokenizer, tmp_path):
    frame = _keyword_table()
    frame.iloc[:96].to_csv(tmp_path / "train.csv", index=False)
    frame.iloc[96:].to_csv(tmp_path / "test.csv", index=False)
    spec = {"data": {"train": "train.csv", "test": "test.csv", "split": {"valid": 0.2, "seed": 0}},
            "inputs": {"headline": {"type": "text", "tokenizer": tokenizer, "encoder": encoder, "max_length": 32,
                                    "buckets": 4096, "max_ngrams": 128, "dim": 32}},
            "fusion": {"dim": 32}, "outputs": {"label": {"type": "category"}},
            "train": {"epochs": 15, "batch_size": 16, "lr": 5e-3, "threads": 1}}
    (tmp_path / "spec.yaml").write_text(__import__("yaml").safe_dump(spec))
    out = tmp_path / "m"
    model = polyfuse.train(tmp_path / "spec.yaml", out=out, show_progress=False)
    assert model.metrics["test"]["outputs"]["label"]["accuracy"] >= 0.9
    export(out)
    records = frame.iloc[96:][["headline"]].to_dict("records") + [{"headline": "从未见过的词语"}]
    ref = polyfuse.load(out).predict_proba(records).to_numpy()
    got = Runtime(out).predict_proba(records)["label"]
    assert np.abs(ref - got).max() <= 1e-4

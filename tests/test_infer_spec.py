"""`polyfuse init` reads the data: scripts and lengths of text, image sizes and modes, audio durations,
dtypes and cardinality, the target's classes; bad input gets a clear message. Tables are generated."""
from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from polyfuse.autospec.infer import infer, nice_ceil
from polyfuse.autospec.profile import scripts
from polyfuse.autospec.spec_yaml import init_yaml
from polyfuse.data.io import read_table
from polyfuse.errors import BadInputError, SpecError
from polyfuse.preprocess.audio_file import write_wav
from polyfuse.spec.schema import load_spec

ZHTEXT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "zhtext" / "train.csv"
EN = ["the", "market", "opened", "higher", "after", "a", "quiet", "week", "for", "local", "traders", "and", "banks"]
ZH = list("经济市场今天上涨银行股票公司发布新产品体育比赛足球冠军国家政府会议教育学校学生")
JA = ["今日は", "東京で", "雨が", "降りました", "新しい", "映画を", "見ました", "とても", "面白かった", "です"]
TH = ["วันนี้", "ตลาด", "หุ้น", "ปรับตัว", "ขึ้น", "ธนาคาร", "ประกาศ", "ผล", "กำไร", "ใหม่"]
RU = ["сегодня", "рынок", "вырос", "после", "тихой", "недели", "банки", "объявили", "прибыль"]
EL = ["σήμερα", "η", "αγορά", "ανέβηκε", "μετά", "από", "μια", "ήσυχη", "εβδομάδα"]
LANGS = {"en": (EN, " "), "zh": (ZH, ""), "ja": (JA, ""), "th": (TH, ""), "ru": (RU, " "), "el": (EL, " ")}


def sentences(lang: str, n: int, lo: int = 3, hi: int = 12, seed: int = 0) -> list[str]:
    words, sep = LANGS[lang]
    rng = np.random.default_rng(seed)
    return [sep.join(rng.choice(words, int(rng.integers(lo, hi)))) for _ in range(n)]


def write(folder: Path, frame: pd.DataFrame, name: str = "train.csv") -> Path:
    path = folder / name
    frame.to_csv(path, index=False)
    return path


def init(path: Path, target: str | None = None) -> tuple[dict, str]:
    """The YAML init prints, loaded and validated the way `polyfuse train` will."""
    text = init_yaml(path, target=target)
    spec = yaml.safe_load(text)
    load_spec(spec)
    return spec, text


def line_of(text: str, key: str, after: str = "") -> str:
    """The YAML line of ``key`` (the first after the line containing ``after``)."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if after in line) if after else 0
    return next(line for line in lines[start:] if line.strip().startswith(key + ":"))


def labels(n: int, classes: int = 3) -> list[str]:
    return [f"c{i % classes}" for i in range(n)]


# ----------------------------------------------------------------------------- text
@pytest.mark.parametrize("lang,unsegmented,name", [
    ("en", False, "Latin"), ("zh", True, "Han"), ("ja", True, "kana"), ("th", True, "Thai"),
    ("ru", False, "Cyrillic"), ("el", False, "Greek")])
def test_script_detection(lang, unsegmented, name):
    seen = scripts(sentences(lang, 50))
    assert (seen.unsegmented_texts >= 0.5) is unsegmented
    assert name in seen.shares()
    assert ("Japanese" in seen.language()) is (lang == "ja")
    assert ("Chinese" in seen.language()) is (lang == "zh")


@pytest.mark.parametrize("lang,tokenizer", [("en", "word"), ("zh", "char"), ("ja", "char"), ("th", "char"),
                                            ("ru", "word"), ("el", "word")])
def test_text_tokenizer_and_lengths_from_the_data(tmp_path, lang, tokenizer):
    texts = sentences(lang, 120)
    spec, text = init(write(tmp_path, pd.DataFrame({"body": texts, "label": labels(120)})))
    entry = spec["inputs"]["body"]
    assert entry["tokenizer"] == tokenizer and entry["encoder"] == "ngram"
    from polyfuse.preprocess.text import tokenize

    p95 = np.percentile([len(tokenize(t, tokenizer)) for t in texts], 95)
    assert entry["max_length"] == nice_ceil(p95, 8, 512) and entry["max_length"] >= p95
    assert f"p95 {p95:.0f}" in line_of(text, "max_length")
    assert entry["char_ngrams"] == (None if tokenizer == "char" else [1, 4])
    assert entry["max_ngrams"] >= 2 * p95  # token 1-2-grams fit
    why = line_of(text, "tokenizer")
    if tokenizer == "char":
        assert "no spaces between words" in why and "100% of 120 sampled texts" in why
    else:
        assert "space-delimited" in why


def test_long_text_gets_the_cnn_only_with_enough_rows_per_class(tmp_path):
    texts = sentences("en", 40, lo=400, hi=900)
    spec, text = init(write(tmp_path, pd.DataFrame({"doc": texts, "label": labels(40)})))
    entry = spec["inputs"]["doc"]  # ~13 rows a class: the n-gram bag
    assert entry["encoder"] == "ngram" and entry["max_length"] == 512 and "max_ngrams" in entry
    assert "rows per class" in line_of(text, "encoder") and "cut at 512" in line_of(text, "max_length")
    texts = sentences("en", 1000, lo=320, hi=400)
    frame = pd.DataFrame({"doc": texts, "score": np.random.default_rng(0).normal(size=1000)})
    spec, text = init(write(tmp_path, frame))
    entry = spec["inputs"]["doc"]  # a regression target learns from every row
    assert entry["encoder"] == "cnn" and "max_ngrams" not in entry and "long text" in line_of(text, "encoder")


def test_header_counts_rows_and_describes_columns(tmp_path):
    frame = pd.DataFrame({"body": sentences("zh", 60), "label": labels(60)})
    _, text = init(write(tmp_path, frame))
    head = [line for line in text.splitlines() if line.startswith("#")]
    assert "60 rows x 2 columns" in head[1]
    assert any("body: text, 0 missing" in line and "Han" in line and "p95" in line for line in head)


# ----------------------------------------------------------------------------- images and audio
def test_image_size_and_channels_from_a_sample_of_files(tmp_path):
    (tmp_path / "img").mkdir()
    rows = []
    for i in range(30):
        h, w = (120, 200) if i % 2 else (100, 160)
        mode = "L" if i % 3 == 0 else "RGB"
        Image.new(mode, (w, h)).save(tmp_path / "img" / f"{i}.png")
        rows.append({"photo": f"img/{i}.png", "label": labels(30)[i]})
    spec, text = init(write(tmp_path, pd.DataFrame(rows)))
    entry = spec["inputs"]["photo"]
    assert entry["channels"] == 3 and max(entry["size"]) == 64 and entry["size"][0] < entry["size"][1]
    assert "RGB 20, L 10" in line_of(text, "channels")
    assert "capped at 64" in line_of(text, "size") and "widths 160-200" in line_of(text, "size")


def test_small_greyscale_images_keep_their_size_and_one_channel(tmp_path):
    (tmp_path / "img").mkdir()
    for i in range(12):
        Image.new("L", (20, 24)).save(tmp_path / "img" / f"{i}.png")
    frame = pd.DataFrame({"digit": [f"img/{i}.png" for i in range(12)], "label": labels(12)})
    spec, text = init(write(tmp_path, frame))
    assert spec["inputs"]["digit"]["size"] == [24, 20] and spec["inputs"]["digit"]["channels"] == 1
    assert "all 24x20" in line_of(text, "size") and "all greyscale" in line_of(text, "channels")


def _wavs(folder: Path, seconds: list[float], rates: list[int]) -> list[str]:
    (folder / "wav").mkdir()
    names = []
    for i, (s, sr) in enumerate(zip(seconds, rates)):
        write_wav(folder / "wav" / f"{i}.wav", np.zeros(int(s * sr), dtype=np.float32), sr)
        names.append(f"wav/{i}.wav")
    return names


def test_audio_max_seconds_from_p95_duration_low_rate_resampled_and_augmented(tmp_path):
    seconds = list(np.linspace(0.5, 1.5, 21))
    names = _wavs(tmp_path, seconds, [8000] * 21)
    spec, text = init(write(tmp_path, pd.DataFrame({"clip": names, "label": labels(21)})))
    entry = spec["inputs"]["clip"]
    p95 = np.percentile(seconds, 95)
    assert entry["sample_rate"] == 16000 and p95 <= entry["max_seconds"] <= p95 + 0.1
    assert f"p95 {p95:.2f} s" in line_of(text, "max_seconds") and "8000 Hz x21" in line_of(text, "sample_rate")
    assert entry["augment"] == {"speed": [0.9, 1.1], "random_crop": True}


def test_audio_at_mixed_rates_is_resampled_to_16k(tmp_path):
    names = _wavs(tmp_path, [1.0] * 6, [8000, 22050] * 3)
    spec, _ = init(write(tmp_path, pd.DataFrame({"clip": names, "label": labels(6)})))
    assert spec["inputs"]["clip"]["sample_rate"] == 16000


# ----------------------------------------------------------------------------- numbers, categories, ids
def test_ids_dropped_booleans_and_integer_floats_are_categories(tmp_path):
    n = 60
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({
        "row": range(n),  # 0..n-1: a row id whatever its name
        "ref": [f"u{1000 + 7 * i}" for i in range(n)],  # unique single-token strings
        "flag": [bool(i % 2) for i in range(n)],
        "stars": [float(i % 5 + 1) if i % 9 else np.nan for i in range(n)],  # floats because of NaN
        "price": rng.normal(10, 2, n),
        "label": labels(n),
    })
    spec, text = init(write(tmp_path, frame))
    assert set(spec["inputs"]) == {"flag", "stars", "price"}
    assert spec["inputs"]["flag"]["type"] == "category" and spec["inputs"]["stars"]["type"] == "category"
    assert spec["inputs"]["price"]["type"] == "number"
    assert "# 'row' dropped: unique integers 0..59" in text and "# 'ref' dropped: 60 unique single-token" in text


def test_target_option_name_heuristic_and_last_column(tmp_path):
    frame = pd.DataFrame({"body": sentences("en", 30), "topic": labels(30, 3), "mood": labels(30, 2)})
    path = write(tmp_path, frame)
    assert list(init(path)[0]["outputs"]) == ["mood"]  # no column named label: the last one
    spec, text = init(path, target="topic")
    assert spec["outputs"] == {"topic": {"type": "category"}} and "mood" in spec["inputs"]
    assert "chosen with --target" in line_of(text, "type", after="outputs:")
    frame["label"] = labels(30, 2)
    assert init(write(tmp_path, frame))[0]["outputs"] == {"label": {"type": "binary"}}
    with pytest.raises(SpecError, match="'nope'"):
        infer(path, target="nope")


def test_imbalanced_classes_get_balanced_weights_only_for_a_macro_metric(tmp_path):
    """Weights move the threshold off the majority: they serve macro-F1 and cost accuracy, so they
    come only when the user asks for the macro metric; the comment says so either way."""
    classes = ["a"] * 80 + ["b"] * 15 + ["c"] * 5
    frame = pd.DataFrame({"body": sentences("en", 100), "label": classes})
    path = write(tmp_path, frame)
    spec, text = init(path)
    assert "class_weights" not in spec["outputs"]["label"]
    assert "16.0x" in line_of(text, "type", after="outputs:") and "--metric f1_macro" in text
    spec = yaml.safe_load(init_yaml(path, metric="f1_macro"))
    assert spec["outputs"]["label"]["class_weights"] == "balanced"
    frame["label"] = labels(100, 4)  # balanced: no weights either way
    assert "class_weights" not in yaml.safe_load(init_yaml(write(tmp_path, frame), metric="f1_macro"))["outputs"]["label"]


def test_group_column_and_sibling_test_table(tmp_path):
    frame = pd.DataFrame({"body": sentences("en", 40), "speaker": [f"s{i % 4}" for i in range(40)],
                          "label": labels(40)})
    path = write(tmp_path, frame)
    write(tmp_path, frame.head(10), "test.csv")
    spec, _ = init(path)
    assert spec["data"]["split"]["group_by"] == "speaker" and "speaker" not in spec["inputs"]
    assert spec["data"]["test"] == str(tmp_path / "test.csv")
    assert "valid" not in spec["data"] and spec["data"]["split"]["valid"] == 0.1
    write(tmp_path, frame.tail(10), "val.csv")  # a validation table beside it replaces the random share
    spec, text = init(path)
    assert spec["data"]["valid"] == str(tmp_path / "val.csv") and "valid" not in spec["data"]["split"]
    assert "found beside the training table" in line_of(text, "valid", after="data:")


def test_timestamps_are_dropped_and_json_arrays_are_time_series(tmp_path):
    times = pd.date_range("2021-03-01", periods=60, freq="h").astype(str)
    series = [json.dumps([[i + k, None if k == 1 else 0.5 * k] for k in range(12 + i % 3)]) for i in range(60)]
    frame = pd.DataFrame({"when": times, "recent": series, "body": sentences("en", 60), "label": labels(60)})
    spec, text = init(write(tmp_path, frame))
    assert "when" not in spec["inputs"] and "'when' dropped: dates/times such as '2021-03-01 00:00:00'" in text
    recent = spec["inputs"]["recent"]
    assert recent["type"] == "timeseries" and recent["channels"] == 2 and recent["length"] == 16
    frame["recent"] = ["[not json" if i % 2 else s for i, s in enumerate(series)]  # half broken: text, not series
    assert init(write(tmp_path, frame))[0]["inputs"]["recent"]["type"] == "text"


# ----------------------------------------------------------------------------- bad input
def test_empty_text_column_is_dropped_with_a_comment(tmp_path):
    frame = pd.DataFrame({"body": sentences("en", 20), "notes": [""] * 20, "label": labels(20)})
    spec, text = init(write(tmp_path, frame))
    assert "notes" not in spec["inputs"] and "# 'notes' dropped: all 20 cells empty" in text


def test_column_mixing_paths_and_text_is_an_error_naming_both(tmp_path):
    (tmp_path / "a.png").write_bytes(b"")
    cells = ["a.png" if i % 2 else f"a caption number {i}" for i in range(20)]
    path = write(tmp_path, pd.DataFrame({"media": cells, "label": labels(20)}))
    with pytest.raises(BadInputError, match="column 'media'") as err:
        infer(path)
    assert "10 image" in str(err.value) and "'a.png'" in str(err.value) and "10 free text" in str(err.value)
    assert "'a caption number 0'" in str(err.value)


def test_missing_image_files_are_an_error_naming_the_column(tmp_path):
    path = write(tmp_path, pd.DataFrame({"photo": [f"gone/{i}.jpg" for i in range(5)], "label": labels(5)}))
    with pytest.raises(BadInputError, match="column 'photo': none of the 5 sampled files could be opened"):
        infer(path)


def test_one_class_target_is_an_error(tmp_path):
    path = write(tmp_path, pd.DataFrame({"body": sentences("en", 10), "label": ["spam"] * 10}))
    with pytest.raises(SpecError, match="target column 'label' has one class \\('spam'\\)"):
        infer(path)


def test_class_with_one_row_is_warned_in_a_comment(tmp_path):
    frame = pd.DataFrame({"body": sentences("en", 31), "label": labels(30) + ["rare"]})
    _, text = init(write(tmp_path, frame))
    assert "WARNING: 1 classes have a single row (e.g. 'rare')" in line_of(text, "type", after="outputs:")


def test_gb18030_csv_is_read_and_the_encoding_named(tmp_path):
    frame = pd.DataFrame({"body": sentences("zh", 80, lo=8, hi=20), "label": labels(80)})
    path = tmp_path / "train.csv"
    path.write_bytes(frame.to_csv(index=False).encode("gb18030"))
    with pytest.warns(UnicodeWarning, match="gb18030"):
        table = read_table(path)
    assert table.columns["body"] == frame["body"].tolist()
    spec, text = init(path)
    assert spec["inputs"]["body"]["tokenizer"] == "char"
    assert "# encoding: table 'train.csv' is not UTF-8: read it as gb18030" in text


def test_utf8_table_reads_without_warning(tmp_path):
    path = write(tmp_path, pd.DataFrame({"body": sentences("zh", 5), "label": labels(5)}))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read_table(path)


# ----------------------------------------------------------------------------- the command and real data
def test_cli_writes_commented_yaml_that_validates(tmp_path):
    frame = pd.DataFrame({"Body Text": sentences("ru", 30), "topic": labels(30), "other": labels(30, 2)})
    path = write(tmp_path, frame)
    done = subprocess.run([sys.executable, "-m", "polyfuse", "init", str(path), "--target", "topic"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    spec = yaml.safe_load(done.stdout)
    load_spec(spec)
    assert spec["inputs"]["Body_Text"]["column"] == "Body Text" and spec["outputs"] == {"topic": {"type": "category"}}
    assert done.stdout.startswith("# polyfuse init") and "Cyrillic" in done.stdout
    done = subprocess.run([sys.executable, "-m", "polyfuse", "init", str(path), "--target", "nope"],
                          capture_output=True, text=True)
    assert done.returncode == 2 and "--target 'nope'" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.skipif(not ZHTEXT.is_file(), reason="../shared/data/zhtext is not present")
def test_chinese_news_headlines():
    spec, text = init(ZHTEXT)
    entry = spec["inputs"]["text"]
    assert entry["tokenizer"] == "char" and 16 <= entry["max_length"] <= 128
    assert "Chinese" in line_of(text, "tokenizer")


def test_regression_and_multilabel_targets(tmp_path):
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"body": sentences("en", 40), "price": rng.normal(100, 20, 40)})
    spec, text = init(write(tmp_path, frame))
    assert spec["outputs"] == {"price": {"type": "number"}} and "regression" in text
    frame = pd.DataFrame({"body": sentences("en", 40), "tags": ["a|b", "b", "c|a", "a"] * 10})
    spec, _ = init(write(tmp_path, frame))
    assert spec["outputs"]["tags"] == {"type": "multilabel", "separator": "|"}


def test_numbers_written_with_placeholders_are_numbers_with_a_warning(tmp_path):
    cells = [str(i * 1.5) for i in range(38)] + ["?", "?"]
    spec, text = init(write(tmp_path, pd.DataFrame({"dose": cells, "label": labels(40)})))
    assert spec["inputs"]["dose"] == {"type": "number"}
    assert "['?'] are not and will be bad rows" in line_of(text, "type")


def test_image_bytes_in_parquet(tmp_path):
    import io

    blobs = []
    for i in range(8):
        buf = io.BytesIO()
        Image.new("RGB", (40, 30), color=(i, 0, 0)).save(buf, format="PNG")
        blobs.append(buf.getvalue())
    path = tmp_path / "train.parquet"
    pd.DataFrame({"photo": blobs, "label": labels(8)}).to_parquet(path)
    spec, text = init(path)
    assert spec["inputs"]["photo"] == {"type": "image", "size": [32, 40], "channels": 3, "encoder": "cnn"}


@pytest.mark.parametrize("tokens", [["a"], ["the", "market"], ["internationalisation", "x", "of"], []])
def test_ngram_count_matches_the_ngram_encoder(tokens):
    from types import SimpleNamespace

    from polyfuse.autospec.infer import ngram_count
    from polyfuse.preprocess import ngrams

    cfg = SimpleNamespace(max_ngrams=10**6, buckets=1 << 16, word_ngrams=2, char_ngrams=(1, 4), tokenizer="word")
    assert ngram_count(tokens, 2, (1, 4)) == len(ngrams.ids(tokens, cfg))
    cfg.char_ngrams = (2, 3)
    assert ngram_count(tokens, 2, (2, 3)) == len(ngrams.ids(tokens, cfg))


def test_guessed_target_that_is_free_text_is_refused(tmp_path):
    frame = pd.DataFrame({"mood": labels(120), "body": [f"{t} {i}" for i, t in enumerate(sentences("en", 120))]})
    with pytest.raises(SpecError, match="'body' .*does not look like a label; pass --target COLUMN"):
        infer(write(tmp_path, frame))


def test_the_majority_decides_a_columns_kind_and_odd_cells_are_named(tmp_path):
    """One title in a real product table read `..._Size_Chart.jpg` (no such file); it once made init
    refuse the whole column. Nearly all cells decide; the odd ones are named in the comment."""
    titles = sentences("en", 40)
    titles[7] = "Womens_Dress_Size_Chart.jpg"
    spec, text = init(write(tmp_path, pd.DataFrame({"title": titles, "label": labels(40)})))
    assert spec["inputs"]["title"]["type"] == "text"
    assert "1 of 40 sampled cells look like file names (e.g. 'Womens_Dress_Size_Chart.jpg')" in text
    Image.new("L", (8, 8)).save(tmp_path / "a.png")
    photos = ["a.png"] * 39 + ["no photo today"]
    spec, text = init(write(tmp_path, pd.DataFrame({"photo": photos, "label": labels(40)})))
    assert spec["inputs"]["photo"]["type"] == "image"
    assert "1 of 40 sampled files could not be opened (e.g. no photo today" in text and "bad rows" in text


def test_a_repeated_numeric_id_is_a_category_not_a_number(tmp_path):
    """A product id with many values repeated over rows once became `type: number`."""
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"Clothing ID": rng.integers(1000, 2200, 300), "age": rng.integers(18, 80, 300),
                          "label": labels(300)})
    spec, text = init(write(tmp_path, frame))
    assert spec["inputs"]["Clothing_ID"]["type"] == "category" and "an identifier by its name" in text
    assert spec["inputs"]["age"]["type"] == "number"


def test_presets_choose_the_ensemble(tmp_path):
    """--preset fast: the network alone; medium (default): with linear members; best: three networks and
    a time limit; each with its comment."""
    table = tmp_path / "t.csv"
    pd.DataFrame({"note": [f"word{i % 7} text {i}" for i in range(120)], "x": np.arange(120) % 5,
                  "label": ["a", "b", "c"] * 40}).to_csv(table, index=False)
    fast, medium, best = (init_yaml(table, target="label", preset=p) for p in ("fast", "medium", "best"))
    assert yaml.safe_load(fast)["train"]["ensemble"] == "off" and "preset fast" in fast
    assert yaml.safe_load(medium)["train"]["ensemble"] == "auto" and "preset medium" in medium
    assert init_yaml(table, target="label") == medium
    train = yaml.safe_load(best)["train"]
    assert train["ensemble"] == "auto" and train["networks"] == 3 and train["time_limit"] > 0


@pytest.fixture()
def zoo_installed(tmp_path, monkeypatch):
    """multilingual-e5-small listed as installed (a stand-in package holding a tiny packed e5)."""
    from polyfuse.zoo import catalog
    from tests import zoo_files

    package = tmp_path / "site" / "stand_in_e5"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    zoo_files.write_e5(package / "e5.bin")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    real = catalog.ENTRIES["multilingual-e5-small"]
    monkeypatch.setitem(catalog.ENTRIES, real.name, catalog.Entry(**{**real.__dict__, "module": "stand_in_e5",
                                                                     "file": "e5.bin"}))


def test_a_text_column_gets_a_zoo_encoder_beside_its_ngrams_as_the_preset_allows(tmp_path, zoo_installed,
                                                                                  monkeypatch):
    from polyfuse.autospec import pretrained

    table = tmp_path / "t.csv"
    pd.DataFrame({"note": [f"word{i % 7} text {i}" for i in range(120)], "label": ["a", "b", "c"] * 40}).to_csv(
        table, index=False)
    medium = init_yaml(table, target="label")
    extra = yaml.safe_load(medium)["inputs"]["note_pretrained"]
    assert extra == {"type": "text", "column": "note", "max_length": extra["max_length"],
                     "encoder": {"pretrained": "multilingual-e5-small"}} and 8 <= extra["max_length"] <= 512
    assert "beside the n-gram input" in medium and yaml.safe_load(medium)["inputs"]["note"]["encoder"] == "ngram"
    assert "note_pretrained" not in yaml.safe_load(init_yaml(table, target="label", preset="fast"))["inputs"]
    monkeypatch.setattr(pretrained, "MEDIUM_EMBED_S", 0.01)  # a table too large to embed in medium's allowance
    slow = init_yaml(table, target="label")
    assert "note_pretrained" not in yaml.safe_load(slow)["inputs"] and "--preset best takes it" in slow
    assert "note_pretrained" in yaml.safe_load(init_yaml(table, target="label", preset="best"))["inputs"]
    load_spec(yaml.safe_load(medium) | {"data": {"train": str(table)}})


def test_without_a_zoo_package_the_comment_says_how_to_add_one(tmp_path, monkeypatch):
    from polyfuse.zoo import catalog

    for name, real in list(catalog.ENTRIES.items()):
        monkeypatch.setitem(catalog.ENTRIES, name, catalog.Entry(**{**real.__dict__, "module": "not_installed_pkg"}))
    table = tmp_path / "t.csv"
    pd.DataFrame({"note": [f"word{i % 7} text {i}" for i in range(60)], "label": ["a", "b"] * 30}).to_csv(
        table, index=False)
    text = init_yaml(table, target="label")
    assert "note_pretrained" not in yaml.safe_load(text)["inputs"] and "pip install 'polyfuse[zoo]'" in text


@pytest.fixture()
def image_zoo_installed(tmp_path, monkeypatch):
    """efficientnet-lite0 listed as installed (init only checks that its file is there; nothing is loaded)."""
    from polyfuse.zoo import catalog

    package = tmp_path / "site" / "stand_in_effnet"
    (package / "models").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "models" / "lite.pth").write_bytes(b"weights")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    real = catalog.ENTRIES["efficientnet-lite0"]
    monkeypatch.setitem(catalog.ENTRIES, real.name, catalog.Entry(**{**real.__dict__, "module": "stand_in_effnet",
                                                                     "file": "models/lite.pth"}))


def _image_table(folder, side: int, rows: int = 40):
    rng = np.random.default_rng(0)
    (folder / "img").mkdir(exist_ok=True)
    for i in range(rows):
        Image.fromarray(rng.integers(0, 255, (side, side, 3), dtype=np.uint8)).save(folder / "img" / f"{i}.png")
    table = folder / f"photos{side}.csv"
    pd.DataFrame({"note": [f"word{i % 7} text {i}" for i in range(rows)], "photo": [f"img/{i}.png" for i in range(rows)],
                  "label": ["a", "b"] * (rows // 2)}).to_csv(table, index=False)
    return table


def test_an_image_column_gets_the_zoo_backbone_beside_its_cnn_as_the_preset_allows(tmp_path, zoo_installed,
                                                                                   image_zoo_installed, monkeypatch):
    from polyfuse.autospec import pretrained

    photos = _image_table(tmp_path, 48)
    medium = init_yaml(photos, target="label")
    inputs = yaml.safe_load(medium)["inputs"]
    assert inputs["photo_pretrained"] == {"type": "image", "column": "photo",
                                          "encoder": {"pretrained": "efficientnet-lite0"}}
    assert inputs["photo"]["encoder"] == "cnn" and "beside the from-scratch CNN" in medium
    assert "photo_pretrained" not in yaml.safe_load(init_yaml(photos, target="label", preset="fast"))["inputs"]
    # medium's allowance is for all columns together: the text column before the photos spent it
    text_s = pretrained.embed_seconds(40, 10)
    monkeypatch.setattr(pretrained, "MEDIUM_EMBED_S", text_s + pretrained.image_embed_seconds(40) / 2)
    shared = init_yaml(photos, target="label")
    assert "note_pretrained" in yaml.safe_load(shared)["inputs"]
    assert "photo_pretrained" not in yaml.safe_load(shared)["inputs"] and "for the columns before" in shared


def test_the_image_estimate_counts_on_the_onnx_pass_from_its_threshold():
    from polyfuse.autospec import pretrained
    from polyfuse.spec.inputs import ONNX_FP32_MIN_IMAGES as n

    below, at = pretrained.image_embed_seconds(n - 1), pretrained.image_embed_seconds(n)
    assert below == (n - 1) * pretrained.IMAGE_S  # torch's pass
    assert at < below and abs(below / at - pretrained.ONNX_IMAGE_SPEEDUP) < 0.01  # the fp32 graph's


def test_tiny_images_keep_the_cnn_alone_unless_the_preset_is_best(tmp_path, image_zoo_installed):
    glyphs = _image_table(tmp_path, 16)
    medium = init_yaml(glyphs, target="label")
    assert "photo_pretrained" not in yaml.safe_load(medium)["inputs"] and "far smaller than the photos" in medium
    assert "photo_pretrained" in yaml.safe_load(init_yaml(glyphs, target="label", preset="best"))["inputs"]

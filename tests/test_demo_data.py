"""Tests for polyfuse.data.demo: content, determinism and the build cache."""
from __future__ import annotations

import csv
import hashlib
import json
import os
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile
from PIL import Image

from polyfuse.data.demo import (
    DEMO_SPEC,
    IMAGE_SIZE,
    SAMPLE_RATE,
    VOICES,
    WORDS,
    _speech_bank,
    build_demo_dataset,
)

COLUMNS = ["id", "image", "audio", "transcript", "label"]


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == COLUMNS
        return list(reader)


def digests(root: Path) -> dict[str, str]:
    """sha256 of every file under root, keyed by relative path."""
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("demo_a")
    assert build_demo_dataset(root, seed=3, n=60) == root / "demo.csv"
    return root


def test_csvs_columns_and_split(built):
    train, test = read_rows(built / "demo.csv"), read_rows(built / "test.csv")
    assert len(train) + len(test) == 60
    assert 8 <= len(test) <= 12  # ~15-20 % held out
    ids = [int(r["id"]) for r in train + test]
    assert sorted(ids) == list(range(60))
    for r in train + test:
        assert r["image"] == f"images/{int(r['id']):05d}.png"
        assert r["audio"] == f"audio/{int(r['id']):05d}.wav"
        assert r["label"] in WORDS
    counts = Counter(r["label"] for r in train + test)
    assert set(counts) == set(WORDS) and min(counts.values()) >= 5 and max(counts.values()) <= 7
    # the transcript is informative but unreliable
    right = sum(r["transcript"] == r["label"] for r in train + test)
    assert 10 <= right <= 50
    assert set(os.listdir(built)) == {"demo.csv", "test.csv", "images", "audio", "BUILD.json"}


def test_files_decode_with_expected_shapes(built):
    rows = read_rows(built / "demo.csv") + read_rows(built / "test.csv")
    assert len(os.listdir(built / "images")) == len(os.listdir(built / "audio")) == 60
    for r in rows:
        with Image.open(built / r["image"]) as im:
            assert im.mode == "L" and im.size == (IMAGE_SIZE, IMAGE_SIZE)
            assert np.asarray(im).std() > 5  # not blank
        info = soundfile.info(built / r["audio"])
        assert (info.samplerate, info.channels, info.subtype) == (SAMPLE_RATE, 1, "PCM_16")
        assert 0.1 <= info.duration <= 1.0
        audio, _ = soundfile.read(built / r["audio"], dtype="float32")
        assert np.sqrt(np.mean(audio ** 2)) > 0.01 and np.abs(audio).max() > 0.1  # non-silent


def test_speech_bank_is_deterministic_and_short():
    a, b = _speech_bank(), _speech_bank()  # two fresh eSpeak processes
    assert len(a) == len(WORDS) * len(VOICES) * 9
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    lengths = np.array([len(x) for x in a]) / SAMPLE_RATE
    assert lengths.min() > 0.08 and lengths.max() < 0.6
    # different words sound different: same voice/rate/pitch, "zero" vs "one"
    per_word = len(a) // len(WORDS)
    assert len(a[0]) != len(a[per_word]) or not np.allclose(a[0], a[per_word])


def test_same_seed_is_byte_identical_other_seed_differs(built, tmp_path):
    again = tmp_path / "again"
    build_demo_dataset(again, seed=3, n=60)
    assert digests(again) == digests(built)
    other = tmp_path / "other"
    build_demo_dataset(other, seed=4, n=60)
    assert (other / "demo.csv").read_bytes() != (built / "demo.csv").read_bytes()


def test_cache_hit_is_fast_and_rewrites_nothing(built):
    before = {p: p.stat().st_mtime_ns for p in built.rglob("*")}
    start = time.perf_counter()
    assert build_demo_dataset(built, seed=3, n=60) == built / "demo.csv"
    assert time.perf_counter() - start < 0.3
    assert {p: p.stat().st_mtime_ns for p in built.rglob("*")} == before
    info = json.loads((built / "BUILD.json").read_text())
    assert (info["seed"], info["n"], info["rows"], info["files"]) == (3, 60, 60, 120)


def test_interrupted_or_mismatched_build_is_redone(tmp_path):
    root = tmp_path / "demo"
    build_demo_dataset(root, seed=0, n=20)
    reference = digests(root)
    # simulate a crash mid-build: marker gone, a temp dir left behind, a file missing
    (root / "BUILD.json").unlink()
    (root / ".build-crashed").mkdir()
    (root / ".build-crashed" / "junk.wav").write_bytes(b"x")
    (root / "audio" / "00003.wav").unlink()
    build_demo_dataset(root, seed=0, n=20)
    assert digests(root) == reference
    assert not list(root.glob(".build-*"))
    # a missing file under a valid-looking marker is not taken as complete either
    (root / "images" / "00005.png").unlink()
    build_demo_dataset(root, seed=0, n=20)
    assert digests(root) == reference
    # other parameters replace the build
    build_demo_dataset(root, seed=0, n=30)
    assert len(read_rows(root / "demo.csv")) + len(read_rows(root / "test.csv")) == 30
    assert len(os.listdir(root / "audio")) == 30


def test_bad_n_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="n must be"):
        build_demo_dataset(tmp_path, n=0)
    with pytest.raises(ValueError, match="n must be"):
        build_demo_dataset(tmp_path, n=10_000)


def test_spec_matches_the_files():
    assert json.loads(json.dumps(DEMO_SPEC)) == DEMO_SPEC  # plain, YAML-able data
    assert DEMO_SPEC["data"]["train"] == "demo.csv" and DEMO_SPEC["data"]["test"] == "test.csv"
    assert DEMO_SPEC["inputs"]["image"]["size"] == [IMAGE_SIZE, IMAGE_SIZE]
    assert DEMO_SPEC["inputs"]["audio"]["sample_rate"] == SAMPLE_RATE
    assert set(DEMO_SPEC["inputs"]) | set(DEMO_SPEC["outputs"]) == set(COLUMNS) - {"id"}

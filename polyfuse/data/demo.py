"""A small, offline, deterministic three-modality demo dataset: spoken, written and transcribed digits.

Every row shows one digit three ways: a handwritten image (scikit-learn's bundled digits), the word
spoken by eSpeak NG (bundled by the ``espeakng-loader`` wheel) and an unreliable ASR-like transcript.
Each modality is corrupted on its own random subset of rows, independently of the others, so no
single modality is reliable but together they almost always agree: fusion visibly earns its keep.
"""
from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from polyfuse.data.speech import VOICES  # several rates and pitches each

VERSION = 1  # bump whenever the content changes, so cached builds are redone
WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
SAMPLE_RATE = 16_000
IMAGE_SIZE = 16
TEST_FRACTION = 0.17
RATES = (200, 260, 320)  # words per minute: even the slowest keeps a word well under 0.5 s
PITCHES = (30, 50, 70)
HARD_IMAGE, HARD_AUDIO = 0.35, 0.35  # share of rows whose image / audio is made (nearly) unusable
CONFUSIONS = {"zero": ("three", "seven"), "one": ("nine", "four"), "two": ("three", "eight"),
              "three": ("two", "zero"), "four": ("five", "one"), "five": ("nine", "four"),
              "six": ("seven", "eight"), "seven": ("six", "zero"), "eight": ("two", "six"),
              "nine": ("five", "one")}
HOMOPHONES = {"one": "won", "two": "too", "four": "for", "eight": "ate"}
FILLERS = ("", "uh", "um", "sorry?", "what", "hmm", "say again")

DEMO_SPEC: dict = {
    "data": {"train": "demo.csv", "test": "test.csv", "split": {"valid": 0.15, "seed": 0}},
    "inputs": {
        "image": {"type": "image", "size": [IMAGE_SIZE, IMAGE_SIZE], "channels": 1, "encoder": "cnn"},
        "audio": {"type": "audio", "sample_rate": SAMPLE_RATE, "features": "mfcc", "n_mfcc": 20,
                  "max_seconds": 1.0, "encoder": "cnn"},
        "transcript": {"type": "text", "tokenizer": "word", "max_length": 8, "encoder": "ngram", "buckets": 8192,
                       "max_ngrams": 128},
    },
    "fusion": {"method": "concat", "modality_dropout": 0.1},
    "outputs": {"label": {"type": "category"}},
    "train": {"epochs": 15, "batch_size": 64, "lr": 2e-3, "seed": 0},
}


def _combos() -> list[tuple[str, str, int, int]]:
    """Every (word, voice, rate, pitch) to synthesise, in a fixed order (the order matters, see below)."""
    return [(w, v, r, p) for w in WORDS for v in VOICES for r in RATES for p in PITCHES]


def _synthesise_bank() -> list[np.ndarray]:
    """Speak every combo once (polyfuse.data.speech); ``_speech_bank`` runs this in a fresh process, where
    eSpeak's output is byte-identical from run to run."""
    from polyfuse.data.speech import synthesise

    return synthesise(_combos(), SAMPLE_RATE)


def _speech_bank() -> list[np.ndarray]:
    """Run ``_synthesise_bank`` in a fresh interpreter so its output does not depend on earlier calls."""
    package_parent = str(Path(__file__).resolve().parents[1])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [package_parent, os.environ.get("PYTHONPATH")])))
    code = ("import io, sys, numpy as np; from polyfuse.data.demo import _synthesise_bank as s; "
            "b = io.BytesIO(); np.savez(b, *s()); sys.stdout.buffer.write(b.getvalue())")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, env=env)
    if done.returncode != 0:
        raise RuntimeError("eSpeak synthesis failed:\n" + done.stderr.decode(errors="replace")[-3000:])
    with np.load(io.BytesIO(done.stdout), allow_pickle=False) as clips:  # npz: arrays only, no pickle
        return [clips[f"arr_{i}"] for i in range(len(clips.files))]


def _image(digit8: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Upscale an 8x8 (0..16) digit to 16x16 uint8; on HARD_IMAGE of rows drown or occlude it."""
    from PIL import Image

    small = Image.fromarray((digit8 * (255 / 16)).astype(np.uint8))
    x = np.asarray(small.resize((IMAGE_SIZE, IMAGE_SIZE), Image.BILINEAR), np.float32) / 255
    x = x + rng.normal(0, 0.05, x.shape)  # mild noise everywhere: "corrupted" must not be trivially visible
    if rng.random() < HARD_IMAGE:
        kind = rng.integers(3)  # 0 noise, 1 occlusion, 2 both
        if kind != 1:
            x = x + rng.normal(0, rng.uniform(0.7, 1.1), x.shape)
        if kind != 0:  # a blot covering most of the digit: no pixel model can see through it
            h, w = rng.integers(10, 14, size=2)
            top, left = rng.integers(0, IMAGE_SIZE - h + 1), rng.integers(0, IMAGE_SIZE - w + 1)
            x[top:top + h, left:left + w] = rng.uniform(0, 1) + rng.normal(0, 0.15, (h, w))
    return (np.clip(x, 0, 1) * 255).round().astype(np.uint8)


def _audio(label: int, bank: list[np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """One <= 1 s PCM16 clip: a random rendition of the word, random gain, lead silence and noise.

    On HARD_AUDIO of rows the word is buried: either under very loud noise, or under a louder
    second voice saying another digit (truly ambiguous, unlike noise a CNN might see through).
    """
    per_word = len(bank) // len(WORDS)  # _combos() is word-major
    speech = bank[label * per_word + rng.integers(per_word)] * rng.uniform(0.2, 0.8)
    lead = int(rng.integers(0, int(0.25 * SAMPLE_RATE)))
    total = min(SAMPLE_RATE, lead + len(speech) + int(rng.uniform(0.05, 0.2) * SAMPLE_RATE))
    lead = min(lead, total - len(speech))
    x = np.zeros(total, np.float32)
    x[lead:lead + len(speech)] = speech
    level = float(np.sqrt(np.mean(speech ** 2)))
    snr_db = rng.uniform(3, 25)
    if rng.random() < HARD_AUDIO:
        if rng.random() < 0.5:
            snr_db = rng.uniform(-14, -7)
        else:
            other = (label + rng.integers(1, len(WORDS))) % len(WORDS)
            rival = bank[other * per_word + rng.integers(per_word)][: total]
            at = int(rng.integers(0, total - len(rival) + 1))
            rival_rms = float(np.sqrt(np.mean(rival ** 2)))
            x[at:at + len(rival)] += rival * (level / rival_rms) * 10 ** (rng.uniform(0, 6) / 20)
            snr_db = rng.uniform(0, 10)
    x += rng.normal(0, level / 10 ** (snr_db / 20), total).astype(np.float32)
    return (np.clip(x, -1, 1) * 32767).round().astype(np.int16)


def _transcript(word: str, rng: np.random.Generator) -> str:
    """An ASR-like guess: right ~55 % of the time (sometimes misspelt), else a wrong digit or a filler."""
    r = rng.random()
    if r < 0.55:
        if rng.random() < 0.25:  # homophone or typo: still right, but a token a bag model sees rarely
            if word in HOMOPHONES and rng.random() < 0.5:
                return HOMOPHONES[word]
            i = int(rng.integers(len(word)))
            return word[:i] + word[i + 1:]
        return ("uh " if rng.random() < 0.1 else "") + word
    if r < 0.8:
        pool = CONFUSIONS[word] if rng.random() < 0.6 else [w for w in WORDS if w != word]
        return str(pool[rng.integers(len(pool))])
    return FILLERS[rng.integers(len(FILLERS))]


def _balanced_order(labels: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """n indices taking the classes in turn (so any n is balanced), then shuffled."""
    order = rng.permutation(len(labels))
    rank = np.zeros(len(labels), int)
    seen = np.zeros(len(WORDS), int)
    for i in order:  # rank of each sample within its own class, in shuffled order
        rank[i], seen[labels[i]] = seen[labels[i]], seen[labels[i]] + 1
    picked = order[np.argsort(rank[order], kind="stable")][:n]
    return picked[rng.permutation(n)]


def _is_complete(root: Path, params: dict) -> bool:
    """True when BUILD.json (written last) matches params and every file it counted is present."""
    try:
        info = json.loads((root / "BUILD.json").read_text())
        files = len(os.listdir(root / "images")) + len(os.listdir(root / "audio"))
    except (OSError, ValueError):
        return False
    return (all(info.get(k) == v for k, v in params.items()) and files == info.get("files")
            and (root / "demo.csv").is_file() and (root / "test.csv").is_file())


def build_demo_dataset(root: Path, *, seed: int = 0, n: int | None = None) -> Path:
    """Build (or reuse a cached build of) the demo dataset in ``root``; returns ``root/demo.csv``.

    ``n`` limits the number of rows (default: all 1797 digits); ``root/test.csv`` holds ~17 % of them.
    Same (seed, n) gives byte-identical files. Not safe against two concurrent builds of one root.
    """
    import soundfile
    from PIL import Image
    from sklearn.datasets import load_digits

    root = Path(root)
    params = {"version": VERSION, "seed": seed, "n": n}
    if _is_complete(root, params):
        return root / "demo.csv"
    digits = load_digits()
    if n is not None and not 2 <= n <= len(digits.target):
        raise ValueError(f"n must be between 2 and {len(digits.target)}, got {n}")
    root.mkdir(parents=True, exist_ok=True)
    (root / "BUILD.json").unlink(missing_ok=True)  # from here on the old build no longer counts
    for stale in root.glob(".build-*"):  # left behind by an interrupted build
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=root))
    (tmp / "images").mkdir()
    (tmp / "audio").mkdir()
    bank = _speech_bank()
    rng_rows, rng_img, rng_aud, rng_txt = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(4))
    picked = _balanced_order(digits.target, n or len(digits.target), rng_rows)
    n_test = max(1, round(TEST_FRACTION * len(picked)))
    rows = []
    for row_id, k in enumerate(picked):  # one generator per modality: corruptions independent per row
        label = int(digits.target[k])
        image, audio = f"images/{row_id:05d}.png", f"audio/{row_id:05d}.wav"
        Image.fromarray(_image(digits.images[k], rng_img)).save(tmp / image)
        soundfile.write(tmp / audio, _audio(label, bank, rng_aud), SAMPLE_RATE, subtype="PCM_16")
        rows.append([row_id, image, audio, _transcript(WORDS[label], rng_txt), WORDS[label]])
    for name, part in (("demo.csv", rows[:-n_test]), ("test.csv", rows[-n_test:])):
        with open(tmp / name, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f, lineterminator="\n")
            writer.writerow(["id", "image", "audio", "transcript", "label"])
            writer.writerows(part)
    for name in ("images", "audio", "demo.csv", "test.csv"):  # swap the finished parts in
        if (root / name).is_dir():
            shutil.rmtree(root / name)
        os.replace(tmp / name, root / name)
    info = dict(params, rows=len(rows), files=2 * len(rows), voices=list(VOICES))
    (tmp / "BUILD.json").write_text(json.dumps(info, indent=1) + "\n")
    os.replace(tmp / "BUILD.json", root / "BUILD.json")  # the completion marker, last
    tmp.rmdir()
    return root / "demo.csv"

"""`polyfuse export --with-preprocessing`: graphs that take what a phone has (decoded pixels, a waveform, text
ids, numbers), checked against the numpy preprocessing; the mobile/ bundle read the way an app would."""
from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import zlib

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch
from conftest import toy_spec
from PIL import Image

import polyfuse
from polyfuse.nn import in_graph
from polyfuse.preprocess import audio as audio_prep
from polyfuse.preprocess import image as image_prep


def export(model_dir, *extra):
    return subprocess.run([sys.executable, "-m", "polyfuse", "export", str(model_dir), "--with-preprocessing", *extra],
                          capture_output=True, text=True)


@pytest.fixture(scope="module")
def trained(toy_csv, tmp_path_factory):
    spec = toy_spec(toy_csv, epochs=3)
    spec["inputs"]["photo"]["size"] = [12, 12]  # the table's 16x16 pictures are resized inside the graph
    spec["train"]["ensemble"] = "off"
    out = tmp_path_factory.mktemp("mobile") / "m"
    polyfuse.train(spec, out=out)
    run = export(out, "--to", "onnx")
    assert run.returncode == 0, run.stderr
    return out


# ----------------------------------------------------------------------------- an app, written from the bundle's docs
def text_ids(text: str, rules: dict) -> list[int]:
    """text_ids.md followed by hand for a word tokenizer and the ngram encoder (no polyfuse code)."""
    tokens = re.findall(r"\w+|[^\w\s]", text.lower())[: rules["max_length"]]

    def bucket(key):
        return 1 + zlib.crc32(key.encode("utf-8")) % (rules["buckets"] - 1)

    out, limit = [], rules["max_ngrams"]
    for n in range(1, rules["word_ngrams"] + 1):
        out += [bucket(f"w{n}\x1f" + "\x1f".join(tokens[i:i + n])) for i in range(len(tokens) - n + 1)]
        if len(out) >= limit:
            return out[:limit]
    lo, hi = rules["char_ngrams"]
    for t in tokens:
        m = f"<{t}>"
        out += [bucket("c\x1f" + m[i:i + n]) for n in range(lo, hi + 1) for i in range(len(m) - n + 1)
                if m[i:i + n] not in ("<", ">", m)]
        if len(out) >= limit:
            break
    return out[:limit]


def app_inputs(record: dict, folder, contract: dict, rules: dict) -> dict[str, np.ndarray]:
    """One record as the contract asks: pictures as decoded RGB bytes, the wav's raw samples, ids, numbers."""
    spec = {i["name"]: i for i in contract["inputs"]}
    pixels = np.asarray(Image.open(folder / record["photo"]).convert("RGB"), dtype=np.uint8)
    wave, rate = sf.read(folder / record["sound"], dtype="int16")
    assert rate == spec["sound"]["sample_rate"]
    ids = text_ids(record["note"], rules)
    width = spec["note"]["shape"][1]
    return {
        "photo": pixels[None], "photo__present": np.array([True]),
        "sound": wave.astype(np.float32)[None] / 32768.0, "sound__length": np.array([len(wave)], np.int64),
        "sound__present": np.array([True]),
        "note": np.array([ids + [0] * (width - len(ids))], np.int64),
        "weight": np.array([record["weight"]], np.float32),
        "color": np.array([spec["color"]["vocabulary"].index(record["color"])], np.int64),
    }


def test_onnx_bundle_is_verified_listed_and_runs_from_what_an_app_has(trained, toy_csv):
    import onnxruntime as ort

    entry = json.loads((trained / "exports.json").read_text())["mobile/onnx/model.onnx"]
    assert entry["verification"]["passed"] and entry["verification"]["top1_agreement"] == 1.0
    gaps = entry["verification"]["feature_gaps"]
    assert gaps["sound"] <= 1e-3 and gaps["weight"] <= 1e-3 and gaps["note"] == 0.0
    bundle = trained / "mobile" / "onnx"
    listed = json.loads((trained / "manifest.json").read_text())["files"]
    for name in ("model.onnx", "contract.json", "labels.json", "text_ids.md", "text_vectors.json"):
        assert f"mobile/onnx/{name}" in listed
    contract = json.loads((bundle / "contract.json").read_text())
    assert [i["name"] for i in contract["inputs"]] == ["photo", "photo__present", "sound", "sound__length",
                                                       "sound__present", "note", "weight", "color"]
    assert contract["inputs"][0]["dtype"] == "uint8" and contract["inputs"][0]["shape"][-1] == 3
    labels = json.loads((bundle / "labels.json").read_text())["label"]

    model = polyfuse.load(trained)
    cfg = model.spec.inputs["note"]
    rules = {"max_length": cfg.max_length, "buckets": cfg.buckets, "max_ngrams": cfg.max_ngrams,
             "word_ngrams": cfg.word_ngrams, "char_ngrams": cfg.char_ngrams}
    records = pd.read_csv(toy_csv).head(24).to_dict("records")
    session = ort.InferenceSession(str(bundle / "model.onnx"), providers=["CPUExecutionProvider"])
    got = np.concatenate([session.run(["label"], app_inputs(r, toy_csv.parent, contract, rules))[0] for r in records])
    ref = model.predict_proba([{k: v for k, v in r.items() if k != "label"} for r in records], folder=toy_csv.parent)
    ref = ref[labels].to_numpy()  # the bundle's labels.json orders the graph's probabilities
    assert (got.argmax(1) == ref.argmax(1)).all()
    assert np.abs(got - ref).max() <= 1e-2  # resized pixels may sit one 8-bit step from Pillow's


def test_text_ids_doc_and_vectors_agree_with_polyfuse(trained):
    model = polyfuse.load(trained)
    cfg = model.spec.inputs["note"]
    rules = {"max_length": cfg.max_length, "buckets": cfg.buckets, "max_ngrams": cfg.max_ngrams,
             "word_ngrams": cfg.word_ngrams, "char_ngrams": cfg.char_ngrams}
    vectors = json.loads((trained / "mobile" / "onnx" / "text_vectors.json").read_text())["note"]
    assert len(vectors) >= 6 and any(v["ids"] == [] for v in vectors) and any("北" in v["text"] for v in vectors)
    for v in vectors:
        assert text_ids(v["text"], rules) == v["ids"], v["text"]
    doc = (trained / "mobile" / "onnx" / "text_ids.md").read_text()
    assert "crc32" in doc and str(cfg.buckets - 1) in doc and str(cfg.max_ngrams) in doc


def test_executorch_bundle_passes_in_executorchs_runtime(trained):
    run = export(trained, "--to", "executorch")
    assert run.returncode == 0, run.stderr
    entry = json.loads((trained / "exports.json").read_text())["mobile/executorch/model.pte"]
    assert entry["verification"]["passed"] and entry["verification"]["top1_agreement"] == 1.0
    contract = json.loads((trained / "mobile" / "executorch" / "contract.json").read_text())
    assert contract["inputs"][0]["shape"][0] == 1 and contract["inputs"][0]["max_side"] == 1024
    assert "mobile/executorch/model.pte" in json.loads((trained / "manifest.json").read_text())["files"]


def test_what_cannot_run_in_a_graph_is_refused_with_the_reason(toy_csv, tmp_path, trained):
    run = export(trained, "--to", "onnx", "--quantize", "dynamic")
    assert run.returncode != 0 and "fp32" in run.stderr
    spec = toy_spec(toy_csv, epochs=1)
    spec["inputs"] = {"sound": {**spec["inputs"]["sound"], "deltas": True}, "weight": spec["inputs"]["weight"]}
    spec["train"]["ensemble"] = "off"
    polyfuse.train(spec, out=tmp_path / "d")
    run = export(tmp_path / "d", "--to", "onnx")
    assert run.returncode != 0 and "'sound'" in run.stderr and "deltas" in run.stderr
    assert not (tmp_path / "d" / "mobile").exists()


# ----------------------------------------------------------------------------- the modules against numpy
@pytest.mark.parametrize("channels", [1, 3])
def test_pixels_match_pillow_resize_within_one_step(channels):
    rng = np.random.default_rng(channels)
    cfg = type("Cfg", (), {"size": (24, 20), "channels": channels})()
    state = {"mean": [0.5] * channels, "std": [0.25] * channels}
    module = in_graph.ImagePixels(cfg, state)
    exact = 0
    for h, w in [(24, 20), (57, 91), (13, 9), (300, 40)]:
        ramp = np.add.outer(np.arange(h) * 3, np.arange(w) * 2)[:, :, None] + rng.integers(0, 30, (h, w, 3))
        pixels = (ramp % 256).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, "PNG")
        ref = image_prep.normalise(image_prep.decode_image(buffer.getvalue(), (24, 20), channels)[None], state)
        got = module(torch.from_numpy(pixels[None]), torch.tensor([True]))[""].numpy()
        steps = np.abs(got - ref) * 0.25 * 255
        assert steps.max() <= 1.001, (h, w)
        exact += int((h, w) == (24, 20) and steps.max() == 0)
    assert exact == 1  # no resize: the very same values


def test_waveform_features_match_numpy_for_short_long_scaled_and_missing_clips():
    cfg = audio_prep.AudioFeatureConfig(sample_rate=8000, n_mfcc=13, n_mels=26, max_seconds=0.5)
    rng = np.random.default_rng(0)
    clips = [rng.standard_normal(n).astype(np.float32) * s for n, s in ((900, 1.0), (4000, 0.3), (9000, 2.0))]
    state = {"mean": [1.0] * 13, "std": [7.0] * 13}
    module = in_graph.AudioWave(cfg, state)
    width = max(len(c) for c in clips)
    wave = np.zeros((4, width), np.float32)
    for i, c in enumerate(clips):
        wave[i, : len(c)] = c  # as decoded, peak 1: the graph normalises, so the scale given does not matter
    lengths = np.array([len(c) for c in clips] + [5], np.int64)
    present = np.array([True, True, True, False])
    decoded = [c / np.abs(c).max() for c in clips] + [None]
    ref = audio_prep.collate(decoded, cfg, state, False, None)
    got = module(torch.from_numpy(wave), torch.from_numpy(lengths), torch.from_numpy(present))
    assert np.abs(got[""].numpy() - ref[""]).max() <= 1e-4
    assert got["length"].tolist() == ref["length"].tolist() and ref["length"][3] == 0

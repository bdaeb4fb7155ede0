"""Corruption functions and `polyfuse robustness` on the toy model: schema, clean accuracy,
determinism, missing-input subsets, the written artifact and the command line."""
from __future__ import annotations

import itertools
import json
import shutil
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest

import polyfuse
from polyfuse.errors import ArtifactError
from polyfuse.evaluate import corruptions as C
from polyfuse.evaluate import robustness

INPUTS = ["photo", "sound", "note", "weight", "color"]
SR = 16000


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def sine(seconds: float = 1.0, hz: float = 440.0) -> np.ndarray:
    t = np.arange(int(SR * seconds)) / SR
    return (0.8 * np.sin(2 * np.pi * hz * t)).astype(np.float32)


# ----------------------------------------------------------------------------- corruptions
def test_image_noise_zero_is_identity_and_sigma_raises_std():
    img = np.full((1, 32, 32), 0.5, dtype=np.float32)
    assert np.array_equal(C.gaussian_noise(img, 0.0, rng()), img)
    stds = [float(C.gaussian_noise(img, s, rng()).std()) for s in (0.1, 0.2, 0.4)]
    assert stds == sorted(stds) and stds[0] > 0.05
    noisy = C.gaussian_noise(img, 0.8, rng())
    assert noisy.min() >= 0.0 and noisy.max() <= 1.0 and noisy.dtype == np.float32
    assert np.array_equal(img, np.full((1, 32, 32), 0.5, dtype=np.float32))  # input untouched


@pytest.mark.parametrize("snr", [20.0, 10.0, 0.0, -5.0])
def test_audio_noise_measured_snr_matches(snr):
    clean = sine()
    noisy = C.white_noise(clean, snr, rng(3))
    noise = noisy.astype(np.float64) - clean
    measured = 10 * np.log10(np.mean(clean.astype(np.float64) ** 2) / np.mean(noise**2))
    assert abs(measured - snr) < 0.5
    assert np.array_equal(C.white_noise(clean, float("inf"), rng()), clean)


@pytest.mark.parametrize("fraction", [0.1, 0.25, 0.5, 0.9])
def test_dropouts_zero_the_expected_fraction_in_50ms_segments(fraction):
    wave = np.random.default_rng(1).uniform(0.1, 1.0, SR).astype(np.float32)  # 1 s, no zero sample
    out = C.dropouts(wave, fraction, rng(), sample_rate=SR)
    zero = out == 0
    assert zero.mean() == pytest.approx(fraction, abs=1 / 20)  # one 50 ms segment of 20
    segments = zero.reshape(20, SR // 20)
    assert np.all(segments.all(axis=1) | ~segments.any(axis=1))  # whole segments only
    assert np.array_equal(out[~zero], wave[~zero])


def test_blur_reduces_high_frequency_energy():
    img = np.random.default_rng(0).uniform(0, 1, (1, 28, 28)).astype(np.float32)

    def high_freq(x: np.ndarray) -> float:  # energy of neighbour differences (a Laplacian-like measure)
        return float((np.diff(x, axis=-1) ** 2).sum() + (np.diff(x, axis=-2) ** 2).sum())

    energies = [high_freq(C.blur(img, s, rng())) for s in (0.0, 0.02, 0.04, 0.08, 0.12)]
    assert energies[0] == high_freq(img)
    assert all(a > b for a, b in zip(energies, energies[1:]))
    assert C.blur(img, 0.06, rng()).mean() == pytest.approx(img.mean(), abs=0.02)  # borders reflect, no darkening


def test_occlusion_covers_the_area():
    img = np.ones((3, 40, 40), dtype=np.float32)
    for area in (0.1, 0.25, 0.5):
        out = C.occlusion(img, area, rng())
        assert (out[0] == 0).mean() == pytest.approx(area, abs=0.03)
        assert np.array_equal(out[0] == 0, out[2] == 0)  # every channel


def test_text_and_tabular_drops():
    tokens = ["the", "quick", "brown", "fox"]
    assert C.word_drop(tokens, 1.0, rng()) is None
    assert C.word_drop(tokens, 0.0, rng()) == tokens
    kept = [len(C.word_drop(tokens * 50, 0.5, rng(s)) or []) for s in range(5)]
    assert all(60 < k < 140 for k in kept)
    typo = C.typos(["abcd", "wxyz"], 1.0, rng())
    assert len(typo) == 2 and all(a != b and len(a) == len(b) for a, b in zip(typo, ["abcd", "wxyz"]))
    assert C.typos(tokens, 0.0, rng()) == tokens
    assert C.drop_value(3.5, 1.0, rng()) is None and C.drop_value("red", 0.0, rng()) == "red"


def test_every_corruption_is_deterministic_and_starts_clean():
    values = {"image": np.random.default_rng(0).uniform(0, 1, (1, 16, 16)).astype(np.float32), "audio": sine(0.3),
              "text": ["a", "small", "catish", "thing"], "number": 2.5, "category": "red",
              "timeseries": np.sin(np.linspace(0, 6, 40))[:, None].astype(np.float32),
              "video": np.zeros((4, 16, 16, 3), np.uint8)}
    for kind in C.CORRUPTIONS:
        for c in C.for_input(SimpleNamespace(type=kind, sample_rate=SR)):
            v = values[kind]
            assert c.levels[0] == c.clean
            clean = c.apply(v, c.levels[0], rng())
            assert clean is v or clean == v, (kind, c.name)
            for level in c.levels[1:]:
                a, b = c.apply(v, level, rng(7)), c.apply(v, level, rng(7))
                if isinstance(a, np.ndarray) and a.dtype.kind == "f":  # gaps are NaN: equal where both are
                    assert np.array_equal(a, b, equal_nan=True), (kind, c.name, level)
                else:
                    assert (a is None and b is None) or np.array_equal(np.asarray(a, dtype=object),
                                                                       np.asarray(b, dtype=object))


def test_robustness_summary_figures():
    assert robustness.relative_robustness([1.0, 1.0, 1.0]) == 1.0
    assert robustness.relative_robustness([1.0, 0.5, 0.0]) == pytest.approx(0.5)
    # a model that slides linearly to chance has effective robustness 0
    assert robustness.effective_robustness(robustness.relative_robustness([0.9, 0.6, 0.3]), 0.9, 0.3) == pytest.approx(0.0)


# ----------------------------------------------------------------------------- the report
@pytest.fixture(scope="module")
def report(toy_model, toy_csv):
    return robustness.run(toy_model[0], toy_csv, seed=0)


def test_report_schema_and_definitions(report):
    assert report["format"] == "polyfuse.evaluate.robustness/1" and report["seed"] == 0 and report["rows"] == 90
    assert set(report["definitions"]) >= {"relative_robustness", "effective_robustness", "normalised_level"}
    assert report["outputs"]["label"]["metric"] == "accuracy"
    assert report["outputs"]["label"]["chance"] == pytest.approx(1 / 3, abs=1e-6)
    expected = {"photo": {"noise", "blur", "occlusion"}, "sound": {"noise", "dropouts"}, "note": {"typos", "word_drop"},
                "weight": {"drop"}, "color": {"drop"}}
    assert {n: set(cs) for n, cs in report["curves"].items()} == expected
    clean, chance = report["outputs"]["label"]["clean"], report["outputs"]["label"]["chance"]
    for n, cs in report["curves"].items():
        for name, c in cs.items():
            scores = c["scores"]["label"]
            assert len(scores) == len(c["levels"]) == len(c["labels"]) == len(c["normalised"]) >= 2
            assert c["normalised"][0] == 0 and c["normalised"][-1] == 1 and c["labels"][0] == "clean"
            assert all(0.0 <= s <= 1.0 for s in scores)
            area = float(np.sum((np.array(scores[1:]) + scores[:-1]) / 2 * np.diff(c["normalised"])))
            assert c["relative"]["label"] == pytest.approx(area, abs=1e-5)
            assert c["effective"]["label"] == pytest.approx(area - (clean + chance) / 2, abs=1e-5)
    assert report["curves"]["sound"]["noise"]["levels"][0] is None  # +inf SNR (clean) is null in JSON
    json.dumps(report, allow_nan=False)  # plain JSON


def test_level_zero_is_the_clean_accuracy(report, toy_model, toy_csv):
    evaluated = toy_model[0].evaluate(toy_csv)
    acc = evaluated["outputs"]["label"]["accuracy"]
    assert report["outputs"]["label"]["clean"] == pytest.approx(acc, abs=1e-6)
    for cs in report["curves"].values():
        for c in cs.values():
            assert c["scores"]["label"][0] == pytest.approx(acc, abs=1e-6)
    # removing one input scores as evaluate's own ablation does
    singles = {e["missing"][0]: e["scores"]["label"] for e in report["missing"]["entries"] if len(e["missing"]) == 1}
    for n, scores in evaluated["ablation"]["without"].items():
        assert singles[n] == pytest.approx(scores["label"], abs=1e-6)


def test_missing_entries_cover_every_proper_subset(report):
    entries = report["missing"]["entries"]
    got = {frozenset(e["missing"]) for e in entries}
    want = {frozenset(s) for k in range(1, len(INPUTS)) for s in itertools.combinations(INPUTS, k)}
    assert got == want and len(entries) == 30
    for e in entries:
        assert set(e["present"]) == set(INPUTS) - set(e["missing"]) and 0.0 <= e["scores"]["label"] <= 1.0


def test_same_seed_same_report_other_seed_differs(report, toy_model, toy_csv):
    assert robustness.run(toy_model[0], toy_csv, seed=0) == report
    other = robustness.run(toy_model[0], toy_csv, seed=1)
    assert other["outputs"] == report["outputs"]
    assert other["curves"] != report["curves"]


def test_levels_override_and_row_cap(toy_model, toy_csv):
    small = robustness.run(toy_model[0], toy_csv, seed=0, rows=30,
                           levels={"noise": [0.0, 0.4], "sound.noise": [float("inf"), 0.0], "sound.dropouts": [0, 0.5, 0.9]})
    assert small["rows"] == 30 and small["rows_in_table"] == 90
    assert small["curves"]["photo"]["noise"]["levels"] == [0.0, 0.4]
    assert small["curves"]["sound"]["noise"]["labels"] == ["clean", "0 dB"]
    assert len(small["curves"]["sound"]["dropouts"]["scores"]["label"]) == 3
    with pytest.raises(ValueError, match="unknown corruption"):
        robustness.run(toy_model[0], toy_csv, levels={"fog": [0, 1]})


def test_write_out_leaves_the_artifact_alone(report, toy_model, tmp_path):
    _, out = toy_model
    before = (out / "manifest.json").read_text()
    written = robustness.write(report, out, out=tmp_path / "r" / "rob.json")
    assert [p.name for p in written] == ["rob.json", "rob.png"] and all(p.stat().st_size > 0 for p in written)
    assert json.loads(written[0].read_text()) == report
    assert (out / "manifest.json").read_text() == before and not (out / "robustness.json").exists()


def test_write_refuses_a_modified_artifact(report, toy_model, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(toy_model[1], folder)
    (folder / "metrics.json").write_text("{}")
    with pytest.raises(ArtifactError, match="modified"):
        robustness.write(report, folder)
    assert not (folder / "robustness.json").exists()


def test_cli_prints_the_table_and_signs_the_files(report, toy_model, toy_csv, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(toy_model[1], folder)
    done = subprocess.run([sys.executable, "-m", "polyfuse", "robustness", str(folder), str(toy_csv), "--seed", "0",
                           "--threads", "1"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    for word in ("relative", "effective", "missing inputs", "L5", *INPUTS, "occlusion", "-5 dB"):
        assert word in done.stdout
    manifest = json.loads((folder / "manifest.json").read_text())
    assert {"robustness.json", "robustness.png"} <= set(manifest["files"])
    assert "polyfuse_version" in manifest  # the other keys survive the re-hash
    assert (folder / "robustness.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(folder.glob(".*tmp*"))
    polyfuse.load(folder)  # verifies every file against the re-written manifest
    assert json.loads((folder / "robustness.json").read_text()) == report  # same seed, another process

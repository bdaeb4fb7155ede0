"""The linear baseline floor: fitted on generated tables where a keyword decides the class."""
from __future__ import annotations

import io
import json
import re

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import polyfuse
from polyfuse.data.io import read_table
from polyfuse.evaluate import report
from polyfuse.evaluate.baseline import fit_baselines
from polyfuse.evaluate.baseline_compare import compare
from polyfuse.preprocess.pipeline import Decoded, Preprocessor, decode_table
from polyfuse.spec.schema import Spec

CLASSES = ["alpha", "beta", "gamma"]
FILLER = ["the", "a", "small", "big", "red", "old", "new", "with", "and", "some"]


def png(rng: np.random.Generator) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def keyword_table(n: int = 180, seed: int = 0) -> pd.DataFrame:
    """Text holds the class keyword among filler words; the other inputs are noise. Every tenth
    text and every seventh number are missing; ``size`` is a number target that follows ``x``."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        k = i % 3
        words = list(rng.choice(FILLER, 5)) + [f"{CLASSES[k]}word"]
        rng.shuffle(words)
        x = float(rng.normal())
        rows.append({"note": None if i % 10 == 0 else " ".join(words),
                     "x": None if i % 7 == 0 else x,
                     "colour": str(rng.choice(["red", "green", "blue"])),
                     "photo": png(rng),
                     "label": CLASSES[k],
                     "size": 3.0 * (x if i % 7 else 0.0) + float(rng.normal(0, 0.1))})
    return pd.DataFrame(rows)


SPEC = {
    "inputs": {"note": {"type": "text"}, "x": {"type": "number"}, "colour": {"type": "category"},
               "photo": {"type": "image", "size": [8, 8]}},
    "outputs": {"label": {"type": "category"}, "size": {"type": "number"}},
}


def split(spec: Spec, frame: pd.DataFrame) -> tuple[Preprocessor, Decoded, Decoded, Decoded]:
    decoded = decode_table(spec, read_table(frame), with_targets=True)
    n = len(decoded)
    train, valid, test = (decoded.subset(range(0, n * 3 // 5)), decoded.subset(range(n * 3 // 5, n * 4 // 5)),
                          decoded.subset(range(n * 4 // 5, n)))
    return Preprocessor.fit(spec, train), train, valid, test


@pytest.fixture(scope="module")
def fitted() -> tuple[Spec, dict, Decoded]:
    spec = Spec.model_validate(SPEC)
    pre, train, valid, test = split(spec, keyword_table())
    return spec, fit_baselines(spec, pre, train, valid, test), valid


def test_a_second_input_over_the_same_column_is_not_fitted_twice():
    """A zoo encoder's input beside the n-gram one reads the same column: the same linear model answers for it."""
    spec = Spec.model_validate({**SPEC, "inputs": {**SPEC["inputs"],
                                                   "note_again": {"type": "text", "column": "note", "encoder": "cnn"}}})
    pre, train, valid, test = split(spec, keyword_table())
    result = fit_baselines(spec, pre, train, valid, test)
    assert result["inputs"]["note_again"] == {"type": "text", "same_features_as": "note"}
    only = result["outputs"]["label"]["only"]
    assert only["note_again"] == only["note"] and only["note"]["valid"]["accuracy"] > 0.8


def test_keyword_text_baseline_scores_high_and_noise_does_not(fitted):
    spec, result, valid = fitted
    label = result["outputs"]["label"]
    assert label["metric"] == "accuracy"
    assert set(label["only"]) == set(spec.inputs)
    for split_name in ("valid", "test"):
        # every missing text is one of the rows scored: only 90 % of texts carry the keyword
        assert label["only"]["note"][split_name]["accuracy"] >= 0.85
        assert label["all"][split_name]["accuracy"] >= 0.85
        assert label["only"]["colour"][split_name]["accuracy"] < 0.6  # noise stays near chance (1/3)
        assert 0.0 <= label["all"][split_name]["f1_macro"] <= 1.0
    assert label["prior"]["valid"]["accuracy"] < 0.5
    size = result["outputs"]["size"]
    assert size["metric"] == "r2"
    assert size["only"]["x"]["valid"]["r2"] > 0.9 > size["only"]["note"]["valid"]["r2"]
    assert result["seconds"] > 0 and result["train_rows"] == 108
    assert result["inputs"]["note"]["features"] > 10
    json.dumps(result)  # goes into metrics.json as is


def test_rows_missing_an_input_are_scored_not_dropped(fitted):
    spec, result, valid = fitted
    assert any(v is None for v in valid.inputs["note"]) and any(v is None for v in valid.inputs["x"])
    for entry in [result["outputs"]["label"]["all"], *result["outputs"]["label"]["only"].values()]:
        assert entry["valid"]["n"] == len(valid)


def test_an_input_missing_in_every_training_row_is_skipped_with_the_others_kept():
    spec = Spec.model_validate(SPEC)
    frame = keyword_table(90)
    frame.loc[: 90 * 3 // 5 - 1, "colour"] = None  # absent in train, present in valid/test
    pre, train, valid, test = split(spec, frame)
    result = fit_baselines(spec, pre, train, valid, test)
    assert "missing in every training row" in result["outputs"]["label"]["only"]["colour"]["skipped"]
    assert result["outputs"]["label"]["all"]["valid"]["accuracy"] > 0.8


def test_one_class_in_train_is_skipped_with_the_reason():
    spec = Spec.model_validate({**SPEC, "outputs": {"label": {"type": "category"}}})
    frame = keyword_table(60)
    frame["label"] = "alpha"
    pre, train, valid, test = split(spec, frame)
    result = fit_baselines(spec, pre, train, valid, test)
    label = result["outputs"]["label"]
    assert "only one class" in label["all"]["skipped"]
    assert all("only one class" in e["skipped"] for e in label["only"].values())
    assert label["prior"]["valid"]["accuracy"] == 1.0


def test_multilabel_and_binary_outputs_are_fitted():
    spec = Spec.model_validate({"inputs": {"note": {"type": "text"}},
                                "outputs": {"tags": {"type": "multilabel"}, "is_beta": {"type": "binary"}}})
    frame = keyword_table(120)
    frame["tags"] = [f"{c}|x" if i % 2 else c for i, c in enumerate(frame["label"])]
    frame["is_beta"] = (frame["label"] == "beta").map({True: "yes", False: "no"})
    pre, train, valid, test = split(spec, frame)
    result = fit_baselines(spec, pre, train, valid, test)
    assert result["outputs"]["tags"]["metric"] == "f1_micro"
    assert result["outputs"]["tags"]["all"]["valid"]["f1_micro"] > 0.6
    assert result["outputs"]["is_beta"]["all"]["valid"]["accuracy"] > 0.85


def network_metrics(accuracy: float, only: dict[str, float] | None = None) -> dict:
    net = {"outputs": {"label": {"n": 36, "accuracy": accuracy, "f1_macro": accuracy - 0.1},
                       "size": {"n": 36, "r2": 1.0, "mae": 0.1}}}
    if only is not None:
        net["ablation"] = {"only": {n: {"label": s, "size": 1.0} for n, s in only.items()}}
    return net


def test_compare_warns_loudly_when_the_baseline_wins(fitted):
    spec, result, _ = fitted
    warnings = compare(network_metrics(0.33), result, spec)
    assert len(warnings) == 1
    assert "BASELINE BEATS THE NETWORK on 'label'" in warnings[0] and "note alone" in warnings[0]
    assert "most frequent class" in warnings[0]  # 0.33 is no better than the prior (1/3): it has not learned


def test_compare_blames_the_input_whose_branch_loses_to_its_own_baseline(fitted):
    spec, result, _ = fitted
    warnings = compare(network_metrics(1.0, {"note": 0.4, "x": 0.7, "colour": 0.7, "photo": 0.7}), result, spec)
    assert len(warnings) == 1
    assert "BASELINE BEATS THE NETWORK'S 'note' BRANCH" in warnings[0]
    assert "n-gram encoder reads 'note' worse" in warnings[0]


def test_compare_is_quiet_when_the_network_wins(fitted):
    spec, result, _ = fitted
    assert compare(network_metrics(1.0), result, spec) == []
    assert compare(network_metrics(1.0, {"note": 1.0, "x": 0.7, "colour": 0.7, "photo": 0.7}), result, spec) == []
    assert compare(None, result, spec) == [] and compare(network_metrics(0.1), None, spec) == []


def test_baseline_table_shows_network_and_baseline_side_by_side(fitted):
    spec, result, _ = fitted
    metrics = {"valid": network_metrics(0.33), "baseline": result}
    metrics["baseline_warnings"] = compare(metrics["valid"], result, spec)
    text = report.baseline_table(metrics, spec)
    assert "network, all inputs" in text and "baseline, only note" in text and "0.3300" in text
    assert "!! BASELINE BEATS THE NETWORK" in text
    assert report.baseline_table({"valid": metrics["valid"]}, spec) == ""


def test_training_reports_a_crippled_network_beaten_by_the_baseline(tmp_path):
    spec = {"inputs": {"note": {"type": "text", "encoder": "bigru", "dim": 16}, "x": {"type": "number"}},
            "outputs": {"label": {"type": "category"}},
            "data": {"split": {"valid": 0.2, "test": 0.2, "seed": 0}},
            "train": {"epochs": 1, "lr": 1e-6, "batch_size": 32, "threads": 1, "calibrate": False, "ensemble": "off"}}
    model = polyfuse.train(spec, data=keyword_table(150).drop(columns=["photo"]), out=tmp_path / "run",
                           show_progress=False)
    base = model.metrics["baseline"]
    assert base["outputs"]["label"]["all"]["valid"]["accuracy"] >= 0.85
    assert any("BASELINE BEATS THE NETWORK on 'label'" in w for w in model.metrics["baseline_warnings"])
    card = (tmp_path / "run" / "MODEL_CARD.md").read_text()
    assert "## Baseline" in card and "**⚠ BASELINE BEATS THE NETWORK" in card
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["baseline"]["outputs"]["label"]["metric"] == "accuracy"
    # with a test split too, validation keeps its ablation, so the text branch itself is blamed
    assert "note" in model.metrics["valid"]["ablation"]["only"]
    assert any("encoder learns 'note' from scratch" in w for w in model.metrics["baseline_warnings"])

    spec["train"]["ensemble"] = "auto"  # the default: the linear members carry the crippled network
    rescued = polyfuse.train(spec, data=keyword_table(150).drop(columns=["photo"]), out=tmp_path / "ensemble",
                             show_progress=False)
    floor = rescued.metrics["baseline"]["outputs"]["label"]["all"]["valid"]["accuracy"]
    assert rescued.metrics["valid"]["outputs"]["label"]["accuracy"] >= floor - 0.05
    assert not any("BASELINE BEATS THE NETWORK on 'label'" in w for w in rescued.metrics.get("baseline_warnings", []))

    spec["train"]["baseline"] = False  # the floor can be turned off: nothing fitted, nothing shown
    quiet = polyfuse.train(spec, data=keyword_table(150).drop(columns=["photo"]), out=tmp_path / "off",
                           show_progress=False)
    assert "baseline" not in quiet.metrics and "baseline_warnings" not in quiet.metrics
    assert "No baseline was fitted" in (tmp_path / "off" / "MODEL_CARD.md").read_text()


def test_audio_baseline_reads_pitch_from_mfcc_statistics():
    rng = np.random.default_rng(1)
    t = np.arange(2000) / 8000
    frame = pd.DataFrame({"sound": [(np.sin(2 * np.pi * (300 + 500 * (i % 2)) * t) + 0.05 * rng.standard_normal(len(t))
                                     ).astype(np.float32) if i % 9 else None for i in range(60)],
                          "label": [["low", "high"][i % 2] for i in range(60)]})
    spec = Spec.model_validate({"inputs": {"sound": {"type": "audio", "sample_rate": 8000, "n_mfcc": 13, "n_mels": 26,
                                                     "max_seconds": 0.25}},
                                "outputs": {"label": {"type": "category"}}})
    pre, train, valid, test = split(spec, frame)
    result = fit_baselines(spec, pre, train, valid, test)
    assert result["inputs"]["sound"]["features"] == 2 * 13 + 1  # mean and std per coefficient, missing flag
    assert result["outputs"]["label"]["all"]["valid"]["accuracy"] >= 10 / 12  # 2 of the 12 clips are missing: guesses


def test_time_series_baseline_reads_the_latest_reading_past_trailing_gaps():
    """The target is the series' last reading: summary statistics alone cannot give it, the latest one can,
    and a gap at the end (a station that did not report) falls back to the reading before it."""
    rng = np.random.default_rng(2)
    series, target = [], []
    for i in range(120):
        x = rng.standard_normal((12, 2)).tolist()
        if i % 4 == 0:
            x[-1] = [None, None]  # the latest hour missing: the one before counts
        series.append(x)
        target.append(x[-1][0] if x[-1][0] is not None else x[-2][0])
    frame = pd.DataFrame({"recent": series, "next": target})
    spec = Spec.model_validate({"inputs": {"recent": {"type": "timeseries", "channels": 2, "length": 12}},
                                "outputs": {"next": {"type": "number"}}})
    pre, train, valid, test = split(spec, frame)
    result = fit_baselines(spec, pre, train, valid, test)
    assert result["inputs"]["recent"]["features"] == 6 * 2 + 1  # six statistics per channel, the missing flag
    assert result["outputs"]["next"]["all"]["valid"]["r2"] > 0.9


def test_without_held_out_rows_nothing_is_fitted_and_nothing_is_shown():
    spec = Spec.model_validate({"inputs": {"note": {"type": "text"}}, "outputs": {"label": {"type": "category"}}})
    pre, train, _, _ = split(spec, keyword_table(30))
    result = fit_baselines(spec, pre, train, None, None)
    assert "no validation or test rows" in result["skipped"]
    assert compare({"outputs": {"label": {"accuracy": 0.1}}}, result, spec) == []
    assert report.baseline_table({"baseline": result}, spec) == ""


def test_compare_reads_over_or_underfitting_from_the_history(fitted):
    spec, result, _ = fitted
    overfit = [{"epoch": e, "train_loss": 1.0 / e, "valid_loss": 1.0 + abs(e - 2) / 10} for e in range(1, 7)]
    assert "overfits: validation loss was lowest at epoch 2" in compare(network_metrics(0.5), result, spec, overfit)[0]
    underfit = [{"epoch": e, "train_loss": 2.0 - e / 20, "valid_loss": 2.0 - e / 20} for e in range(1, 21)]
    assert "underfits" in compare(network_metrics(0.5), result, spec, underfit)[0]


def test_the_same_data_gives_the_same_figures():
    spec = Spec.model_validate(SPEC)
    pre, train, valid, test = split(spec, keyword_table(60, seed=3))
    first, second = (fit_baselines(spec, pre, train, valid, test)["outputs"] for _ in range(2))
    assert first == second


def test_the_summary_aligns_any_input_name():
    """A long input name once ran into its score (`only Positive_Feedback_Countaccuracy 0.8154`)."""
    from types import SimpleNamespace

    from polyfuse.evaluate.report import summary

    long = "Positive_Feedback_Count_of_the_reviewer"
    spec = SimpleNamespace(outputs={"y": SimpleNamespace(type="category")}, inputs={long: 0, "age": 0, "title": 0})
    scores = {long: {"y": 0.8154}, "age": {"y": 0.61}, "title": {"y": 0.9}}
    result = {"outputs": {"y": {"n": 10, "accuracy": 0.9312, "f1_macro": 0.9}},
              "ablation": {"only": scores, "without": scores}}
    rows = [line for line in summary(result, spec).splitlines() if "accuracy" in line]
    assert re.search(rf"only {long} +accuracy 0\.8154", summary(result, spec))
    assert len({line.index("accuracy") for line in rows}) == 1, rows  # one column for every label

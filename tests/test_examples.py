"""The scenario examples' README commands at CI scale (a few hundred rows, two epochs); full-size figures
come from the examples' own runs (their READMEs)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SCENARIOS = ROOT.parent / "shared" / "data" / "scenarios"
CLINC = SCENARIOS / "clinc150"
WHEELS = ROOT / ".cache" / "wheels"  # `make examples-data` puts the medical example's source wheel here
XRAY_WHEEL = WHEELS / "torchxrayvision-1.5.7-py3-none-any.whl"


def ci_spec(example: Path, out: Path, drop: tuple[str, ...] = (), name: str = "spec.yaml", **train) -> Path:
    """The example's spec at CI scale: two epochs, the frozen e5 inputs dropped (they embed in the full run)."""
    spec = yaml.safe_load((example / name).read_text())
    for item in drop:
        spec["inputs"].pop(item)
    spec["train"].update({"epochs": 2, **train})
    (out / name).write_text(yaml.safe_dump(spec))
    return out / name


def run(*args, cwd=None):
    done = subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, cwd=cwd)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.mark.skipif(not (CLINC / "data_full.json").exists(), reason="CLINC150 is not in ../shared/data/scenarios")
def test_chatbot_trains_chooses_its_out_of_scope_threshold_and_serves_with_it(tmp_path):
    example = ROOT / "examples" / "chatbot"
    run(example / "build_data.py", "--out", tmp_path / "data", "--intents", 8)
    spec = yaml.safe_load((example / "spec.yaml").read_text())
    spec["inputs"].pop("text_pretrained")  # CI scale: the n-gram network alone (e5 embeds in the full run)
    spec["train"]["epochs"] = 2
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    run("-m", "polyfuse", "train", tmp_path / "spec.yaml", "--out", tmp_path / "m", "--quiet")
    run(example / "abstain.py", tmp_path / "m", tmp_path / "data", "--min-oos-recall", 0.5, "--spec", tmp_path / "spec.yaml")
    chosen = json.loads((tmp_path / "m.abstain.json").read_text())
    assert 0.02 <= chosen["abstain_below"] <= 0.98 and chosen["abstain_below"] == chosen["min recall"]["abstain_below"]
    assert chosen["min recall"]["validation"]["oos_recall"] >= 0.5
    assert set(chosen["balanced"]["test"]) == {"in_scope_accuracy", "oos_recall"}
    assert chosen["test_without_threshold"]["oos_recall"] == 0.0  # without a threshold nothing is refused
    served = yaml.safe_load((tmp_path / "spec.abstain.yaml").read_text())
    assert served["outputs"]["intent"]["abstain_below"] == chosen["abstain_below"]
    assert "domain" not in served["inputs"]  # the leak the README explains stays out


@pytest.mark.skipif(not (SCENARIOS / "traffic_i94").is_dir(), reason="I-94 traffic is not in ../shared/data/scenarios")
def test_traffic_predicts_the_level_and_the_volume_over_the_previous_hours(tmp_path):
    example = ROOT / "examples" / "traffic"
    run(example / "build_data.py", "--out", tmp_path / "data", "--rows", 300)
    test = pd.read_csv(tmp_path / "data" / "test.csv")
    assert test["time"].min() >= "2018" and len(test) == 300  # split by time: the test hours are 2018's
    assert set(test["level"]) <= {"low", "medium", "high", "peak"}
    spec = ci_spec(example, tmp_path)
    run("-m", "polyfuse", "train", spec, "--out", tmp_path / "m", "--quiet")
    metrics = json.loads((tmp_path / "m" / "metrics.json").read_text())
    assert {"accuracy", "f1_macro"} <= set(metrics["test"]["outputs"]["level"]) and "r2" in metrics["test"]["outputs"]["volume"]
    assert yaml.safe_load((tmp_path / "m" / "spec.yaml").read_text())["fusion"]["method"] == "sequence"
    done = run("-m", "polyfuse", "predict", tmp_path / "m", tmp_path / "data" / "test.csv", "--out", tmp_path / "p.csv")
    predicted = pd.read_csv(tmp_path / "p.csv")
    assert len(predicted) == 300 and predicted["volume"].notna().all(), done.stderr[-2000:]


@pytest.mark.skipif(not (SCENARIOS / "occupancy").is_dir(), reason="occupancy is not in ../shared/data/scenarios")
def test_smarthome_trains_and_answers_a_live_sensor_stream(tmp_path):
    from tests.serving import Server

    example = ROOT / "examples" / "smarthome"
    run(example / "build_data.py", "--out", tmp_path / "data", "--rows", 400)
    train = pd.read_csv(tmp_path / "data" / "train.csv")
    said = train[train["command"].notna()]
    assert said["command"].str.contains("{").sum() == 0 and set(train["action"]) == {"on", "off", "brightness", "color"}
    spec = ci_spec(example, tmp_path, drop=("command_pretrained",))
    run("-m", "polyfuse", "train", spec, "--out", tmp_path / "m", "--quiet")
    server = Server(tmp_path / "m", [], tmp_path)
    try:
        done = run(example / "stream.py", "--url", server.url.replace("http", "ws") + "/v2/stream", "--minutes", 40)
    finally:
        server.stop()
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["answers"] == 40 - 15 and 0.0 <= summary["agree_with_occupancy"] <= 1.0
    assert set(summary["actions"]) <= {"on", "off", "brightness", "color"}


@pytest.mark.skipif(not XRAY_WHEEL.is_file(), reason="the torchxrayvision wheel is not in .cache/wheels "
                    "(make examples-data puts it there)")
def test_medical_reports_deidentified_and_a_private_variant_reports_its_epsilon(tmp_path):
    example = ROOT / "examples" / "medical"
    run(example / "build_data.py", "--wheel", XRAY_WHEEL, "--out", tmp_path / "data", "--rows", 300)
    drop = ("indication_pretrained", "report_pretrained")
    run("-m", "polyfuse", "train", ci_spec(example, tmp_path, drop), "--out", tmp_path / "m", "--quiet")
    metrics = json.loads((tmp_path / "m" / "metrics.json").read_text())
    assert set(metrics["test"]["outputs"]) == {"status", "findings"}
    served = yaml.safe_load((tmp_path / "m" / "spec.yaml").read_text())
    assert served["inputs"]["report"]["deidentify"] is True
    private = ci_spec(example, tmp_path, drop, name="spec.dp.yaml")
    spec = yaml.safe_load(private.read_text())
    spec["train"]["privacy"]["epochs"] = 2  # DP-SGD's own settings would choose ~150 epochs for 210 rows
    spec["train"]["baseline"] = False  # the floor was fitted on the same rows above
    private.write_text(yaml.safe_dump(spec))
    run("-m", "polyfuse", "train", private, "--out", tmp_path / "dp", "--quiet")
    card = (tmp_path / "dp" / "MODEL_CARD.md").read_text()
    assert "ε" in card or "epsilon" in card.lower()


@pytest.mark.skipif(not (SCENARIOS.parent / "avdigits" / "train.csv").is_file(), reason="avdigits is not in ../shared/data")
def test_telephone_transcribes_noisy_calls_with_whisper_and_reads_both(tmp_path):
    pytest.importorskip("ctranslate2", reason="Whisper runs on CTranslate2 (polyfuse[zoo])")
    example = ROOT / "examples" / "telephone"
    done = run(example / "build_data.py", "--out", tmp_path / "data", "--rows", 30)
    train = pd.read_csv(tmp_path / "data" / "train.csv")
    assert len(train) == 30 and set(train["digit"]) == set(range(10)) and (tmp_path / "data" / train["audio"][0]).is_file()
    # Whisper tiny.en names the right digit in some of the noisy clips (about 4 in 10 at full size), never in none
    share = float(done.stdout.split("right digit in ")[1].split("%")[0])
    assert 0 < share < 100, done.stdout
    spec = ci_spec(example, tmp_path, drop=("transcript_pretrained",))
    run("-m", "polyfuse", "train", spec, "--out", tmp_path / "m", "--quiet")
    metrics = json.loads((tmp_path / "m" / "metrics.json").read_text())
    assert metrics["test"]["outputs"]["digit"]["n"] == 30
    assert set(yaml.safe_load((tmp_path / "m" / "spec.yaml").read_text())["inputs"]) == {"audio", "transcript"}

"""The chatbot and traffic examples' README commands at CI scale (a few hundred rows, two epochs); full-size
figures come from benchmarks/examples.py (their READMEs). The other examples: test_examples_*.py."""
from __future__ import annotations

import json

import pandas as pd
import pytest
import yaml

from tests.example_steps import EXAMPLES, SCENARIOS, ci_spec, run


@pytest.mark.skipif(not (SCENARIOS / "clinc150" / "data_full.json").exists(),
                    reason="CLINC150 is not in ../shared/data/scenarios")
def test_chatbot_trains_chooses_its_out_of_scope_threshold_and_serves_with_it(tmp_path):
    example = EXAMPLES / "chatbot"
    run(example / "build_data.py", "--out", tmp_path / "data", "--intents", 8)
    spec = yaml.safe_load((example / "spec.yaml").read_text())
    spec["inputs"].pop("text_pretrained")  # CI scale: the n-gram network alone (e5 embeds in the full run)
    spec["train"]["epochs"] = 2
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    run("-m", "polyfuse", "train", tmp_path / "spec.yaml", "--out", tmp_path / "m", "--quiet")
    run(example / "abstain.py", tmp_path / "m", tmp_path / "data", "--min-oos-recall", 0.5, "--spec", tmp_path / "spec.yaml")
    chosen = json.loads((tmp_path / "m.abstain.json").read_text())
    assert 0.02 <= chosen["abstain_below"] <= 0.98 and chosen["abstain_below"] == chosen["min recall"]["abstain_below"]
    assert chosen["min recall"]["validation"]["oos_recall_lower_bound"] >= 0.5  # the share with a margin for 100 queries
    assert chosen["min recall"]["validation"]["oos_recall"] > chosen["min recall"]["validation"]["oos_recall_lower_bound"]
    assert set(chosen["balanced"]["test"]) == {"in_scope_accuracy", "oos_recall"}
    assert chosen["test_without_threshold"]["oos_recall"] == 0.0  # without a threshold nothing is refused
    run(example / "speak.py", tmp_path / "m", tmp_path / "data", "--per-intent", 2, "--oos", 6,
        "--abstain-below", chosen["abstain_below"])
    heard = json.loads((tmp_path / "m.spoken.json").read_text())
    assert (heard["queries"], heard["oos_queries"]) == (16, 6)  # 2 of each of the 8 intents
    spoken = pd.read_csv(tmp_path / "data" / "spoken_test.csv", keep_default_na=False)
    assert all((tmp_path / "data" / a).stat().st_size > 8000 for a in spoken["audio"])  # half a second or more
    assert heard["word_error_rate"] < 0.6  # Whisper hears most of eSpeak's words (unrelated text: ~1.0)
    assert set(spoken["typed"]) <= set(pd.read_csv(tmp_path / "data" / "test.csv", keep_default_na=False)["text"])
    assert 0 <= heard["spoken"]["in_scope_accuracy"] <= 1 and 0 <= heard["spoken"]["oos_recall"] <= 1
    served = yaml.safe_load((tmp_path / "spec.abstain.yaml").read_text())
    assert served["outputs"]["intent"]["abstain_below"] == chosen["abstain_below"]
    assert "domain" not in served["inputs"]  # the leak the README explains stays out


@pytest.mark.skipif(not (SCENARIOS / "traffic_i94").is_dir(), reason="I-94 traffic is not in ../shared/data/scenarios")
def test_traffic_predicts_the_level_and_the_volume_over_the_previous_hours(tmp_path):
    example = EXAMPLES / "traffic"
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

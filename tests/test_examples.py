"""The scenario examples' README commands at CI scale (a few hundred rows, two epochs); full-size figures
come from the examples' own runs (their READMEs)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CLINC = ROOT.parent / "shared" / "data" / "scenarios" / "clinc150"


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

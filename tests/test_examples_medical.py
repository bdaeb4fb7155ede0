"""The medical example's README commands at CI scale: de-identified reports and the DP-SGD variant."""
from __future__ import annotations

import json

import pytest
import yaml

from tests.example_steps import EXAMPLES, XRAY_WHEEL, ci_spec, run


@pytest.mark.skipif(not XRAY_WHEEL.is_file(), reason="the torchxrayvision wheel is not in .cache/wheels "
                    "(make examples-data puts it there)")
def test_medical_reports_deidentified_and_a_private_variant_reports_its_epsilon(tmp_path):
    example = EXAMPLES / "medical"
    run(example / "build_data.py", "--wheel", XRAY_WHEEL, "--out", tmp_path / "data", "--rows", 300)
    drop = ("indication_pretrained", "report_pretrained")
    # the network alone: the linear members' 13 per-finding fits took ~25 s of this test's ~100 (the mix is
    # tested in tests/test_ensemble.py; the example's full run keeps it)
    run("-m", "polyfuse", "train", ci_spec(example, tmp_path, drop, ensemble="off"), "--out", tmp_path / "m", "--quiet")
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

"""The issue's reference spec on the real avdigits data (skipped where ../shared/data is absent)."""
import json
import shutil
from pathlib import Path

import polyfuse
from tests.conftest import need_avdigits

REPO = Path(__file__).resolve().parents[1]


def test_reference_spec_trains_fast_and_accurately(tmp_path):
    need_avdigits()
    model = polyfuse.train(REPO / "avdigits.yaml", out=tmp_path / "av", show_progress=False)
    metrics = json.loads((tmp_path / "av" / "metrics.json").read_text())
    test = metrics["test"]
    assert test["outputs"]["label"]["accuracy"] >= 0.99
    assert metrics["train_seconds"] < 120
    assert set(test["ablation"]["only"]) == {"image", "audio"}
    # each input alone still works (modality dropout), though worse than both together
    for name in ("image", "audio"):
        assert 0.5 < test["ablation"]["only"][name]["label"] <= test["outputs"]["label"]["accuracy"]
    assert model.metrics["sizes"]["test"] == 200

"""The smart-home and telephone-speech examples' README commands at CI scale (their sensors and sound)."""
from __future__ import annotations

import json

import pandas as pd
import pytest
import yaml

from tests.example_steps import EXAMPLES, SCENARIOS, ci_spec, run


@pytest.mark.skipif(not (SCENARIOS / "occupancy").is_dir(), reason="occupancy is not in ../shared/data/scenarios")
def test_smarthome_trains_and_answers_a_live_sensor_stream(tmp_path):
    from tests.serving import Server

    example = EXAMPLES / "smarthome"
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


@pytest.mark.skipif(not (SCENARIOS.parent / "avdigits" / "train.csv").is_file(),
                    reason="avdigits is not in ../shared/data")
def test_telephone_transcribes_noisy_calls_with_whisper_and_reads_both(tmp_path):
    pytest.importorskip("ctranslate2", reason="Whisper runs on CTranslate2 (polyfuse[examples])")
    example = EXAMPLES / "telephone"
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

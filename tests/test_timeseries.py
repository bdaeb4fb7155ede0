"""The timeseries input: decoding each cell kind, bad inputs, resampling and windows, training,
save/load, ONNX parity and the torch-free runtime on inline arrays."""
import json
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from polyfuse.errors import BadInputError
from polyfuse.preprocess import timeseries as ts
from polyfuse.spec.inputs import TimeseriesAugment
from polyfuse.spec.schema import load_spec

FREQS = {"slow": 1.0, "mid": 2.5, "fast": 5.0}  # cycles per 64-step series


def cfg(**kw):
    base = dict(channels=2, sample_rate=10.0, resample_to=None, length=16, window="head", max_steps=1000,
                augment=TimeseriesAugment())
    base.update(kw)
    c = SimpleNamespace(**base)
    c.n_channels = c.channels if isinstance(c.channels, int) else len(c.channels)
    return c


def wave(label: str, rng, steps: int = 64) -> np.ndarray:
    t = np.arange(steps) / steps
    f = FREQS[label]
    phase = rng.uniform(0, 2 * np.pi)
    x = np.stack([np.sin(2 * np.pi * f * t + phase), np.cos(2 * np.pi * f * t + phase)], 1)
    return (x + 0.1 * rng.standard_normal(x.shape)).astype(np.float32)


def make_table(folder: Path, n: int = 90, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        label = list(FREQS)[i % 3]
        x = wave(label, rng)
        if i % 5 == 0:
            x[10:14] = np.nan  # a gap
        path = folder / f"s{i}.npy"
        if i % 7 == 3:  # some as CSV files with a header and an empty-cell gap
            path = folder / f"s{i}.csv"
            pd.DataFrame(x, columns=["ax", "ay"]).to_csv(path, index=False)
        else:
            np.save(path, x)
        rows.append({"motion": path.name, "label": label})
    (folder / "broken.npy").write_bytes(b"\x93NUMPY garbage")
    rows.append({"motion": "broken.npy", "label": "slow"})
    table = folder / "table.csv"
    pd.DataFrame(rows).to_csv(table, index=False)
    return table


def spec(table: Path, encoder: str = "cnn1d", length: int = 64, **train) -> dict:
    return {"data": {"train": str(table), "split": {"valid": 0.2, "test": 0.2, "seed": 0}},
            "inputs": {"motion": {"type": "timeseries", "channels": 2, "sample_rate": 64, "length": length,
                                  "encoder": encoder, "dim": 32, "augment": {"jitter": 0.05}}},
            "outputs": {"label": {"type": "category"}},
            "train": {"epochs": 12, "batch_size": 16, "lr": 3e-3, "seed": 0, "threads": 1, "baseline": False,
                      "calibrate": False, **train}}


def test_decode_cell_kinds_and_gaps(tmp_path):
    x = np.arange(12, dtype=np.float32).reshape(6, 2)
    x[2, 0] = np.nan
    np.save(tmp_path / "a.npy", x)
    (tmp_path / "a.csv").write_text("ax,ay\n0,1\n2,3\n,5\n6,7\n8,9\n10,11\n")
    pd.DataFrame(x, columns=["ax", "ay"]).to_parquet(tmp_path / "a.parquet")
    c = cfg()
    for cell in ("a.npy", "a.csv", "a.parquet", x, x.tolist(), json.dumps(np.nan_to_num(x, nan=4).tolist())):
        got = ts.decode(cell, c, tmp_path)
        assert got.shape == (6, 2) and got.dtype == np.float32
        assert np.allclose(np.nan_to_num(got, nan=4), np.nan_to_num(x, nan=4))
    # named channels pick and order file columns; one channel from a flat list
    assert np.allclose(ts.decode("a.csv", cfg(channels=["ay"]), tmp_path)[:, 0], x[:, 1])
    assert ts.decode([1, 2, 3], cfg(channels=1), tmp_path).shape == (3, 1)


def test_bad_inputs_name_file_and_reason(tmp_path):
    (tmp_path / "three.csv").write_text("1,2,3\n4,5,6\n")
    (tmp_path / "words.csv").write_text("1,2\n3,oops\n")
    (tmp_path / "empty.csv").write_text("")
    (tmp_path / "bad.npy").write_bytes(b"not numpy at all")
    (tmp_path / "nan.csv").write_text("a,b\n,\nnan,nan\n")
    np.save(tmp_path / "long.npy", np.zeros((50, 2), np.float32))
    cases = {"three.csv": "'three.csv' has 3 channels, expected 2", "words.csv": "non-numeric value 'oops' on line 2",
             "empty.csv": "'empty.csv' is empty", "bad.npy": "'bad.npy' could not be read as .npy",
             "nan.csv": "no readings", "long.npy": "50 steps, over the limit of 40",
             "nowhere.npy": "not found"}
    for name, message in cases.items():
        with pytest.raises(BadInputError, match=message):
            ts.decode(name, cfg(max_steps=40), tmp_path)
    with pytest.raises(BadInputError, match="no header row, but channels name columns"):
        ts.decode("three.csv", cfg(channels=["gz"]), tmp_path)
    (tmp_path / "named.csv").write_text("ax,ay\n1,2\n")
    with pytest.raises(BadInputError, match="'named.csv' lacks the columns \\['gz'\\]"):
        ts.decode("named.csv", cfg(channels=["gz"]), tmp_path)
    with pytest.raises(BadInputError, match="expected \\[steps\\] or \\[steps, channels\\]"):
        ts.decode(np.zeros((2, 2, 2)), cfg(), tmp_path)


def test_resample_window_pad_and_standardise():
    x = np.stack([np.arange(11), np.arange(11) * 2], 1).astype(np.float32)
    up = ts.resample(x, 10, 20)
    assert up.shape == (21, 2) and np.allclose(up[:, 0], np.arange(21) / 2)
    x[4] = np.nan
    assert np.isnan(ts.resample(x, 10, 5)[2]).all()  # the step on the gap stays a gap
    c = cfg(length=8, window="tail")
    state = ts.fit([x, None], c)
    assert np.allclose(state["mean"], [np.nanmean(x[:, 0]), np.nanmean(x[:, 1])], atol=1e-4)
    out = ts.collate([x, x[:3], None], c, state, False, None)
    assert out[""].shape == (3, 8, 2) and out["mask"].shape == (3, 8)
    assert np.allclose(out[""][0, -1] * np.array(state["std"]) + state["mean"], x[-1], atol=1e-4)  # tail window
    assert out["mask"][1].tolist() == [1, 1, 1, 0, 0, 0, 0, 0] and out["length"].tolist() == [7, 3, 0]  # the tail window holds the gap
    assert out["present"].tolist() == [True, True, False] and not out[""][1, 3:].any()
    head = ts.collate([x], cfg(length=8, window="center"), state, False, None)
    assert head["mask"][0].tolist() == [1, 1, 1, 0, 1, 1, 1, 1]  # center: steps 1..8, the gap at 4
    aug = cfg(length=8, augment=TimeseriesAugment(jitter=0.1, random_crop=True))
    a = ts.collate([x], aug, state, True, np.random.default_rng(0))
    assert a[""].shape == (1, 8, 2) and ts.augments(aug)
    from polyfuse.evaluate.corruptions import for_input, series_gaps

    holed = series_gaps(np.ones((20, 2), np.float32), 0.25, np.random.default_rng(0))
    assert np.isnan(holed[:, 0]).sum() == 5 and [c.name for c in for_input(SimpleNamespace(type="timeseries"))] == [
        "gaps", "drop"]


def test_spec_fields_and_errors():
    s, _ = load_spec({"inputs": {"imu": {"type": "timeseries", "channels": ["ax", "ay"], "sample_rate": 50,
                                         "resample_to": 25, "length": 100, "window": "center",
                                         "encoder": "transformer"}},
                      "outputs": {"y": {"type": "category"}}})
    assert s.inputs["imu"].n_channels == 2
    from polyfuse.errors import SpecError

    with pytest.raises(SpecError, match="inputs.imu.encoder: expected one of"):
        load_spec({"inputs": {"imu": {"type": "timeseries", "encoder": "cnn"}}, "outputs": {"y": {"type": "number"}}})


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    import polyfuse

    folder = tmp_path_factory.mktemp("ts")
    table = make_table(folder)
    out = folder / "model"
    model = polyfuse.train(spec(table), out=out, show_progress=False)
    return model, out, folder, table


def test_training_learns_and_skips_the_corrupt_file(trained):
    model, out, folder, table = trained
    metrics = json.loads((out / "metrics.json").read_text())
    text = json.dumps(metrics)
    assert "broken.npy" in text or any("broken.npy" in str(b) for b in getattr(model, "bad_rows", []))
    acc = [v for k, v in _flatten(metrics).items() if k.endswith("accuracy") and "test" in k]
    assert acc and max(acc) >= 0.9, metrics


def _flatten(d, prefix=""):
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        elif isinstance(v, (int, float)):
            out[f"{prefix}{k}"] = v
    return out


@pytest.mark.parametrize("encoder", ["gru", "transformer"])
def test_other_encoders_train_and_export(tmp_path, encoder):
    import polyfuse
    from polyfuse.deploy.exporter import export

    table = make_table(tmp_path, n=30)
    polyfuse.train(spec(table, encoder, length=16, epochs=1), out=tmp_path / "m", show_progress=False)
    export(tmp_path / "m", data=table)
    entry = json.loads((tmp_path / "m" / "exports.json").read_text())["model.onnx"]
    assert entry["verification"]["passed"]


def test_save_load_onnx_parity_and_torch_free_runtime(trained, tmp_path):
    import polyfuse
    from polyfuse.deploy.exporter import export

    model, out, folder, table = trained
    rng = np.random.default_rng(5)
    records = [{"motion": wave(lab, rng)} for lab in FREQS]
    records[0]["motion"][5:9] = np.nan
    loaded = polyfuse.load(out)
    ref = model.predict_proba(records).to_numpy()
    assert np.abs(loaded.predict_proba(records).to_numpy() - ref).max() < 1e-6
    assert loaded.predict(records)["label"].tolist() == list(FREQS)
    export(out, data=table)
    entry = json.loads((out / "exports.json").read_text())["model.onnx"]
    assert entry["verification"]["passed"] and entry["verification"]["max_abs_diff"] <= 1e-4
    np.save(tmp_path / "recs.npy", np.stack([r["motion"] for r in records]))
    code = textwrap.dedent(f"""
        import sys, json
        sys.modules['torch'] = None
        import numpy as np
        from polyfuse.runtime import Runtime
        series = np.load({str(tmp_path / 'recs.npy')!r})
        rt = Runtime({str(out)!r})
        records = [{{"motion": s.tolist()}} for s in series]  # inline lists of lists, as JSON would send
        print(json.dumps(rt.predict_proba(records)["label"].tolist()))
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert np.abs(np.array(json.loads(done.stdout.strip().splitlines()[-1])) - ref).max() <= 1e-4


def test_init_proposes_a_timeseries_input(tmp_path):
    from polyfuse.autospec.infer import guess_spec
    from polyfuse.autospec.spec_yaml import init_yaml

    table = make_table(tmp_path, n=30)
    spec_ = guess_spec(table)
    entry = spec_["inputs"]["motion"]
    assert entry["type"] == "timeseries" and entry["channels"] == 2 and entry["length"] == 64
    text = init_yaml(table)
    assert "unreadable" in text and "set the true rate" in text
    load_spec(spec_)


def test_server_takes_arrays_and_base64_files_never_server_paths():
    import base64
    import io

    from polyfuse.preprocess.budget import UNLIMITED
    from polyfuse.serve.requests import RequestError, clean_record

    s, _ = load_spec({"inputs": {"imu": {"type": "timeseries", "channels": 2}}, "outputs": {"y": {"type": "number"}}})
    got = clean_record({"imu": [[1, 2], [None, 3]]}, 0, s, UNLIMITED)["imu"]
    assert got.shape == (2, 2) and np.isnan(got[1, 0])
    buf = io.BytesIO()
    np.save(buf, np.ones((4, 2), np.float32))
    raw = clean_record({"imu": base64.b64encode(buf.getvalue()).decode()}, 0, s, UNLIMITED)["imu"]
    assert ts.decode(raw, s.inputs["imu"], Path("/nonexistent")).shape == (4, 2)
    with pytest.raises(RequestError, match="not valid base64"):
        clean_record({"imu": "/etc/passwd"}, 0, s, UNLIMITED)
    with pytest.raises(RequestError, match="expected an array of readings"):
        clean_record({"imu": [["a", "b"]]}, 0, s, UNLIMITED)

"""fusion.method sequence (MM-RNN): two sensors of different lengths resampled onto one grid, a
number input joined to the RNN state; training, the mask property, missing inputs, ONNX, spec errors."""
import json

import numpy as np
import pandas as pd
import pytest
import torch

from polyfuse.errors import SpecError
from polyfuse.nn.sequence_fusion import to_grid
from polyfuse.spec.schema import load_spec
from tests.test_timeseries import _flatten


def signal(kind: str, steps: int, rng) -> np.ndarray:
    t = np.arange(steps) / steps
    s = np.sin(2 * np.pi * 3 * t + rng.uniform(0, 2 * np.pi))
    x = np.sign(s) if kind == "square" else s
    return (x + 0.1 * rng.standard_normal(steps)).astype(np.float32)[:, None]


def make_table(folder, n: int = 80, seed: int = 0):
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        label = ("sine", "square")[i % 2]
        a = signal(label, int(rng.integers(24, 33)), rng)  # shorter than the length: padded, masked
        np.save(folder / f"a{i}.npy", a)
        row = {"a": f"a{i}.npy", "b": "", "n": float(rng.standard_normal()), "label": label}
        if i % 6 != 5:  # sensor b missing on every sixth row
            np.save(folder / f"b{i}.npy", signal(label, 48, rng))
            row["b"] = f"b{i}.npy"
        rows.append(row)
    table = folder / "table.csv"
    pd.DataFrame(rows).to_csv(table, index=False)
    return table


def spec(table, rnn: str = "gru", epochs: int = 10, encoder: str = "cnn1d") -> dict:
    return {"data": {"train": str(table), "split": {"valid": 0.2, "test": 0.2, "seed": 0}},
            "inputs": {"a": {"type": "timeseries", "channels": 1, "length": 32, "encoder": encoder, "dim": 16},
                       "b": {"type": "timeseries", "channels": 1, "length": 48, "encoder": encoder, "dim": 16},
                       "n": {"type": "number", "dim": 8}},
            "fusion": {"method": "sequence", "rnn": rnn, "steps": 8, "dim": 32},
            "outputs": {"label": {"type": "category"}},
            "train": {"epochs": epochs, "batch_size": 16, "lr": 3e-3, "seed": 0, "threads": 1, "baseline": False,
                      "calibrate": False}}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    import polyfuse

    folder = tmp_path_factory.mktemp("seqfusion")
    table = make_table(folder)
    out = folder / "model"
    model = polyfuse.train(spec(table), out=out, show_progress=False)
    return model, out, folder, table


def _batch(model, folder, n: int = 6, seed: int = 3):
    rng = np.random.default_rng(seed)
    records = [{"a": signal(k, 28, rng), "b": signal(k, 48, rng), "n": 0.5} for k in ("sine", "square") * (n // 2)]
    batch, _ = model.preprocessor.transform(records, folder)
    return {k: torch.from_numpy(v) for k, v in batch.items()}


def _out(model, batch):
    model.net.eval()
    with torch.no_grad():
        return model.net(batch)["label"]


def test_spec_needs_a_time_aligned_input():
    with pytest.raises(SpecError, match="fusion.method: sequence needs at least one time-aligned input.*x \\(number\\)"):
        load_spec({"inputs": {"x": {"type": "number"}}, "fusion": {"method": "sequence"},
                   "outputs": {"y": {"type": "binary"}}})
    s, _ = load_spec({"inputs": {"x": {"type": "timeseries"}}, "fusion": {"method": "sequence", "rnn": "lstm"},
                      "outputs": {"y": {"type": "binary"}}})
    assert s.fusion.steps == 16 and s.fusion.rnn == "lstm"
    with pytest.raises(SpecError, match="fusion.rnn"):
        load_spec({"inputs": {"x": {"type": "timeseries"}}, "fusion": {"method": "sequence", "rnn": "tcn"},
                   "outputs": {"y": {"type": "binary"}}})


def test_grid_averages_equal_fractions_of_the_valid_span():
    seq = torch.arange(8, dtype=torch.float32).reshape(1, 8, 1).repeat(3, 1, 1)
    mask = torch.tensor([[1] * 8, [1] * 4 + [0] * 4, [0] * 8], dtype=torch.float32)
    grid, cell = to_grid(seq, mask, 4)
    assert grid[0, :, 0].tolist() == [0.5, 2.5, 4.5, 6.5]
    assert grid[1, :, 0].tolist() == [0.0, 1.0, 2.0, 3.0]  # 4 real steps stretched over 4 cells
    assert cell.tolist() == [[1.0] * 4, [1.0] * 4, [0.0] * 4] and not grid[2].any()
    up, cell = to_grid(seq[1:2], mask[1:2], 8)  # upsampling: each step fills two cells
    assert up[0, :, 0].tolist() == [0, 0, 1, 1, 2, 2, 3, 3] and cell.all()
    gap = torch.tensor([[1, 1, 0, 0, 0, 0, 1, 1]], dtype=torch.float32)
    g, cell = to_grid(seq[:1], gap, 4)  # a gap inside the span: its cells are masked
    assert cell.tolist() == [[1.0, 0.0, 0.0, 1.0]] and g[0, :, 0].tolist() == [0.5, 0.0, 0.0, 6.5]


def test_training_learns(trained):
    model, out, _, _ = trained
    metrics = json.loads((out / "metrics.json").read_text())
    acc = [v for k, v in _flatten(metrics).items() if k.endswith("accuracy") and "test" in k]
    assert acc and max(acc) >= 0.85, metrics


def test_masked_steps_change_nothing(trained):
    model, _, folder, _ = trained
    batch = _batch(model, folder)
    assert (batch["a__mask"] == 0).any()  # a is shorter than its length: padded
    ref = _out(model, batch)
    noisy = dict(batch)
    for name in ("a", "b"):
        pad = (batch[f"{name}__mask"] == 0).unsqueeze(-1)
        noisy[name] = torch.where(pad, torch.randn_like(batch[name]) * 5, batch[name])
    assert torch.equal(_out(model, noisy), ref)
    real = dict(batch)
    real["a"] = batch["a"] + 1.0 * (batch["a__mask"] == 1).unsqueeze(-1)  # a real step does count
    assert not torch.allclose(_out(model, real), ref)


def test_missing_input_is_zeroed_and_masked(trained):
    model, _, folder, _ = trained
    batch = _batch(model, folder)
    gone = dict(batch)
    gone["b__present"] = torch.zeros_like(batch["b__present"])
    ref = _out(model, gone)
    gone["b"] = torch.randn_like(batch["b"])  # whatever its tensor holds, an absent input is ignored
    assert torch.equal(_out(model, gone), ref)
    probs = model.predict_proba([{"a": signal("square", 30, np.random.default_rng(1)), "n": 0.1},
                                 {"b": signal("sine", 48, np.random.default_rng(2))}]).to_numpy()
    assert probs.shape == (2, 2) and np.isfinite(probs).all()


def test_onnx_export_passes_parity_and_runs(trained, tmp_path):
    import onnxruntime as ort

    from polyfuse.deploy.exporter import export
    from polyfuse.deploy.onnx import onnx_probabilities

    model, out, folder, table = trained
    export(out, data=table)
    entry = json.loads((out / "exports.json").read_text())["model.onnx"]
    assert entry["verification"]["passed"] and entry["verification"]["max_abs_diff"] <= 1e-4
    batch = {k: v.numpy() for k, v in _batch(model, folder).items()}
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    got = onnx_probabilities(session, batch)["label"]
    ref = torch.softmax(_out(model, {k: torch.from_numpy(v) for k, v in batch.items()}), -1).numpy()
    assert np.abs(got - ref).max() <= 1e-4


def test_lstm_trains_and_exports(tmp_path):
    import polyfuse
    from polyfuse.deploy.exporter import export

    table = make_table(tmp_path, n=30)
    # cnn1d encoders: torch.export unrolls a recurrent layer step by step, and a GRU over the 32 + 48 samples
    # took 45 s to export (test_timeseries exports the GRU encoder on its own)
    polyfuse.train(spec(table, "lstm", epochs=1), out=tmp_path / "m", show_progress=False)
    export(tmp_path / "m", data=table)
    entry = json.loads((tmp_path / "m" / "exports.json").read_text())["model.onnx"]
    assert entry["verification"]["passed"]


@pytest.mark.parametrize("video_encoder, audio_encoder, rnn", [("cnn_pool", "cnn", "gru"), ("cnn_gru", "cnn_lstm", "lstm"),
                                                               ("cnn3d", "cnn", "gru")])
def test_video_audio_and_series_on_one_grid(video_encoder, audio_encoder, rnn):
    """Video and audio encoders give per-frame sequences too; padded frames and missing inputs change nothing."""
    from polyfuse.nn.model import FusionModel

    s, _ = load_spec({"inputs": {"v": {"type": "video", "max_frames": 5, "size": 16, "encoder": video_encoder, "dim": 8},
                                 "s": {"type": "timeseries", "channels": 2, "length": 12, "encoder": "transformer",
                                       "dim": 8},
                                 "au": {"type": "audio", "encoder": audio_encoder, "dim": 8},
                                 "c": {"type": "category", "dim": 4}},
                      "fusion": {"method": "sequence", "rnn": rnn, "steps": 4, "dim": 16},
                      "outputs": {"y": {"type": "category"}}})
    net = FusionModel(s, {"v": {}, "s": {"mean": [0.0, 0.0]}, "au": {"mean": [0.0] * 6}, "c": {"vocab": ["<unk>", "a", "b"]},
                          "y": {"classes": ["p", "q", "r"]}}).eval()
    g = torch.Generator().manual_seed(0)
    vmask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 1, 0, 0, 0]], dtype=torch.float32)
    smask = torch.tensor([[1] * 12, [1] * 7 + [0] * 5, [1] * 3 + [0] * 9], dtype=torch.float32)
    batch = {"v": torch.randn(3, 5, 3, 16, 16, generator=g) * vmask[:, :, None, None, None],
             "v__mask": vmask, "v__length": vmask.sum(1).long(), "v__present": torch.tensor([True, True, True]),
             "s": torch.randn(3, 12, 2, generator=g) * smask[:, :, None], "s__mask": smask,
             "s__length": smask.sum(1).long(), "s__present": torch.tensor([True, True, False]),
             "au": torch.randn(3, 24, 6, generator=g), "au__length": torch.tensor([24, 16, 9]),
             "au__present": torch.tensor([True, True, True]),
             "c": torch.tensor([1, 2, 0]), "c__present": torch.tensor([True, True, True])}
    with torch.no_grad():
        ref = net(batch)["y"]
        assert ref.shape == (3, 3) and torch.isfinite(ref).all()
        noisy = dict(batch)
        noisy["v"] = torch.where(vmask[:, :, None, None, None] == 0, torch.randn_like(batch["v"]), batch["v"])
        noisy["s"] = torch.where(smask[:, :, None] == 0, torch.randn_like(batch["s"]), batch["s"])
        noisy["s"][2] = torch.randn(12, 2)  # row 2's series is missing altogether
        audio_pad = torch.arange(24)[None, :, None] >= batch["au__length"][:, None, None]
        noisy["au"] = torch.where(audio_pad, torch.randn_like(batch["au"]), batch["au"])
        assert torch.allclose(net(noisy)["y"], ref, atol=1e-6)
        assert net.fusion.temporal[2] == 128  # the audio input is on the grid


def test_private_training_is_refused_with_the_layer_named(tmp_path):
    import polyfuse

    table = make_table(tmp_path, n=20)
    s = spec(table, epochs=1)
    s["train"]["privacy"] = {"epsilon": 5.0}
    with pytest.raises(SpecError, match=r"train.privacy: layer `fusion.cell` \(GRUCell\)"):
        polyfuse.train(s, out=tmp_path / "x", show_progress=False)

"""Video inputs: decoding and frame sampling (PyAV), bad files, masks, training, ONNX export, audio tracks."""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from polyfuse.errors import BadInputError
from polyfuse.preprocess import video as vid
from polyfuse.preprocess.video import write_video
from polyfuse.spec.schema import load_spec
from tests.test_timeseries import _flatten

av = pytest.importorskip("av")


def square_clip(side: str, n: int = 8, size: int = 32, rng=None) -> list[np.ndarray]:
    """A bright square moving down the left or the right half of the frame."""
    rng = rng or np.random.default_rng(0)
    x0 = int(rng.integers(0, size // 2 - 8)) + (size // 2 if side == "right" else 0)
    out = []
    for i in range(n):
        img = np.full((size, size, 3), 20, np.uint8)
        y = i * (size - 8) // max(1, n - 1)
        img[y:y + 8, x0:x0 + 8] = 235
        out.append(img)
    return out


def flat_clip(values: list[int], size: int = 32) -> list[np.ndarray]:
    return [np.full((size, size, 3), v, np.uint8) for v in values]


def cfg(**kw):
    base = dict(fps=4.0, max_frames=6, size=16, mean=None, std=None)
    base.update(kw)
    return SimpleNamespace(**base)


def test_decode_shapes_sampling_and_mask(tmp_path):
    write_video(tmp_path / "a.mp4", square_clip("right"), fps=8)  # 1 s: samples at 0, .25, .5, .75
    x = vid.decode("a.mp4", cfg(), tmp_path)
    assert x.shape == (4, 16, 16, 3) and x.dtype == np.uint8
    both = vid.decode("a.mp4", cfg(fps=8.0, max_frames=4), tmp_path)  # 8 frames -> 4 spread evenly
    assert both.shape == (4, 16, 16, 3)
    state = vid.fit([x, None], cfg())
    batch = vid.collate([x, None, x[:2]], cfg(), state, False, None)
    assert batch[""].shape == (3, 6, 3, 16, 16)
    assert batch["mask"].tolist() == [[1, 1, 1, 1, 0, 0], [0] * 6, [1, 1, 0, 0, 0, 0]]
    assert batch["length"].tolist() == [4, 0, 2] and batch["present"].tolist() == [True, False, True]
    assert np.all(batch[""][0, 4:] == 0) and np.all(batch[""][1] == 0)
    # non-square frames are center-cropped
    write_video(tmp_path / "wide.mp4", [np.zeros((32, 64, 3), np.uint8)] * 4, fps=4)
    assert vid.decode("wide.mp4", cfg(), tmp_path).shape == (4, 16, 16, 3)


def test_augment_is_drawn_once_per_clip_and_only_in_training():
    from polyfuse.spec.inputs import ImageAugment

    clip = np.full((5, 16, 16, 3), 200, np.uint8)
    c = cfg(max_frames=5, augment=ImageAugment(erase=1.0, flip=True))
    state = vid.fit([clip], cfg())
    rng = np.random.default_rng(0)
    batch = vid.collate([clip] * 8, c, state, True, rng)[""]
    dark = batch.min() == batch  # erased pixels: 0 before normalisation, the batch minimum after it
    for clip_x, erased in zip(batch, dark):
        assert erased.any() and not erased.all()  # a rectangle, not the whole frame
        assert all(np.array_equal(erased[0], e) for e in erased[1:])  # the same occluder on every frame
    assert not all(np.array_equal(dark[0], d) for d in dark[1:])  # clips differ from each other
    clean = vid.collate([clip] * 2, c, state, False, rng)[""]
    assert np.ptp(clean) == 0  # evaluation: untouched


def test_variable_frame_rate_is_sampled_by_timestamp(tmp_path):
    # frames at 0, .1, .2 (greys 40/80/120), then nothing until 1.0 (200) and 1.1 (240)
    times, greys = [0.0, 0.1, 0.2, 1.0, 1.1], [40, 80, 120, 200, 240]
    write_video(tmp_path / "vfr.mkv", flat_clip(greys), times=times)
    x = vid.decode("vfr.mkv", cfg(max_frames=16), tmp_path)
    seen = x.reshape(len(x), -1).mean(1)
    # at 0 -> 40; .25, .5, .75 -> the .2 frame (120); 1.0 -> 200
    expect = [40, 120, 120, 120, 200]
    assert len(seen) >= 5 and np.allclose(seen[:5], expect, atol=12), seen


def test_bad_files_are_bad_inputs(tmp_path):
    path = write_video(tmp_path / "ok.mp4", square_clip("left"), fps=8)
    data = path.read_bytes()
    (tmp_path / "cut.mp4").write_bytes(data[: len(data) // 3])
    (tmp_path / "noise.mp4").write_bytes(np.random.default_rng(0).bytes(4000))
    for name in ("cut.mp4", "noise.mp4"):
        with pytest.raises(BadInputError, match=name):
            vid.decode(name, cfg(), tmp_path)
    with pytest.raises(BadInputError, match="not found"):
        vid.decode("missing.mp4", cfg(), tmp_path)
    wav = tmp_path / "sound.wav"
    import soundfile as sf

    sf.write(wav, np.sin(np.arange(8000) / 5).astype(np.float32), 8000)
    with pytest.raises(BadInputError, match="no video stream"):
        vid.decode("sound.wav", cfg(), tmp_path)
    assert vid.decode(data, cfg(), tmp_path).shape[0] == 4  # bytes work too


def test_spec_fields_and_errors():
    from polyfuse.errors import SpecError

    s, _ = load_spec({"inputs": {"clip": {"type": "video"}}, "outputs": {"y": {"type": "category"}}})
    c = s.inputs["clip"]
    assert (c.fps, c.max_frames, c.size, c.encoder) == (4.0, 16, 64, "cnn_pool")
    with pytest.raises(SpecError, match="inputs.clip.encoder: expected one of"):
        load_spec({"inputs": {"clip": {"type": "video", "encoder": "cnn"}}, "outputs": {"y": {"type": "number"}}})
    with pytest.raises(SpecError, match="inputs.clip.max_frames"):
        load_spec({"inputs": {"clip": {"type": "video", "max_frames": 0}}, "outputs": {"y": {"type": "number"}}})


def test_audio_track_of_a_video(tmp_path):
    from polyfuse.preprocess import audio

    t = np.arange(16000) / 16000
    write_video(tmp_path / "talk.mp4", square_clip("right"), fps=8, audio=0.5 * np.sin(2 * np.pi * 440 * t))
    write_video(tmp_path / "mute.mp4", square_clip("right"), fps=8)
    s, _ = load_spec({"inputs": {"clip": {"type": "video"},
                                 "sound": {"type": "audio", "column": "clip", "track": "audio", "sample_rate": 8000}},
                      "outputs": {"y": {"type": "category"}}})
    wave = audio.decode("talk.mp4", s.inputs["sound"], tmp_path)
    assert wave.dtype == np.float32 and abs(len(wave) - 8000) < 800 and np.abs(wave).max() == pytest.approx(1.0)
    spectrum = np.abs(np.fft.rfft(wave[:4000]))
    assert abs(np.argmax(spectrum) * 8000 / 4000 - 440) < 10
    with pytest.raises(BadInputError, match="no audio track"):
        audio.decode("mute.mp4", s.inputs["sound"], tmp_path)


def make_table(folder: Path, n: int = 24) -> Path:
    rng = np.random.default_rng(1)
    rows = []
    for i in range(n):
        label = "left" if i % 2 else "right"
        write_video(folder / f"c{i}.mp4", square_clip(label, n=8 + (i % 3) * 4, rng=rng), fps=8)
        rows.append({"clip": f"c{i}.mp4", "label": label})
    (folder / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 not really a video")
    rows.append({"clip": "broken.mp4", "label": "left"})
    table = folder / "table.csv"
    pd.DataFrame(rows).to_csv(table, index=False)
    return table


def spec(table: Path, encoder: str, epochs: int, baseline: bool = False) -> dict:
    return {"data": {"train": str(table), "split": {"valid": 0.2, "test": 0.2, "seed": 0}},
            "inputs": {"clip": {"type": "video", "fps": 4, "max_frames": 6, "size": 16, "encoder": encoder,
                                "dim": 32}},
            "outputs": {"label": {"type": "category"}},
            "train": {"epochs": epochs, "batch_size": 8, "lr": 3e-3, "seed": 0, "threads": 1, "baseline": baseline,
                      "calibrate": False}}


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    return make_table(tmp_path_factory.mktemp("video"))


@pytest.mark.parametrize("encoder,epochs", [("cnn_pool", 8), ("cnn_gru", 2), ("cnn3d", 2)])
def test_train_and_export_with_parity(table, tmp_path, encoder, epochs):
    import polyfuse
    from polyfuse.deploy.exporter import export

    out = tmp_path / "m"
    model = polyfuse.train(spec(table, encoder, epochs, baseline=encoder == "cnn3d"), out=out, show_progress=False)
    metrics = json.loads((out / "metrics.json").read_text())
    assert "broken.mp4" in json.dumps(metrics) or any("broken.mp4" in str(b) for b in getattr(model, "bad_rows", []))
    if encoder == "cnn_pool":
        acc = [v for k, v in _flatten(metrics).items() if k.endswith("accuracy") and "test" in k]
        assert acc and max(acc) >= 0.75, metrics
        assert model.predict_proba([{"clip": str(table.parent / "c0.mp4")}]).shape[0] == 1
    export(out, data=table)
    entry = json.loads((out / "exports.json").read_text())["model.onnx"]
    assert entry["verification"]["passed"] and entry["verification"]["max_abs_diff"] <= 1e-4


def test_init_proposes_a_video_input(table):
    from polyfuse.autospec.infer import guess_spec

    spec_ = guess_spec(table)
    assert spec_["inputs"]["clip"]["type"] == "video"
    load_spec(spec_)


def test_a_missing_pyav_names_the_video_extra(monkeypatch, tmp_path):
    import sys

    from polyfuse.errors import MissingExtra

    write_video(tmp_path / "a.mp4", square_clip("left"), fps=8)
    monkeypatch.setitem(sys.modules, "av", None)
    with pytest.raises(MissingExtra, match=r"pip install 'polyfuse\[video\]'"):
        vid.decode("a.mp4", cfg(), tmp_path)


def test_server_takes_base64_videos_never_server_paths(tmp_path):
    import base64

    from polyfuse.preprocess.budget import UNLIMITED
    from polyfuse.serve.requests import RequestError, clean_record

    t = np.arange(16000) / 16000
    data = write_video(tmp_path / "v.mp4", square_clip("left"), fps=8, audio=0.5 * np.sin(2 * np.pi * 300 * t)).read_bytes()
    s, _ = load_spec({"inputs": {"clip": {"type": "video", "size": 16},
                                 "sound": {"type": "audio", "column": "clip", "track": "audio"}},
                      "outputs": {"y": {"type": "number"}}})
    raw = clean_record({"clip": base64.b64encode(data).decode()}, 0, s, UNLIMITED)["clip"]
    assert raw == data
    assert vid.decode(raw, s.inputs["clip"], Path("/nonexistent")).shape == (4, 16, 16, 3)
    from polyfuse.preprocess import audio

    assert audio.decode(raw, s.inputs["sound"], Path("/nonexistent")).ndim == 1
    with pytest.raises(RequestError, match="not valid base64"):
        clean_record({"clip": "/etc/passwd"}, 0, s, UNLIMITED)


def test_video_and_its_sound_train_and_export_together(tmp_path):
    import polyfuse
    from polyfuse.deploy.exporter import export

    rng = np.random.default_rng(3)
    t = np.arange(16000) / 16000
    rows = []
    for i in range(12):
        label = "left" if i % 2 else "right"
        tone = 0.5 * np.sin(2 * np.pi * (300 if i % 2 else 700) * t)
        write_video(tmp_path / f"v{i}.mp4", square_clip(label, rng=rng), fps=8, audio=tone)
        rows.append({"clip": f"v{i}.mp4", "label": label})
    table = tmp_path / "t.csv"
    pd.DataFrame(rows).to_csv(table, index=False)
    sp = spec(table, "cnn_pool", 1)
    sp["inputs"]["sound"] = {"type": "audio", "column": "clip", "track": "audio", "sample_rate": 8000,
                             "max_seconds": 1.0, "n_mels": 32, "n_mfcc": 13, "dim": 16}
    polyfuse.train(sp, out=tmp_path / "m", show_progress=False)
    export(tmp_path / "m", data=table)
    entry = json.loads((tmp_path / "m" / "exports.json").read_text())["model.onnx"]
    assert entry["verification"]["passed"]

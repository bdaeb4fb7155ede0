"""Video inputs with a pretrained image backbone per frame (``encoder: {hf: ...}``), on tiny random
models saved to temp dirs: processor pixels identical to an image input's, padded frames inert,
training with the feature cache, sequence fusion, ONNX parity, and the refusal of non-image models."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hf_models import tiny_bert, tiny_clip, tiny_vit

import polyfuse
from polyfuse.errors import SpecError
from polyfuse.spec.schema import load_spec
from tests.test_video import square_clip, write_video

pytest.importorskip("av")


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("video_hf")
    return {"vit": tiny_vit(root / "vit"), "clip": tiny_clip(root / "clip"), "bert": tiny_bert(root / "bert")}


def bound(inputs: dict, folder: Path):
    """A spec with each input's processor read from its model folder, as training start does."""
    from polyfuse.nn.hf import bind_folders

    spec, _ = load_spec({"inputs": inputs, "outputs": {"y": {"type": "number"}}})
    bind_folders(spec, folder)
    return spec


@pytest.mark.parametrize("model", ["vit", "clip"])  # a fixed resize; a shortest edge + center crop
def test_a_frame_gets_the_pixels_an_image_input_gives_the_same_picture(models, model, tmp_path):
    from PIL import Image

    from polyfuse.preprocess import hf

    folder = models[model]
    spec = bound({"clip": {"type": "video", "fps": 4, "max_frames": 5, "encoder": {"hf": str(folder)}},
                  "photo": {"type": "image", "encoder": {"hf": str(folder)}}}, tmp_path)
    frames = np.random.default_rng(0).integers(0, 256, (3, 40, 52, 3), dtype=np.uint8)  # not square, not 32
    clip_cfg, photo_cfg = spec.inputs["clip"], spec.inputs["photo"]
    decoded = hf.decode(frames, clip_cfg, tmp_path)
    assert decoded.shape == (3, 32, 32, 3) and decoded.dtype == np.uint8
    state = hf.fit([decoded], clip_cfg)
    batch = hf.collate([decoded, None], clip_cfg, state, False, None)
    assert batch[""].shape == (2, 5, 3, 32, 32)
    assert batch["mask"].tolist() == [[1, 1, 1, 0, 0], [0] * 5] and batch["length"].tolist() == [3, 0]
    assert batch["present"].tolist() == [True, False] and not batch[""][0, 3:].any()
    for t, frame in enumerate(frames):
        Image.fromarray(frame).save(tmp_path / f"f{t}.png")
        image = hf.decode(f"f{t}.png", photo_cfg, tmp_path)
        pixels = hf.collate([image], photo_cfg, hf.fit([image], photo_cfg), False, None)[""][0]
        assert np.array_equal(batch[""][0, t], pixels), t


def test_training_batches_draw_one_augment_per_clip(models, tmp_path):
    from polyfuse.preprocess import hf

    spec = bound({"clip": {"type": "video", "augment": {"flip": True, "noise": 0.2},
                           "encoder": {"hf": str(models["vit"])}}}, tmp_path)
    cfg = spec.inputs["clip"]
    one = np.full((40, 40, 3), 90, np.uint8)
    one[:, :20] = 200
    decoded = hf.decode(np.stack([one] * 3), cfg, tmp_path)
    x = hf.collate([decoded] * 4, cfg, hf.fit([decoded], cfg), True, np.random.default_rng(0))[""]
    assert all(np.array_equal(x[i, 0], x[i, t]) for i in range(4) for t in (1, 2))  # alike within a clip
    assert not all(np.array_equal(x[0, 0], x[i, 0]) for i in range(1, 4))  # drawn per clip


def frames_encoder(models: dict[str, Path], **enc):
    from polyfuse.nn.hf import build_backbone, read_config
    from polyfuse.nn.video_hf import PretrainedFrames
    from polyfuse.spec.inputs import HFEncoder

    torch.manual_seed(0)
    backbone = build_backbone(read_config(models["vit"]), "video")
    return PretrainedFrames(backbone, HFEncoder(hf=str(models["vit"]), **enc), 16).eval()


@pytest.mark.parametrize("pooling", ["cls", "attention"])
def test_padded_frames_change_nothing(models, pooling, monkeypatch):
    from polyfuse.nn import video_hf

    net = frames_encoder(models, pooling=pooling)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 3, 32, 32, generator=g)
    mask = torch.tensor([[1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    length = mask.sum(1).long()
    with torch.no_grad():
        out = net(x, length, mask)
        garbage = x.clone()
        garbage[0, 2:] = 1e3 * torch.randn(2, 3, 32, 32, generator=g)
        assert torch.equal(net(garbage, length, mask), out)
        alone = net(x[:1, :2], length[:1], mask[:1, :2])  # the same clip without padding
        assert torch.allclose(alone, out[:1], atol=1e-5)
        seq, m = net.sequence(x, length, mask)
        assert seq.shape == (2, 4, net.seq_dim) and torch.equal(m, mask)
        if net.cacheable:  # what the cache stores per clip, read back as the model does
            feats, n = net.features(x, length)
            assert n.tolist() == [2, 4]
            assert torch.allclose(net.head(feats, n), out, atol=1e-6)
        monkeypatch.setattr(video_hf, "_exporting", lambda: True)  # the exported graph runs every frame
        assert torch.allclose(net(garbage, length, mask), out, atol=1e-5)


def make_table(folder: Path, n: int = 16) -> Path:
    rng = np.random.default_rng(1)
    rows = []
    for i in range(n):
        label = "left" if i % 2 else "right"
        write_video(folder / f"c{i}.mp4", square_clip(label, n=4 + (i % 3) * 4, size=40, rng=rng), fps=8)
        rows.append({"clip": f"c{i}.mp4", "label": label, "weight": float(i % 5)})
    table = folder / "table.csv"
    pd.DataFrame(rows).to_csv(table, index=False)
    return table


def video_spec(table: Path, cache: Path, encoder: dict, fusion: str = "concat") -> dict:
    return {"data": {"train": str(table), "split": {"valid": 0.25, "test": 0.25, "seed": 0}, "cache_dir": str(cache)},
            "inputs": {"clip": {"type": "video", "fps": 4, "max_frames": 4, "encoder": encoder, "dim": 16},
                       "weight": {"type": "number", "dim": 8}},
            "fusion": {"method": fusion, "dim": 16, "steps": 4} if fusion == "sequence" else {"method": fusion},
            "outputs": {"label": {"type": "category"}},
            "train": {"epochs": 2, "batch_size": 8, "seed": 0, "threads": 1, "baseline": False, "calibrate": False}}


@pytest.mark.parametrize("encoder,fusion,cached", [
    ({}, "concat", True),
    ({}, "sequence", True),
    ({"train_last": 1, "pooling": "mean"}, "sequence", False),
])
def test_trains_reloads_and_exports_with_parity(models, tmp_path, encoder, fusion, cached):
    from polyfuse.deploy.exporter import export

    table = make_table(tmp_path)
    spec = video_spec(table, tmp_path / "cache", {"hf": str(models["vit"]), **encoder}, fusion)
    model = polyfuse.train(spec, out=tmp_path / "m", show_progress=False)
    assert ("clip" in model.metrics.get("pretrained_cache", {})) == cached
    if cached:
        assert model.metrics["pretrained_cache"]["clip"]["computed"] == 16
    records = pd.read_csv(table).head(4)[["clip", "weight"]].to_dict("records")
    reloaded = polyfuse.load(tmp_path / "m").predict_proba(records, folder=table.parent).to_numpy()
    assert np.abs(reloaded - model.predict_proba(records, folder=table.parent).to_numpy()).max() <= 1e-5
    entry = export(tmp_path / "m")
    assert entry["verification"]["passed"] and entry["verification"]["max_abs_diff"] <= 1e-4, entry
    from polyfuse.runtime import Runtime

    onnx = Runtime(tmp_path / "m").predict_proba(records, folder=table.parent)["label"]
    assert np.abs(onnx - reloaded).max() <= 1e-4


def test_a_text_model_on_a_video_input_is_refused_naming_the_field(models, tmp_path):
    with pytest.raises(SpecError, match=r"inputs\.clip\.encoder: .* is not an image model .*cnn_pool"):
        bound({"clip": {"type": "video", "encoder": {"hf": str(models["bert"])}}}, tmp_path)
    spec = bound({"clip": {"type": "video", "encoder": {"hf": str(models["clip"]), "pooling": "mean"}}}, tmp_path)
    assert spec.inputs["clip"].encoder._processor["output_size"] == [32, 32]  # CLIP's vision tower is fine
    with pytest.raises(SpecError, match=r"inputs\.clip\.encoder"):
        load_spec({"inputs": {"clip": {"type": "video", "encoder": "vit"}}, "outputs": {"y": {"type": "number"}}})
    json.dumps(spec.to_dict())  # the spec (with its hf mapping) still serialises

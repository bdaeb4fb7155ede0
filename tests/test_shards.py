"""Decoded records on disk: shards built by a process pool, reused, invalidated, checked, and
training from them equal to training in memory."""
from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import make_toy, toy_spec
from PIL import Image

import polyfuse
from polyfuse.data.io import read_table
from polyfuse.preprocess.pipeline import decode_table
from polyfuse.spec.schema import load_spec
from polyfuse.training.shards import ShardColumn, decode_to_shards


@pytest.fixture()
def toy(tmp_path):
    csv = make_toy(tmp_path / "toy", n=60)
    spec, _ = load_spec(toy_spec(csv))
    return csv, spec, read_table(csv)


def _same(a, b) -> bool:
    if a is None or b is None:
        return a is b
    if isinstance(a, np.ndarray):
        return a.shape == b.shape and np.array_equal(a, b)
    return a == b


def test_shards_hold_exactly_what_decoding_in_memory_gives(toy, tmp_path):
    _, spec, table = toy
    memory = decode_table(spec, table, with_targets=True)
    disk, report = decode_to_shards(spec, table, tmp_path / "shards", on_bad_row="skip", workers=2, rows_per_shard=16)
    assert report["shards"] == 4 and report["built"] == 4 and isinstance(disk.inputs["photo"], ShardColumn)
    assert disk.rows == memory.rows and disk.targets == memory.targets
    for name in spec.inputs:
        assert all(_same(a, b) for a, b in zip(disk.inputs[name], memory.inputs[name])), name
    images = list((tmp_path / "shards").glob("shard-*/in.photo.npy"))
    assert images and np.load(images[0]).dtype == np.uint8  # a quarter of float32
    view = disk.subset([5, 3, 40])  # a split is a view over the same memory maps
    assert isinstance(view.inputs["photo"], ShardColumn) and np.array_equal(view.inputs["photo"][2], memory.inputs["photo"][40])


def test_reused_invalidated_and_rebuilt_after_corruption(toy, tmp_path):
    csv, spec, table = toy
    root = tmp_path / "shards"
    _, first = decode_to_shards(spec, table, root, on_bad_row="skip", workers=1, rows_per_shard=32)
    _, again = decode_to_shards(spec, table, root, on_bad_row="skip", workers=1, rows_per_shard=32)
    assert (first["built"], again["reused"], again["built"]) == (2, 2, 0)
    Image.fromarray(np.full((16, 16), 255, np.uint8)).save(csv.parent / "img" / "40.png")  # an edited file
    _, edited = decode_to_shards(spec, read_table(csv), root, on_bad_row="skip", workers=1, rows_per_shard=32)
    assert (edited["reused"], edited["built"]) == (1, 1)
    bigger, _ = load_spec({**toy_spec(csv), "inputs": {**toy_spec(csv)["inputs"],
                                                       "photo": {"type": "image", "size": [20, 20], "channels": 1}}})
    current, resized = decode_to_shards(bigger, table, root, on_bad_row="skip", workers=1, rows_per_shard=32)
    assert resized["built"] == 2  # other decoding settings: other shards
    victim = current.inputs["sound"].parts[0][1] / "in.sound.npy"
    victim.write_bytes(victim.read_bytes()[:-100])  # truncated
    decoded, checked = decode_to_shards(bigger, table, root, on_bad_row="skip", workers=1, rows_per_shard=32)
    assert checked["rebuilt"] >= 1 and len(list(decoded.inputs["sound"])) == 60


def test_training_from_disk_equals_training_in_memory(toy, tmp_path):
    csv, _, _ = toy
    nets = {}
    for storage in ("memory", "disk"):
        spec = toy_spec(csv, epochs=2, baseline=False)
        spec["data"].update(storage=storage, cache_dir=str(tmp_path / "cache"))
        nets[storage] = polyfuse.train(spec).net.state_dict()
    assert max(float((nets["memory"][k].float() - nets["disk"][k].float()).abs().max()) for k in nets["memory"]) <= 1e-5
    meta = json.loads(next((tmp_path / "cache" / "shards").glob("shard-*/meta.json")).read_text())
    assert meta["n"] > 0 and all(len(s) == 64 for s in meta["files"].values())


def test_auto_storage_goes_to_disk_past_half_the_budget(toy, tmp_path):
    from polyfuse.training.packed import PackedColumn
    from polyfuse.training.trainset import decode_table_for, decoded_bytes_per_row

    _, spec, table = toy
    need_mb = len(table) * decoded_bytes_per_row(spec) / 2**20  # images counted as uint8, as they are held
    for budget, kind in ((max(1, int(need_mb * 4)), PackedColumn), (max(1, int(need_mb)), ShardColumn)):
        data = {**spec.data.model_dump(), "memory_budget_mb": budget, "cache_dir": str(tmp_path / "cache")}
        sized = spec.model_copy(update={"data": type(spec.data)(**data)})
        decoded = decode_table_for(sized, table, tmp_path, "train", "skip", False)
        assert isinstance(decoded.inputs["photo"], kind), budget

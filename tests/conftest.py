"""Shared fixtures: a small, learnable five-modality table generated on the fly."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from polyfuse.preprocess.audio_file import write_wav

# tests write only to temp dirs: the pretrained encoders' embedding cache too (default ~/.cache/polyfuse)
os.environ["POLYFUSE_CACHE"] = tempfile.mkdtemp(prefix="polyfuse-test-cache-")
# LiteRT's converter lives in its own environment (`make litert`, part of `make test`'s setup)
LITERT_PYTHON = Path(__file__).resolve().parents[1] / ".venv-litert" / "bin" / "python"
if LITERT_PYTHON.exists():
    os.environ.setdefault("POLYFUSE_LITERT_PYTHON", str(LITERT_PYTHON))

# The files that take longest (seconds on 2 cores, measured with --durations), run first. `make test` hands
# whole files to two workers in collection order (--dist loadfile --no-loadscope-reorder); xdist's own order,
# most tests first, left these few-test files (the medical example, 98 s, one test) to the end, with one
# worker idle behind them. Longest first bounds that tail by the shortest files instead.
HEAVY_FIRST = ("test_export.py", "test_litert.py", "test_examples_medical.py", "test_pte.py", "test_pretrained.py",
               "test_fusion.py", "test_examples.py", "test_distributed.py", "test_mobile.py",
               "test_examples_home_phone.py", "test_mlflow.py", "test_prune.py", "test_serve.py", "test_tune.py",
               "test_install.py")


def pytest_collection_modifyitems(items: list) -> None:
    rank = {name: i for i, name in enumerate(HEAVY_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep their order


AVDIGITS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "avdigits"
CLASSES = ["cat", "dog", "owl"]


def make_toy(folder: Path, n: int = 90, seed: int = 0) -> Path:
    """Rows whose every input says something about the label: image square position, tone pitch,
    a keyword, a number and a category. Returns the CSV path."""
    rng = np.random.default_rng(seed)
    (folder / "img").mkdir(parents=True, exist_ok=True)
    (folder / "wav").mkdir(exist_ok=True)
    rows = []
    for i in range(n):
        k = i % 3
        img = rng.uniform(0, 60, (16, 16)).astype(np.uint8)
        img[2 + 4 * k : 6 + 4 * k, 3:12] = 250
        Image.fromarray(img).save(folder / "img" / f"{i}.png")
        t = np.arange(int(8000 * rng.uniform(0.2, 0.4))) / 8000
        wave = 0.5 * np.sin(2 * np.pi * (300 + 400 * k) * t) + 0.02 * rng.standard_normal(len(t))
        write_wav(folder / "wav" / f"{i}.wav", wave.astype(np.float32), 8000)
        words = ["the", "a", "small", "big"]
        rows.append({
            "id": 1000 + i,
            "photo": f"img/{i}.png",
            "sound": f"wav/{i}.wav",
            "note": f"{rng.choice(words)} {CLASSES[k]}ish {rng.choice(words)}",
            "weight": float(k * 2 + rng.normal(0, 0.3)),
            "color": str(rng.choice(["red", "green"])),
            "label": CLASSES[k],
        })
    path = folder / "toy.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def train_interrupted(spec: dict, out: Path, after_epoch: int = 1) -> None:
    """`polyfuse.train` stopped by Ctrl-C once epoch ``after_epoch`` (0-based) is done: its checkpoint stays."""
    import polyfuse

    def interrupt(epoch: int, record: dict) -> None:
        if epoch == after_epoch:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        polyfuse.train(spec, out=out, show_progress=False, callback=interrupt)


def toy_spec(csv: Path, **train) -> dict:
    return {
        "data": {"train": str(csv), "split": {"valid": 0.2, "test": 0.2, "seed": 0}},
        "inputs": {
            "photo": {"type": "image", "size": [16, 16], "channels": 1, "dim": 32},
            "sound": {"type": "audio", "sample_rate": 8000, "n_mfcc": 13, "n_mels": 26, "max_seconds": 0.5, "dim": 32},
            "note": {"type": "text", "max_length": 8, "buckets": 4096, "max_ngrams": 64, "dim": 32},
            "weight": {"type": "number", "dim": 8},
            "color": {"type": "category", "dim": 8},
        },
        "fusion": {"method": "concat", "dim": 32},
        "outputs": {"label": {"type": "category"}},
        "train": {"epochs": 3, "batch_size": 16, "lr": 3e-3, "seed": 0, "threads": 1, **train},
    }


@pytest.fixture(scope="session")
def toy_csv(tmp_path_factory) -> Path:
    return make_toy(tmp_path_factory.mktemp("toy"))


@pytest.fixture(scope="session")
def toy_model(toy_csv, tmp_path_factory):
    """One trained toy model shared by the read-only tests (trained once per session)."""
    import polyfuse

    out = tmp_path_factory.mktemp("runs") / "toy"
    model = polyfuse.train(toy_spec(toy_csv, epochs=6), out=out, show_progress=False)
    return model, out


def need_avdigits() -> Path:
    if not (AVDIGITS / "train.csv").exists():
        pytest.skip(f"real data not present at {AVDIGITS} (see shared/data/README.md)")
    return AVDIGITS


@pytest.fixture(scope="session")
def real_run(tmp_path_factory):
    """A model trained on real samples: the issue's avdigits spec when the data is present (shared
    with the accuracy test), else the embedded demo data. Returns (artifact dir, test table, model)."""
    import polyfuse

    out = tmp_path_factory.mktemp("real") / "model"
    if (AVDIGITS / "train.csv").exists():
        model = polyfuse.train(Path(__file__).resolve().parents[1] / "avdigits.yaml", out=out, show_progress=False)
        return out, AVDIGITS / "test.csv", model
    from polyfuse.cli.demo import run_demo

    root = tmp_path_factory.mktemp("demo-data")
    run_demo(root=root, out=out, n=600, epochs=10, show_progress=False)
    return out, root / "test.csv", polyfuse.load(out)


@pytest.fixture(scope="session")
def toy_dir(toy_csv, tmp_path_factory) -> Path:
    """The toy model trained and exported to ONNX once, shared by the server and protocol tests."""
    from tests.serving import trained_toy

    return trained_toy(toy_csv, tmp_path_factory)


@pytest.fixture(scope="session")
def reference(toy_dir):
    import polyfuse

    return polyfuse.load(toy_dir)

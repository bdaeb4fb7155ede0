"""The command line, run as a user runs it (subprocesses)."""
import json
import subprocess
import sys

import pandas as pd
import yaml

from tests.conftest import toy_spec
from polyfuse.autospec.pretrained import choose


def polyfuse(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "polyfuse", *map(str, args)], capture_output=True, text=True, cwd=cwd)


def test_init_guesses_every_column_kind(toy_csv):
    done = polyfuse("init", toy_csv)
    assert done.returncode == 0, done.stderr
    spec = yaml.safe_load(done.stdout)
    kinds = {name: entry["type"] for name, entry in spec["inputs"].items()}
    zoo = choose(language_is_english=True)  # with an installed zoo text encoder, it reads the notes too
    # (the 16 px photos are too small for the zoo's ImageNet backbone in the default preset)
    assert kinds == {"photo": "image", "sound": "audio", "note": "text", "weight": "number", "color": "category",
                     **({"note_pretrained": "text"} if zoo else {})}
    assert spec["inputs"]["photo"]["size"] == [16, 16] and spec["inputs"]["photo"]["channels"] == 1
    assert spec["outputs"] == {"label": {"type": "category"}}
    assert "id" not in spec["inputs"]


def test_train_evaluate_predict(toy_csv, tmp_path):
    spec = toy_spec(toy_csv, epochs=3)
    spec["data"]["train"] = "../" + toy_csv.parent.name + "/toy.csv"  # relative to the spec's folder
    spec_dir = toy_csv.parent.parent / "specs"
    spec_dir.mkdir(exist_ok=True)
    (spec_dir / "toy.yaml").write_text(yaml.safe_dump(spec))
    out = tmp_path / "run"
    done = polyfuse("train", spec_dir / "toy.yaml", "--out", out)  # no --quiet, but stderr is a pipe
    assert done.returncode == 0, done.stderr
    assert "epoch   3/3" in done.stderr and "only photo" in done.stdout and (out / "weights.safetensors").exists()
    assert "\r" not in done.stderr and sum(line.startswith("epoch ") for line in done.stderr.splitlines()) == 3

    done = polyfuse("evaluate", out, toy_csv, "--out", tmp_path / "m.json")
    assert done.returncode == 0, done.stderr
    assert "accuracy" in done.stdout and json.loads((tmp_path / "m.json").read_text())["rows"] == 90

    frame = pd.read_csv(toy_csv).head(25)
    frame.loc[4, "photo"] = "img/gone.png"
    frame.loc[7, "sound"] = None
    frame.to_csv(toy_csv.parent / "some.csv", index=False)
    done = polyfuse("predict", out, toy_csv.parent / "some.csv", "--out", tmp_path / "preds.csv", "--chunk-rows", 10)
    assert done.returncode == 0, done.stderr
    preds = pd.read_csv(tmp_path / "preds.csv", keep_default_na=False)
    assert list(preds.columns) == ["row", "id", "label", "label_probability", "error"]
    assert preds["row"].tolist() == list(range(25)) and preds["id"].tolist() == frame["id"].tolist()
    assert "gone.png" in preds.loc[4, "error"] and preds.loc[4, "label"] == ""
    assert preds.loc[7, "error"] == "" and preds.loc[7, "label"] in {"cat", "dog", "owl"}
    assert "1 bad rows" in done.stdout and "\r" not in done.stderr

    done = polyfuse("embed", out, toy_csv.parent / "some.csv", "--out", tmp_path / "emb.parquet", "--chunk-rows", 10)
    assert done.returncode == 0, done.stderr
    emb = pd.read_parquet(tmp_path / "emb.parquet")
    inputs = list(yaml.safe_load((out / "spec.yaml").read_text())["inputs"])
    assert sorted(inputs) == ["color", "note", "photo", "sound", "weight"]
    assert list(emb.columns) == ["row", "id", "fused", *inputs, "error"]
    assert emb["row"].tolist() == [str(i) for i in range(25)] and emb["id"].astype(int).tolist() == frame["id"].tolist()
    assert len(emb.loc[0, "fused"]) == spec["fusion"]["dim"] and len(emb.loc[0, "photo"]) == spec["inputs"]["photo"]["dim"]
    assert emb.loc[4, "fused"] is None and "gone.png" in emb.loc[4, "error"]  # a bad row: no vectors, its error
    assert emb.loc[7, "sound"] is None and emb.loc[7, "fused"] is not None  # a missing input: null, the rest fused


def test_errors_are_messages_not_tracebacks(tmp_path, toy_csv):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"inputs": {"x": {"type": "image", "size": "big"}}, "outputs": {"y": {"type": "category"}}}))
    done = polyfuse("train", bad, "--out", tmp_path / "o")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "inputs.x.size" in done.stderr and "'big'" in done.stderr
    done = polyfuse("evaluate", tmp_path / "no_model", toy_csv)
    assert done.returncode == 2 and "not found" in done.stderr


def test_blas_is_single_threaded_even_when_pinned_before_numpy_is_imported():
    """The CLI pins numpy's BLAS to one thread before anything imports numpy; the pin must still
    reach numpy's OpenBLAS (it once did not, and a second BLAS thread spun in the server)."""
    code = ("import sys; from polyfuse.threads import single_threaded_blas\n"
            "assert 'numpy' not in sys.modules\n"
            "single_threaded_blas()\n"
            "import numpy  # what preprocessing imports later\n"
            "from threadpoolctl import threadpool_info\n"
            "import json; print(json.dumps([i['num_threads'] for i in threadpool_info() if i['user_api'] == 'blas']))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    threads = json.loads(out.stdout)
    assert threads and all(n == 1 for n in threads), threads


def test_thread_counts_follow_the_cpus_the_process_may_use():
    """A process pinned to one core (taskset, a container's cpuset) sizes its pools for one core."""
    import os

    import pytest

    if not hasattr(os, "sched_setaffinity"):
        pytest.skip("no CPU affinity on this platform")
    code = ("from polyfuse.threads import usable_cpus; from polyfuse.serve.state import prep_threads\n"
            "print(usable_cpus(), prep_threads())")
    first = min(os.sched_getaffinity(0))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         preexec_fn=lambda: os.sched_setaffinity(0, {first}))
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["1", "1"]


def test_counts_and_durations_must_be_positive(tmp_path):
    """A zero or negative size, count or timeout is refused by name before anything starts."""
    for args, words in [(("serve", tmp_path, "--max-batch", "0"), "argument --max-batch: must be positive (got 0)"),
                        (("serve", tmp_path, "--timeout", "-1"), "argument --timeout: must be positive (got -1)"),
                        (("serve", tmp_path, "--drain", "-0.5"), "argument --drain: must be 0 or more (got -0.5)"),
                        (("bench", tmp_path, "--data", tmp_path, "--repeats", "x"),
                         "argument --repeats: expected an integer (got 'x')"),
                        (("train", tmp_path / "spec.yaml", "--out", tmp_path / "m", "--nproc", "0"),
                         "argument --nproc: must be positive (got 0)")]:
        done = polyfuse(*args)
        assert done.returncode == 2 and words in done.stderr, (args, done.stderr)
        assert "Traceback" not in done.stderr

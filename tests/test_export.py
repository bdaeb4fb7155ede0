"""ONNX / int8 / torch.export builds: verified parity, gates, the torch-free runtime, bad input; and the
issue's reference spec on the real avdigits data, which trains the model they export. Both read the one
session fixture `real_run`: in one file, so one pytest-xdist worker trains it (two files on two workers
trained it twice, ~95 s each)."""
import json
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import polyfuse
from polyfuse.deploy.exporter import export
from polyfuse.deploy.onnx import ExportError
from polyfuse.errors import ArtifactError, BadInputError
from polyfuse.preprocess.audio_file import write_wav
from polyfuse.runtime import Runtime
from tests.conftest import need_avdigits, toy_spec


def test_reference_spec_trains_fast_and_accurately(real_run):
    need_avdigits()
    out, _, model = real_run  # trained from avdigits.yaml, exactly as the issue writes it
    metrics = json.loads((out / "metrics.json").read_text())
    test = metrics["test"]
    assert test["outputs"]["label"]["accuracy"] >= 0.99
    assert metrics["train_seconds"] > 0  # the time target is measured in benchmarks/avdigits.py, not here
    assert set(test["ablation"]["only"]) == {"image", "audio"}
    # each input alone still works (modality dropout), though worse than both together
    for name in ("image", "audio"):
        assert 0.5 < test["ablation"]["only"][name]["label"] <= test["outputs"]["label"]["accuracy"]
    assert model.metrics["sizes"]["test"] == 200


@pytest.fixture(scope="module")
def exported(real_run, tmp_path_factory):
    """The real-data artifact copied and exported to fp32 ONNX, dynamic int8 and .pt2."""
    out, test_csv, _ = real_run
    folder = tmp_path_factory.mktemp("exp") / "model"
    shutil.copytree(out, folder)
    export(folder)
    export(folder, quantize="dynamic")
    export(folder, to="torch-export")
    return folder, test_csv


def _records(test_csv, n=24):
    frame = pd.read_csv(test_csv).head(n)
    inputs = [c for c in frame.columns if c in ("image", "audio", "transcript")]
    return frame[inputs].to_dict("records"), frame


def test_fp32_onnx_reproduces_torch_from_raw_records(exported):
    folder, test_csv = exported
    records, _ = _records(test_csv)
    model, rt = polyfuse.load(folder), Runtime(folder)
    ref = model.predict_proba(records, folder=test_csv.parent)
    got = rt.predict_proba(records, folder=test_csv.parent)["label"]
    assert np.abs(ref.to_numpy() - got).max() <= 1e-4
    labels = [r["label"] for r in rt.predict(records, folder=test_csv.parent)]
    assert labels == model.predict(records, folder=test_csv.parent)["label"].tolist()
    entry = json.loads((folder / "exports.json").read_text())["model.onnx"]
    assert entry["verification"]["passed"] and entry["verification"]["max_abs_diff"] <= 1e-4
    assert entry["opset"] >= 17 and not list(folder.glob("*.data")) and not list(folder.glob(".*.tmp"))
    manifest = json.loads((folder / "manifest.json").read_text())
    assert "model.onnx" in manifest["files"] and manifest["exports"]["model.onnx"]["passed"]
    assert "model.onnx" in (folder / "MODEL_CARD.md").read_text()


def test_onnx_graph_metadata_and_dynamic_batch(exported):
    import onnx

    folder, test_csv = exported
    proto = onnx.load(str(folder / "model.onnx"))
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["polyfuse_version"] == polyfuse.__version__
    assert json.loads(meta["polyfuse_labels"])["label"] == polyfuse.load(folder).preprocessor.classes("label")
    assert set(json.loads(meta["polyfuse_inputs"])) == set(polyfuse.load(folder).spec.inputs)
    assert proto.opset_import[0].version >= 17
    rt = Runtime(folder)
    for inp in rt.session.get_inputs():
        assert isinstance(inp.shape[0], str)  # symbolic batch axis
    records, _ = _records(test_csv, 5)
    assert len(rt.predict(records, folder=test_csv.parent)) == 5
    assert len(rt.predict(records[:1], folder=test_csv.parent)) == 1


def test_missing_inputs_allowed_in_runtime(exported):
    folder, test_csv = exported
    records, _ = _records(test_csv, 4)
    rt = Runtime(folder, threads=1)
    partial = [{k: v for k, v in r.items() if k == "audio"} for r in records]
    model = polyfuse.load(folder)
    ref = model.predict_proba(partial, folder=test_csv.parent).to_numpy()
    assert np.abs(rt.predict_proba(partial, folder=test_csv.parent)["label"] - ref).max() <= 1e-4


def test_int8_dynamic_passes_gate_and_is_smaller(exported):
    folder, test_csv = exported
    entry = json.loads((folder / "exports.json").read_text())["model.int8-dynamic.onnx"]
    v = entry["verification"]
    # the gate's own measure: clear decisions agree; a near-tie may flip (one of 75 rows is 98.7 %, and a
    # 1.3-point drop: the gate allows 1 point or one row, whichever is more)
    assert v["passed"] and v["top1_agreement_clear"] >= 0.99 and v["accuracy_drop"] <= v["max_accuracy_drop"] <= 0.014
    assert entry["bytes"] < entry["fp32_bytes"]
    records, _ = _records(test_csv, 8)
    assert len(Runtime(folder, variant="int8").predict(records, folder=test_csv.parent)) == 8


def test_broken_calibration_is_refused(exported, tmp_path):
    folder, _ = exported
    model = polyfuse.load(folder)
    rows = []
    for i in range(24):  # blank images and one pure tone: ranges nothing like real inputs
        row = {"label": model.preprocessor.classes("label")[i % 3]}
        for name, cfg in model.spec.inputs.items():
            if cfg.type == "image":
                Image.fromarray(np.zeros(tuple(cfg.size), np.uint8)).save(tmp_path / f"{i}.png")
                row[name] = f"{i}.png"
            elif cfg.type == "audio":
                t = np.arange(4000) / 16000
                write_wav(tmp_path / f"{i}.wav", (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 16000)
                row[name] = f"{i}.wav"
            else:
                row[name] = "zzz"
        rows.append(row)
    pd.DataFrame(rows).to_csv(tmp_path / "cal.csv", index=False)
    with pytest.raises(ExportError) as err:
        export(folder, quantize="static", calibration=tmp_path / "cal.csv")
    assert "failed verification, not written" in str(err.value) and "Try --quantize dynamic" in str(err.value)
    assert "top-1 agreement" in str(err.value)
    assert not (folder / "model.int8-static.onnx").exists() and not list(folder.glob(".*.tmp"))
    polyfuse.load(folder)  # the artifact is still intact


def test_torch_export_round_trip(exported):
    from polyfuse.deploy.exporter import load_pt2

    folder, test_csv = exported
    entry = json.loads((folder / "exports.json").read_text())["model.pt2"]
    assert entry["verification"]["passed"] and entry["verification"]["max_abs_diff"] <= 1e-4
    import torch

    model = polyfuse.load(folder)
    records, _ = _records(test_csv, 6)
    batch, _ = model.preprocessor.transform(records, test_csv.parent)
    out = load_pt2(folder / "model.pt2")(inputs={k: torch.from_numpy(v) for k, v in batch.items()})
    assert np.abs(out[0].detach().numpy() - model.predict_proba(records, folder=test_csv.parent).to_numpy()).max() <= 1e-5


def test_runtime_imports_and_predicts_without_torch(exported):
    folder, test_csv = exported
    code = textwrap.dedent(f"""
        import sys, json
        sys.modules['torch'] = None  # importing torch now raises ImportError
        from polyfuse.runtime import Runtime
        import pandas
        records = pandas.read_csv({str(test_csv)!r}).head(3)
        records = records[[c for c in records.columns if c in ('image', 'audio', 'transcript')]].to_dict('records')
        print(json.dumps(Runtime({str(folder)!r}).predict(records, folder={str(test_csv.parent)!r})))
        assert not any(m == 'torch' or m.startswith('torch.') for m, v in sys.modules.items() if v is not None)
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    preds = json.loads(done.stdout)
    assert len(preds) == 3 and all(0 <= p["label_probability"] <= 1 for p in preds)


def test_bad_artifacts_and_records(exported, tmp_path, toy_csv):
    folder, test_csv = exported
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    data = (copy / "model.onnx").read_bytes()
    (copy / "model.onnx").write_bytes(data[: len(data) // 2])  # truncated
    with pytest.raises(ArtifactError, match="'model.onnx' was modified"):
        Runtime(copy)
    # an ONNX file from another spec, with a manifest re-written to match it
    other = polyfuse.train(toy_spec(toy_csv, epochs=1), out=tmp_path / "other", show_progress=False)
    export(tmp_path / "other", data=toy_csv)
    shutil.copyfile(tmp_path / "other" / "model.onnx", copy / "model.onnx")
    from polyfuse.artifact import write_manifest

    write_manifest(copy)
    with pytest.raises(ArtifactError, match="exported from another spec"):
        Runtime(copy)
    del other
    rt = Runtime(folder)
    with pytest.raises(BadInputError, match="record 0 has none of the model's inputs"):
        rt.predict([{"colour": "red"}])
    image_input = next((n for n, c in rt.spec.inputs.items() if c.type == "image"), None)
    with pytest.raises(BadInputError, match=f"row 0, column '{image_input}'.*could not be decoded"):
        rt.predict([{image_input: b"definitely not a png"}])
    with pytest.raises(ArtifactError, match="no model.int8-static.onnx"):
        Runtime(folder, variant="int8-static")


def test_predict_cli_through_onnx_runtime(exported, tmp_path):
    folder, test_csv = exported
    frame = pd.read_csv(test_csv).head(12)
    few = frame.copy()  # written to the temp dir (shared data is read-only), so its file paths become absolute
    for column in ("image", "audio"):
        if column in few:
            few[column] = [str(test_csv.parent / v) for v in few[column]]
    few.to_csv(tmp_path / "few.csv", index=False)
    out = tmp_path / "p.csv"
    done = subprocess.run([sys.executable, "-m", "polyfuse", "predict", str(folder), str(tmp_path / "few.csv"),
                           "--out", str(out), "--runtime", "onnx", "--quiet"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    preds = pd.read_csv(out)
    model = polyfuse.load(folder)
    ref = model.predict(frame, folder=test_csv.parent)["label"].astype(str).tolist()
    assert preds["label"].astype(str).tolist() == ref


def test_int8_gate_forgives_near_ties_but_not_clear_flips():
    from types import SimpleNamespace

    from polyfuse.deploy.onnx import check_int8

    model = SimpleNamespace(spec=SimpleNamespace(outputs={"y": SimpleNamespace(type="category")}))
    ref = np.array([[0.9, 0.05, 0.05]] * 95 + [[0.48, 0.47, 0.05]] * 5, dtype=np.float32)
    truth = {"y": np.r_[np.zeros(95), np.full(5, 2)]}  # the near-ties are wrong either way
    near = ref.copy()
    near[95:] = [0.47, 0.48, 0.05]  # five near-ties flipped: 95 % agreement overall, all clear rows agree
    ok = check_int8(model, {"y": ref}, {"y": near}, truth)
    assert ok.passed and ok.figures["top1_agreement"] == 0.95 and ok.figures["top1_agreement_clear"] == 1.0
    clear = ref.copy()
    clear[:2] = [0.1, 0.85, 0.05]  # two clear decisions flipped: a broken build
    bad = check_int8(model, {"y": ref}, {"y": clear}, truth)
    assert not bad.passed and "clearly decided" in bad.message


def test_int8_gate_tolerates_one_row_but_not_two_on_few_rows():
    """On 12 verification rows one flipped near-tie is 8 points of accuracy: never a reason to refuse
    a build; two rows lost are."""
    from types import SimpleNamespace

    from polyfuse.deploy.onnx import check_int8

    model = SimpleNamespace(spec=SimpleNamespace(outputs={"y": SimpleNamespace(type="category")}))
    ref = np.array([[0.9, 0.1]] * 10 + [[0.52, 0.48]] * 2, dtype=np.float32)
    truth = {"y": np.zeros(12)}
    one = ref.copy()
    one[10] = [0.48, 0.52]
    ok = check_int8(model, {"y": ref}, {"y": one}, truth)
    assert ok.passed and ok.figures["accuracy_drop"] == pytest.approx(1 / 12)
    two = ref.copy()
    two[10:] = [0.48, 0.52]
    bad = check_int8(model, {"y": ref}, {"y": two}, truth)
    assert not bad.passed and "one of 12 rows" in bad.message

"""Pretrained (transformers) encoders on tiny random models saved to temp dirs: training, save and
load, ONNX parity and the int8 gate, the torch-free runtime, the embedding cache, LoRA, bad input."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_toy, toy_spec, train_interrupted
from hf_models import tiny_bert

import polyfuse
from polyfuse.errors import SpecError
from polyfuse.spec.schema import load_spec


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("pretrained")
    return make_toy(folder / "toy", n=60), tiny_bert(folder / "bert")


def text_spec(csv: Path, model: Path, cache: Path, **encoder) -> dict:
    spec = toy_spec(csv, epochs=2)
    spec["data"]["cache_dir"] = str(cache)
    spec["inputs"] = {"note": {"type": "text", "max_length": 16, "dim": 16, "encoder": {"hf": str(model), **encoder}},
                      "weight": {"type": "number", "dim": 8}}
    return spec


@pytest.fixture(scope="module")
def trained(toy, tmp_path_factory) -> tuple[Path, Path]:
    csv, bert = toy
    out = tmp_path_factory.mktemp("trained") / "m"
    polyfuse.train(text_spec(csv, bert, out.parent / "cache"), out=out)
    return out, csv


def test_trains_saves_and_reloads_with_the_same_answers(trained):
    out, csv = trained
    model = polyfuse.load(out)
    records = [{"note": "a big dog", "weight": 2.0}, {"note": "the small cat is a very good cat", "weight": 0.1}]
    again = polyfuse.load(out)
    assert np.allclose(model.predict_proba(records).to_numpy(), again.predict_proba(records).to_numpy(), atol=1e-6)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["pretrained_cache"]["note"]["rows"] == 60
    assert "pretrained" in (out / "MODEL_CARD.md").read_text() and str(out) not in (out / "preprocess.json").read_text()


def test_onnx_parity_int8_gate_and_torch_free_runtime(trained, tmp_path):
    import shutil

    from polyfuse.deploy.exporter import export

    out, csv = trained
    folder = tmp_path / "m"
    shutil.copytree(out, folder)
    fp32 = export(folder)
    assert fp32["verification"]["passed"] and fp32["verification"]["max_abs_diff"] <= 1e-4
    int8 = export(folder, quantize="dynamic")
    # the gate's own measure: near-ties may flip (a random tiny BERT has them), clear decisions may not
    assert int8["verification"]["passed"] and int8["verification"]["top1_agreement_clear"] >= 0.99
    records = [{"note": "a big dog owl", "weight": 2.0}, {"note": "the small cat is a very good cat ok fine", "weight": 0.1}]
    code = textwrap.dedent(f"""
        import sys, json
        sys.modules['torch'] = None
        sys.modules['transformers'] = None
        from polyfuse.runtime import Runtime
        print(json.dumps(Runtime({str(folder)!r}).predict_proba({records!r})['label'].tolist()))
        assert not any(m.split('.')[0] in ('torch', 'transformers') for m, v in sys.modules.items() if v is not None)
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    expected = polyfuse.load(folder).predict_proba(records).to_numpy()
    assert np.abs(np.asarray(json.loads(done.stdout)) - expected).max() <= 1e-4


def test_cache_hits_misses_and_invalidation(toy, tmp_path):
    csv, bert = toy
    cache = tmp_path / "cache"
    first = polyfuse.train(text_spec(csv, bert, cache)).metrics["pretrained_cache"]["note"]
    assert first["computed"] > 0 and first["computed"] + first["reused"] == 60
    spec = text_spec(csv, bert, cache)
    spec["fusion"]["method"] = "gated"  # another fusion: not one backbone forward pass
    assert polyfuse.train(spec).metrics["pretrained_cache"]["note"]["computed"] == 0
    shorter = polyfuse.train(text_spec(csv, bert, cache, pooling="cls")).metrics["pretrained_cache"]["note"]
    assert shorter["computed"] == first["computed"]  # other pooling, other entries
    spec = text_spec(csv, bert, cache)
    spec["inputs"]["note"]["max_length"] = 4  # other preprocessing: other token ids, other keys
    assert polyfuse.train(spec).metrics["pretrained_cache"]["note"]["computed"] > 0
    retrained = tiny_bert(tmp_path / "bert2")  # same architecture, other (random) weights
    assert polyfuse.train(text_spec(csv, retrained, cache)).metrics["pretrained_cache"]["note"]["computed"] > 0


def test_cache_written_by_another_model_is_ignored(toy, tmp_path, capfd):
    csv, bert = toy
    cache = tmp_path / "cache"
    report = polyfuse.train(text_spec(csv, bert, cache)).metrics["pretrained_cache"]["note"]
    meta = Path(report["cache"]) / "meta.json"
    data = json.loads(meta.read_text())
    meta.write_text(json.dumps({**data, "model_digest": "0" * 64}))
    again = polyfuse.train(text_spec(csv, bert, cache)).metrics["pretrained_cache"]["note"]
    assert again["computed"] == report["computed"]
    assert "written by another model" in capfd.readouterr().err


def test_attention_pooling_caches_sequences_and_trains(toy, tmp_path):
    csv, bert = toy
    model = polyfuse.train(text_spec(csv, bert, tmp_path / "cache", pooling="attention"), out=tmp_path / "m")
    assert model.metrics["pretrained_cache"]["note"]["computed"] > 0
    records = [{"note": "a big dog", "weight": 2.0}]
    assert np.allclose(polyfuse.load(tmp_path / "m").predict_proba(records).to_numpy(),
                       model.predict_proba(records).to_numpy(), atol=1e-6)


def test_lora_trains_only_adapters_and_merges_to_the_same_function(toy, tmp_path):
    from polyfuse.nn.hf import merge_lora

    csv, bert = toy
    spec = text_spec(csv, bert, tmp_path / "cache", lora={"r": 4, "alpha": 8})
    model = polyfuse.train(spec, out=tmp_path / "m")
    assert "pretrained_cache" not in model.metrics  # adapters change the backbone: nothing to cache
    names = set(polyfuse.load(tmp_path / "m").net.state_dict())
    assert not any("lora" in n for n in names), "the saved model must be a plain one"
    # merging leaves the function unchanged: build a LoRA model with non-zero adapters, compare
    from polyfuse.nn import hf
    from polyfuse.nn.model import FusionModel

    spec_obj, _ = load_spec(spec)
    net = FusionModel(spec_obj, model.preprocessor.state)
    hf.load_pretrained(net, spec_obj, Path.cwd())
    adapters = [p for n, p in net.named_parameters() if "lora_B" in n]
    assert adapters and all(p.requires_grad for p in adapters)
    assert not any(p.requires_grad for n, p in net.encoders["note"].backbone.named_parameters() if "lora_" not in n)
    with torch.no_grad():
        for p in adapters:
            p.normal_(0, 0.5)
    net.eval()
    batch, _ = model.preprocessor.transform([{"note": "a big dog", "weight": 1.0}, {"note": "owl", "weight": 0.0}])
    x = {k: torch.from_numpy(v) for k, v in batch.items()}
    before = net(x)["label"]
    assert merge_lora(net) > 0
    assert torch.allclose(before, net(x)["label"], atol=1e-5)


def test_checkpoints_leave_the_frozen_backbone_out_and_resume_exactly(toy, tmp_path):
    """A frozen backbone never changes: its weights are rebuilt from its folder, not copied into every
    epoch's checkpoint (two frozen e5 inputs made 1.9 GB checkpoints); a resumed run ends as an unbroken one."""
    from safetensors import safe_open

    csv, bert = toy
    spec = text_spec(csv, bert, tmp_path / "cache", train_last=1)  # the last layer learns, the rest is frozen
    spec["train"].update(epochs=3, early_stopping=None)
    whole = polyfuse.train(spec, out=tmp_path / "whole", show_progress=False)

    train_interrupted(spec, tmp_path / "cut")
    with safe_open(str(tmp_path / "cut.checkpoint" / "state.safetensors"), "pt") as f:
        saved = set(f.keys())
    backbone = {k for k in saved if ".backbone." in k}
    assert backbone and all(".encoder.layer.1." in k or "lora" in k for k in backbone), sorted(backbone)[:5]
    assert "model.encoders.note.backbone.embeddings.word_embeddings.weight" not in saved
    resumed = polyfuse.train(spec, out=tmp_path / "cut", resume=True, show_progress=False)
    for (k, va), vb in zip(whole.net.state_dict().items(), resumed.net.state_dict().values()):
        assert torch.equal(va, vb), k


def test_train_last_unfreezes_only_the_last_layers(toy, tmp_path):
    from polyfuse.nn import hf
    from polyfuse.nn.model import FusionModel

    csv, bert = toy
    spec_obj, _ = load_spec(text_spec(csv, bert, tmp_path / "cache", train_last=1))
    hf.bind_folders(spec_obj, Path.cwd())
    from polyfuse.preprocess.pipeline import Preprocessor, bind_pretrained  # noqa: F401

    state = {"note": {"processor": spec_obj.inputs["note"].encoder._processor,
                      "backbone": spec_obj.inputs["note"].encoder._config}, "weight": {"mean": 0.0, "std": 1.0},
             "label": {"classes": ["cat", "dog", "owl"]}}
    net = FusionModel(spec_obj, state)
    hf.load_pretrained(net, spec_obj, Path.cwd())
    trainable = {n for n, p in net.encoders["note"].backbone.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("encoder.layer.1.") for n in trainable)
    from polyfuse.training import optim

    opt, _ = optim.build(spec_obj, net)
    assert sorted(g["lr"] for g in opt.param_groups)[0] == pytest.approx(5e-5)


def test_a_model_that_is_not_there_says_how_to_get_it(toy, tmp_path, monkeypatch):
    csv, _ = toy
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    spec = text_spec(csv, Path("no-such-org/no-such-model"), tmp_path / "cache", download=True)
    spec["inputs"]["note"]["encoder"]["hf"] = "no-such-org/no-such-model"
    with pytest.raises(SpecError, match="no-such-org/no-such-model.*HF_HUB_OFFLINE.*hf download"):
        polyfuse.train(spec)


def test_bad_model_folders(toy, tmp_path):
    csv, bert = toy
    no_tokenizer = tmp_path / "no_tok"
    no_tokenizer.mkdir()
    (no_tokenizer / "config.json").write_text((bert / "config.json").read_text())
    with pytest.raises(SpecError, match="tokenizer.json"):
        polyfuse.train(text_spec(csv, no_tokenizer, tmp_path / "cache"))
    odd = tmp_path / "odd"
    odd.mkdir()
    for f in bert.iterdir():
        (odd / f.name).write_bytes(f.read_bytes())
    (odd / "config.json").write_text(json.dumps({**json.loads((bert / "config.json").read_text()),
                                                 "model_type": "no_such_architecture"}))
    with pytest.raises(SpecError, match="no_such_architecture"):
        polyfuse.train(text_spec(csv, odd, tmp_path / "cache"))


def test_cache_store_round_trips_every_key(tmp_path):
    from polyfuse.training.feature_cache import Store

    meta = {"format": "test", "model_digest": "d" * 64, "sequence": False}
    store = Store(tmp_path, meta)
    keys = [bytes(16), bytes(range(15)) + b"\0", bytes(range(1, 17))]  # trailing zero bytes included
    for i, key in enumerate(keys):
        store.put(key, np.full(3, i, dtype=np.float32))
    store.flush()
    again = Store(tmp_path, meta)
    assert set(again.entries) == set(keys)
    assert [float(again.entries[k][0]) for k in keys] == [0.0, 1.0, 2.0]


def test_the_embedding_pass_runs_texts_of_like_length_together_and_keeps_row_order(trained, tmp_path):
    """Batches of the frozen pass are formed shortest first (less padding); each row's output is the one it
    gets alone, in its own place."""
    import pandas as pd
    import torch

    from polyfuse.data.io import read_table
    from polyfuse.preprocess.pipeline import decode_table
    from polyfuse.training.feature_cache import Progress, Store, fill

    out, _ = trained
    model = polyfuse.load(out)
    notes = ["owl " * (1 + (7 * i) % 11) for i in range(20)] + [None]
    decoded = decode_table(model.spec, read_table(pd.DataFrame({"note": notes, "weight": [1.0] * 21})),
                           with_targets=False)
    encoder, cfg = model.net.encoders["note"], model.spec.inputs["note"]
    widths: list[int] = []
    hook = encoder.backbone.register_forward_pre_hook(lambda _m, _a, kw: widths.append(kw["input_ids"].shape[1]),
                                                      with_kwargs=True)
    store = Store(tmp_path / "s", {"format": "t", "model_digest": "x", "sequence": False})
    rows, computed = fill(store, encoder.eval().features, cfg, model.preprocessor, "note", decoded, 4,
                          Progress("note", 21))
    hook.remove()
    assert widths == sorted(widths) and len(widths) == 5 and computed == 11  # 11 distinct texts
    assert rows[-1] is None
    for i in (0, 3, 12):
        one = model.preprocessor.collate(decode_table(model.spec, read_table(pd.DataFrame(
            {"note": [notes[i]], "weight": [1.0]})), with_targets=False))
        with torch.no_grad():
            alone = encoder.features(torch.from_numpy(one["note"]), torch.from_numpy(one["note__length"]))[0][0]
        np.testing.assert_allclose(rows[i], alone.numpy(), atol=1e-5)


def test_served_over_http_with_requests_of_different_lengths_batched(trained, tmp_path):
    import shutil
    from concurrent.futures import ThreadPoolExecutor

    from polyfuse.deploy.exporter import export
    from tests.serving import Server

    out, _ = trained
    folder = tmp_path / "m"
    shutil.copytree(out, folder)
    export(folder)
    texts = ["a dog", "the small cat is a very good cat ok fine not bad", "owl", "big big big red dog was great"]
    records = [{"note": texts[i % 4], "weight": float(i % 3)} for i in range(24)]
    model = polyfuse.load(folder)
    server = Server(folder, ["--runtime", "onnx", "--max-batch", "16", "--max-delay-ms", "20"], tmp_path)
    try:
        with server.client() as c, ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda r: c.post("/predict", json={"records": [r]}), records))
            metrics = c.get("/metrics").text
    finally:
        server.stop()
    assert all(a.status_code == 200 for a in answers), [a.text for a in answers if a.status_code != 200][:2]
    labels = model.predict(records)["label"].tolist()
    assert [a.json()["predictions"][0]["label"] for a in answers] == labels
    assert "polyfuse_batch_rows_count" in metrics
    # what the batcher does with requests of different lengths: zero-pad and run them as one batch
    from polyfuse.runtime import Runtime
    from polyfuse.serve.batching import merge

    rt = Runtime(folder)
    singles = [rt.preprocessor.transform([r])[0] for r in records[:4]]
    assert len({s["note"].shape[1] for s in singles}) > 1
    merged = rt.run_arrays({k: merge([s[k] for s in singles]) for k in singles[0]})["label"]
    alone = np.concatenate([rt.run_arrays(s)["label"] for s in singles])
    assert np.abs(merged - alone).max() <= 1e-5


# ----------------------------------------------------------------------------- images, audio, CLIP
def modality_spec(csv: Path, cache: Path, inputs: dict) -> dict:
    spec = toy_spec(csv, epochs=2)
    spec["data"]["cache_dir"] = str(cache)
    spec["inputs"] = {**inputs, "weight": {"type": "number", "dim": 8}}
    return spec


def _cases(root: Path) -> dict[str, dict]:
    from hf_models import tiny_clip, tiny_vit, tiny_wav2vec2, tiny_whisper

    return {
        "vit": lambda: {"photo": {"type": "image", "dim": 16, "encoder": {"hf": str(tiny_vit(root / "vit"))}}},
        "wav2vec2": lambda: {"sound": {"type": "audio", "max_seconds": 0.5, "dim": 16,
                                       "encoder": {"hf": str(tiny_wav2vec2(root / "w2v")), "pooling": "attention"}}},
        "whisper": lambda: {"sound": {"type": "audio", "max_seconds": 0.5, "dim": 16,
                                      "encoder": {"hf": str(tiny_whisper(root / "whisper"))}}},
        "clip": lambda: {"photo": {"type": "image", "dim": 16, "encoder": {"hf": str(tiny_clip(root / "clip"))}},
                         "note": {"type": "text", "max_length": 16, "dim": 16,
                                  "encoder": {"hf": str(root / "clip"), "pooling": "cls"}}},
    }


@pytest.mark.parametrize("case", ["vit", "wav2vec2", "whisper", "clip"])
def test_each_modality_trains_reloads_exports_and_runs_torch_free(case, toy, tmp_path):
    from polyfuse.deploy.exporter import export

    csv, _ = toy
    spec = modality_spec(csv, tmp_path / "cache", _cases(tmp_path)[case]())
    # the network's own path through each backbone: a linear member on a random tiny backbone's raw vectors
    # turns int8's small backbone errors into 0.1 of probability (tests/test_zoo.py exports one in fp32)
    spec["train"]["ensemble"] = "off"
    model = polyfuse.train(spec, out=tmp_path / "m")
    cached = model.metrics["pretrained_cache"]
    assert set(cached) == {n for n in spec["inputs"] if n != "weight"} and all(c["computed"] > 0 for c in cached.values())
    import pandas as pd

    records = pd.read_csv(csv).head(5)
    records = records[[c for c in ("photo", "sound", "note", "weight") if c in spec["inputs"]]].to_dict("records")
    reloaded = polyfuse.load(tmp_path / "m").predict_proba(records, folder=csv.parent).to_numpy()
    assert np.abs(reloaded - model.predict_proba(records, folder=csv.parent).to_numpy()).max() <= 1e-5
    entry = export(tmp_path / "m")
    assert entry["verification"]["passed"] and entry["verification"]["max_abs_diff"] <= 1e-4
    # int8 of a transformer: near-uniform answers of a 2-epoch toy model flip on tiny changes, so the gate
    # may refuse it (the text test above shows it passing); forced, the build must still track fp32
    int8 = export(tmp_path / "m", quantize="dynamic", force=True)
    assert int8["forced"] == (not int8["verification"]["passed"])
    from polyfuse.runtime import Runtime

    quantised = Runtime(tmp_path / "m", variant="int8").predict_proba(records, folder=csv.parent)["label"]
    assert np.abs(quantised - reloaded).max() <= 0.05
    code = textwrap.dedent(f"""
        import sys, json
        sys.modules['torch'] = None
        sys.modules['transformers'] = None
        from polyfuse.runtime import Runtime
        out = Runtime({str(tmp_path / 'm')!r}).predict_proba({records!r}, folder={str(csv.parent)!r})
        print(json.dumps(out['label'].tolist()))
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert np.abs(np.asarray(json.loads(done.stdout)) - reloaded).max() <= 1e-4


def test_clip_serves_an_image_and_a_text_input_loaded_once(toy, tmp_path, monkeypatch):
    from transformers import AutoModel

    csv, _ = toy
    calls = []
    real = AutoModel.from_pretrained

    def counting(*args, **kw):
        calls.append(args[0])
        return real(*args, **kw)

    monkeypatch.setattr(AutoModel, "from_pretrained", counting)
    model = polyfuse.train(modality_spec(csv, tmp_path / "cache", _cases(tmp_path)["clip"]()))
    assert len(calls) == 1, calls
    towers = {n: type(model.net.encoders[n].backbone).__name__ for n in ("photo", "note")}
    assert towers == {"photo": "CLIPVisionModel", "note": "CLIPTextModel"}  # the two towers of the one model


# ----------------------------------------------------------------------------- other architectures, the hub cache
def _tiny_config(kind: str) -> tuple[str, dict, torch.Tensor, torch.Tensor | None]:
    """(input kind, config dict, an input batch, lengths) for architectures the tests do not train."""
    small = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
    if kind == "convnext":
        return "image", {"model_type": "convnext", "hidden_sizes": [8, 16], "depths": [1, 1], "num_stages": 2,
                         "image_size": 32}, torch.randn(2, 3, 32, 32), None
    if kind == "resnet":
        return "image", {"model_type": "resnet", "hidden_sizes": [8, 16], "depths": [1, 1], "embedding_size": 8,
                         "layer_type": "basic"}, torch.randn(2, 3, 32, 32), None
    if kind == "dinov2":
        return "image", {"model_type": "dinov2", "image_size": 32, "patch_size": 8, **small}, torch.randn(2, 3, 32, 32), None
    if kind == "hubert":
        return "audio", {"model_type": "hubert", "conv_dim": [16, 16], "conv_stride": [5, 4], "conv_kernel": [10, 4],
                         "num_conv_pos_embeddings": 8, "num_conv_pos_embedding_groups": 2, **small}, \
            torch.randn(2, 4000), torch.tensor([4000, 2500])
    return "audio", {"model_type": "audio-spectrogram-transformer", "num_mel_bins": 16, "max_length": 32,
                     "patch_size": 8, "frequency_stride": 8, "time_stride": 8, **small}, torch.randn(2, 32, 16), None


@pytest.mark.parametrize("arch", ["convnext", "resnet", "dinov2", "hubert", "ast"])
@pytest.mark.parametrize("pooling", ["cls", "mean", "attention"])
def test_other_architectures_pool_into_the_fusion_width(arch, pooling):
    from polyfuse.nn.hf import PretrainedEncoder, build_backbone
    from polyfuse.spec.inputs import HFEncoder

    kind, config, x, length = _tiny_config(arch)
    encoder = PretrainedEncoder(build_backbone(config, kind), kind, HFEncoder(hf="x", pooling=pooling), 12).eval()
    with torch.no_grad():
        out = encoder(x, length)
        again = encoder.head(*encoder.features(x, length))  # what training does with cached features
    assert out.shape == (2, 12) and torch.isfinite(out).all()
    assert torch.allclose(out, again, atol=1e-6)


def test_a_model_in_the_local_hub_cache_is_found_offline(tmp_path, monkeypatch):
    from polyfuse.nn.hf import resolve_model
    from polyfuse.spec.inputs import HFEncoder

    snapshot = tmp_path / "hub" / "models--acme--tiny-bert" / "snapshots" / ("a" * 40)
    tiny_bert(snapshot)
    (tmp_path / "hub" / "models--acme--tiny-bert" / "refs").mkdir()
    (tmp_path / "hub" / "models--acme--tiny-bert" / "refs" / "main").write_text("a" * 40)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    assert resolve_model(HFEncoder(hf="acme/tiny-bert"), tmp_path) == snapshot


def test_an_output_that_cannot_be_pooled_is_named():
    from types import SimpleNamespace

    from polyfuse.nn.hf import hidden_size

    odd = SimpleNamespace(config=SimpleNamespace(model_type="oddnet"))
    with pytest.raises(SpecError, match="oddnet.*cannot be pooled"):
        hidden_size(odd)


def test_the_servers_batching_check_times_text_at_a_requests_length(trained):
    from polyfuse.preprocess.pipeline import Decoded
    from polyfuse.serve.state import sized_like_requests

    out, _ = trained
    model = polyfuse.load(out)
    empty = model.preprocessor.collate(Decoded({n: [None] for n in model.spec.inputs}, {}, [0]))
    assert empty["note"].shape == (1, 1)  # an absent text is one pad token: no measure of a transformer's cost
    row = sized_like_requests(model.spec, empty)
    assert row["note"].shape == (1, 16) and row["note__length"].tolist() == [16]  # max_length 16 in this spec
    assert model.run_arrays(row)["label"].shape == (1, 3)


def test_two_inputs_on_one_frozen_backbone_hold_save_and_export_it_once(toy, tmp_path):
    from safetensors import safe_open

    from polyfuse.deploy.exporter import export

    csv, bert = toy
    spec = text_spec(csv, bert, tmp_path / "cache")
    spec["inputs"]["again"] = {**spec["inputs"]["note"], "column": "note"}
    model = polyfuse.train(spec, out=tmp_path / "m", show_progress=False)
    with safe_open(str(tmp_path / "m" / "weights.safetensors"), "pt") as f:
        saved = set(f.keys())
    assert any(k.startswith("encoders.note.backbone.") for k in saved)
    assert not any(k.startswith("encoders.again.backbone.") for k in saved)
    assert any(k.startswith("encoders.again.proj.") for k in saved)  # each input's own head is still its own

    loaded = polyfuse.load(tmp_path / "m")
    assert loaded.net.encoders["again"].backbone is loaded.net.encoders["note"].backbone
    records = [{"note": "a big dog", "weight": 2.0}, {"note": "the small cat is a very good cat", "weight": 0.1}]
    assert np.allclose(model.predict_proba(records).to_numpy(), loaded.predict_proba(records).to_numpy(), atol=1e-6)
    assert export(tmp_path / "m")["verification"]["passed"]


def test_further_networks_share_the_first_networks_frozen_backbone_and_run_it_once(toy, tmp_path):
    from safetensors import safe_open

    from polyfuse.deploy.exporter import export

    csv, bert = toy
    spec = text_spec(csv, bert, tmp_path / "cache")
    spec["train"].update(ensemble="auto", networks=2)
    model = polyfuse.train(spec, out=tmp_path / "m", show_progress=False)
    assert len(model.net.extra) == 1 and model.net.extra[0].encoders["note"].backbone is model.net.encoders["note"].backbone
    history = json.loads((tmp_path / "m" / "metrics.json").read_text())["ensemble"]["networks"]
    assert not any("skipped" in n for n in history), history
    with safe_open(str(tmp_path / "m" / "weights.safetensors"), "pt") as f:
        saved = set(f.keys())
    assert not any(k.startswith("extra.0.encoders.note.backbone.") for k in saved)
    assert any(k.startswith("extra.0.encoders.note.proj.") for k in saved)  # its own head, trained from its own seed

    loaded = polyfuse.load(tmp_path / "m")
    runs = []
    loaded.net.encoders["note"].backbone.register_forward_hook(lambda *a: runs.append(1))
    records = [{"note": "a big dog", "weight": 2.0}, {"note": "the small cat is a very good cat", "weight": 0.1}]
    assert np.allclose(model.predict_proba(records).to_numpy(), loaded.predict_proba(records).to_numpy(), atol=1e-6)
    assert len(runs) == 1  # one pass of the backbone serves both networks (and the linear member on its vectors)
    assert export(tmp_path / "m")["verification"]["passed"]


def test_an_artifact_trained_when_pretrained_inputs_meant_one_network_still_loads(trained, tmp_path):
    """Before further networks could share a frozen backbone, `networks: 3` with a pretrained input trained
    one network and saved no further ones; such an artifact loads as it was trained."""
    import shutil

    import yaml

    from polyfuse.artifact import refresh_manifest

    out, _ = trained
    folder = tmp_path / "old"
    shutil.copytree(out, folder)
    spec = yaml.safe_load((folder / "spec.yaml").read_text())
    spec["train"].update(ensemble="auto", networks=3)
    (folder / "spec.yaml").write_text(yaml.safe_dump(spec))
    refresh_manifest(folder)
    old = polyfuse.load(folder)
    assert len(old.net.extra) == 0
    records = [{"note": "a big dog", "weight": 2.0}, {"note": "the small cat is a very good cat", "weight": 0.1}]
    assert np.allclose(old.predict_proba(records).to_numpy(), polyfuse.load(out).predict_proba(records).to_numpy())

"""Differential privacy in training (DP-SGD with Opacus): the spec, per-row gradients of every
built-in encoder, a private run end to end, its artifact, and the models that are refused."""
from __future__ import annotations

import copy
import json

import numpy as np
import pandas as pd
import pytest
import torch

pytest.importorskip("opacus")

import polyfuse  # noqa: E402
from polyfuse.errors import SpecError  # noqa: E402
from polyfuse.nn.model import FusionModel, to_tensors  # noqa: E402
from polyfuse.preprocess.pipeline import Preprocessor  # noqa: E402
from polyfuse.spec.schema import load_spec  # noqa: E402
from polyfuse.training import dp  # noqa: E402
from polyfuse.training.trainset import read_splits  # noqa: E402
from tests.conftest import toy_spec  # noqa: E402

PRIVATE = {"epsilon": 8, "delta": 1e-3, "max_grad_norm": 1.0, "settings": "train"}  # the toy spec's few epochs


def test_spec_validation(toy_csv):
    spec, _ = load_spec(toy_spec(toy_csv, privacy=PRIVATE))
    assert spec.train.privacy.epsilon == 8 and spec.train.privacy.accountant == "prv"
    assert spec.fusion.dropout == 0.0  # DP-SGD underfits: no dropout unless the spec asks for it
    plain = load_spec(toy_spec(toy_csv))[0]
    assert plain.train.privacy is None and plain.fusion.dropout == 0.2  # off by default
    asked = toy_spec(toy_csv, privacy=PRIVATE)
    asked["fusion"] = {**asked.get("fusion", {}), "dropout": 0.3}
    assert load_spec(asked)[0].fusion.dropout == 0.3
    load_spec(toy_spec(toy_csv, privacy={"noise_multiplier": 1.1, "max_grad_norm": 1.0}))
    for bad, words in [({"max_grad_norm": 1.0}, "exactly one of epsilon"),
                       ({"epsilon": 8, "noise_multiplier": 1.1}, "exactly one of epsilon"),
                       ({"epsilon": -1}, "train.privacy.epsilon"),
                       ({"epsilon": 8, "delta": 2}, "train.privacy.delta"),
                       ({"epsilon": 8, "max_grad_norm": 0}, "train.privacy.max_grad_norm"),
                       ({"epsilon": 8, "budget": 3}, "unknown field"),
                       ({"epsilon": 8, "settings": "train", "lr": 0.01}, "lr is set here too")]:
        with pytest.raises(SpecError, match=words):
            load_spec(toy_spec(toy_csv, privacy=bad))
    spec = toy_spec(toy_csv, privacy=PRIVATE)
    spec["fusion"]["alone_loss"] = 0.5
    spec["outputs"]["label"].update(head="svm", class_weights="balanced")
    with pytest.raises(SpecError) as err:
        load_spec(spec)
    assert all(w in str(err.value) for w in ("fusion.alone_loss", "outputs.label.head 'svm'", "class_weights"))


def _private_net(toy_csv, tmp_path, **overrides):
    """A toy network built for DP-SGD (GroupNorm, dense tables) with Opacus' layers swapped in."""
    spec_dict = toy_spec(toy_csv, privacy=PRIVATE)
    for name, changes in overrides.items():
        spec_dict["inputs"][name].update(changes)
    spec_dict["fusion"].update(modality_dropout=0.0, dropout=0.0)
    spec, base = load_spec(spec_dict)
    splits = read_splits(spec, base, None, False)
    pre = Preprocessor.fit(spec, splits.train)
    torch.manual_seed(0)
    net = FusionModel(spec, pre.state)
    return spec, pre, splits, net


@pytest.mark.parametrize("encoders", [
    {},  # cnn image, cnn audio, ngram text, mlp number, embedding category
    {"photo": {"encoder": "resnet"}, "sound": {"encoder": "cnn_lstm"}, "note": {"encoder": "bigru"}},
    {"note": {"encoder": "cnn"}, "weight": {"encoder": "linear"}},
    {"note": {"encoder": "bilstm"}},
])
def test_per_row_gradients_of_every_encoder(toy_csv, tmp_path, encoders):
    """Opacus' per-row gradients average to the batch gradient, for every trained parameter."""
    from opacus import GradSampleModule

    from polyfuse.training.epochs import total_loss

    spec, pre, splits, net = _private_net(toy_csv, tmp_path, **encoders)
    assert not any(isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)) for m in net.modules())
    private = dp.start(spec, net, len(splits.train), polyfuse.training.distributed.SINGLE)
    dp.register_grad_samplers()
    hooks = GradSampleModule(net, batch_first=True, loss_reduction="mean")
    idx = np.arange(12)
    xb = to_tensors(pre.collate(splits.train, idx))
    xb["color__present"][:4] = False  # some rows without an input: the "absent" vector gets gradients
    yb = to_tensors({k: v[idx] for k, v in pre.targets(splits.train).items()})
    net.train()
    total_loss(spec, net(xb), yb, {"label": None}).backward()
    trained = [(n, p) for n, p in net.named_parameters() if p.requires_grad]
    assert trained
    for name, p in trained:
        assert p.grad_sample is not None and p.grad_sample.shape == (12, *p.shape), name
        torch.testing.assert_close(p.grad_sample.mean(0), p.grad, atol=1e-5, rtol=1e-3, msg=name)
    hooks.remove_hooks()
    private.finish(net)
    assert not any(type(m).__name__.startswith("DP") for m in net.modules())  # torch's RNNs back


def test_private_training_end_to_end(toy_csv, tmp_path):
    """A private run spends at most its epsilon, records it, and its artifact loads and exports."""
    from polyfuse.deploy.exporter import export
    from polyfuse.runtime import Runtime

    out = tmp_path / "dp"
    model = polyfuse.train(toy_spec(toy_csv, epochs=3, privacy=PRIVATE), out=out, show_progress=False)
    p = json.loads((out / "metrics.json").read_text())["privacy"]
    assert 0 < p["epsilon"] <= 8.0 and p["delta"] == 1e-3 and p["accountant"] == "prv"
    assert p["noise_multiplier"] > 0 and p["max_grad_norm"] == 1.0 and 0 < p["sample_rate"] < 1
    assert p["epochs"] == 3 and p["steps"] == 3 * round(1 / p["sample_rate"])
    assert [r["epsilon"] for r in model.history] == sorted(r["epsilon"] for r in model.history)  # spent per epoch
    card = (out / "MODEL_CARD.md").read_text()
    assert "## Privacy" in card and f"ε = {p['epsilon']}" in card
    assert not len(model.net.wide)  # the wide half would be fitted without noise
    assert model.net.members is None and "under train.privacy" in model.metrics["ensemble"]["off"]  # so would members
    assert "Off: under train.privacy" in card
    assert "NOT PRIVATE" in model.metrics["baseline"]["method"] and "NOT PRIVATE" in card  # the comparison says so
    assert any(isinstance(m, torch.nn.GroupNorm) for m in model.net.modules())
    assert all(m.p == 0 for m in model.net.modules() if isinstance(m, torch.nn.Dropout))

    loaded = polyfuse.load(out)  # built from the spec: GroupNorm, dense table, same weights
    rows = pd.read_csv(toy_csv).head(8)
    folder = toy_csv.parent  # the table's file paths are relative to its folder
    expected = model.predict_proba(rows, folder=folder).to_numpy()  # one output: one DataFrame
    np.testing.assert_allclose(loaded.predict_proba(rows, folder=folder).to_numpy(), expected, atol=1e-5)
    export(out, data=toy_csv)
    np.testing.assert_allclose(Runtime(out).predict_proba(rows, folder=folder)["label"], expected, atol=1e-4)


def test_noise_multiplier_and_rdp(toy_csv, tmp_path):
    privacy = {"noise_multiplier": 1.1, "max_grad_norm": 0.5, "delta": 1e-3, "accountant": "rdp", "settings": "train"}
    spec = toy_spec(toy_csv, epochs=2, privacy=privacy, ema=0.5)  # the average of DP-SGD's noisy steps
    spec["inputs"]["note"]["encoder"] = "bigru"  # a recurrent layer trained privately, saved as torch's GRU
    spec["train"].update(baseline=False, calibrate=False)
    model = polyfuse.train(spec, out=tmp_path / "dp", show_progress=False)
    p = model.metrics["privacy"]
    assert p["noise_multiplier"] == 1.1 and p["accountant"] == "rdp" and p["epsilon"] > 0
    assert isinstance(model.net.encoders["note"].rnn, torch.nn.GRU)
    polyfuse.load(tmp_path / "dp")


def test_refused_with_the_layer_named(toy_csv, tmp_path):
    spec = toy_spec(toy_csv, epochs=1, privacy=PRIVATE)
    spec["fusion"]["method"] = "attention"
    with pytest.raises(SpecError, match=r"layer `fusion` \(AttentionFusion\).*fusion.method concat"):
        polyfuse.train(spec, out=tmp_path / "x", show_progress=False)
    spec = toy_spec(toy_csv, epochs=1, privacy=PRIVATE)
    spec["inputs"]["note"]["buckets"] = 1 << 20  # a million-row n-gram table, once per row of a batch
    with pytest.raises(SpecError, match=r"inputs.note: per-row gradients .* set inputs.note.buckets to \d+"):
        polyfuse.train(spec, out=tmp_path / "y", show_progress=False)


def test_unknown_layer_refused(toy_csv, tmp_path):
    spec, pre, splits, net = _private_net(toy_csv, tmp_path)

    class Scale(torch.nn.Module):  # a trained parameter Opacus has no per-row gradient for
        def __init__(self):
            super().__init__()
            self.gain = torch.nn.Parameter(torch.ones(1))

    net.encoders["weight"].extra = Scale()
    with pytest.raises(SpecError, match=r"layer `encoders.weight.extra` \(Scale\) has no per-row gradient"):
        dp.start(spec, copy.deepcopy(net), len(splits.train), polyfuse.training.distributed.SINGLE)
    net.encoders["photo"].features[0][1] = torch.nn.BatchNorm2d(16)
    del net.encoders["weight"].extra
    with pytest.raises(SpecError, match=r"layer `encoders.photo.features.0.1` \(BatchNorm2d\) mixes the rows"):
        dp.start(spec, net, len(splits.train), polyfuse.training.distributed.SINGLE)


def test_resume_counts_the_steps_already_taken(toy_csv, tmp_path):
    """A private run stopped after an epoch and resumed spends what the uninterrupted run spends."""
    spec = toy_spec(toy_csv, epochs=2, privacy={"noise_multiplier": 1.0, "max_grad_norm": 1.0, "delta": 1e-3,
                                                            "settings": "train"})
    spec["inputs"]["note"]["encoder"] = "bigru"  # Opacus' GRU in the checkpoint, under torch's names
    spec["train"].update(baseline=False, calibrate=False)
    whole = polyfuse.train(spec, out=tmp_path / "whole", show_progress=False)

    def stop(epoch: int, record: dict) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        polyfuse.train(spec, out=tmp_path / "cut", show_progress=False, callback=stop)
    resumed = polyfuse.train(spec, out=tmp_path / "cut", show_progress=False, resume=True)
    assert resumed.metrics["privacy"]["steps"] == whole.metrics["privacy"]["steps"]
    assert resumed.metrics["privacy"]["epsilon"] == whole.metrics["privacy"]["epsilon"]


def test_private_text_cnn_has_no_dropout():
    from types import SimpleNamespace

    from polyfuse.nn.build import build_encoder

    cfg = SimpleNamespace(encoder="cnn", type="text", dim=32)
    state = {"vocab": ["<pad>", "<unk>", "a", "b"]}
    rates = {private: [m.p for m in build_encoder(cfg, state, private).modules() if isinstance(m, torch.nn.Dropout)]
             for private in (False, True)}
    assert rates == {False: [0.2], True: [0.0]}


@pytest.mark.parametrize("accountant", ["prv", "rdp"])
def test_large_noise_accounting_is_quiet(accountant):
    """At epsilon 1 the noise is large and Opacus' RDP analysis warns that its best order is the
    largest alpha (a looser, still valid bound): said every epoch, it buried the training log."""
    import warnings

    from polyfuse.spec.schema import PrivacySpec
    from polyfuse.training.dp import Private

    cfg = PrivacySpec(noise_multiplier=14.0, delta=1e-5, accountant=accountant)
    private = Private(cfg, 1350, 256, 80, 0.19, 5, 14.0, [])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning fails the test
        spent = private.epsilon(400)
    assert 0 < spent < 2


def test_settings_chosen_from_rows_and_epsilon():
    """Larger tables get larger batches and fewer epochs; a larger budget more steps; all within bounds."""
    from polyfuse.spec.dp_defaults import choose

    def pick(rows, eps):
        return {k: v for k, (v, _) in choose(rows, eps).items()}

    small, mid, large = pick(500, 8), pick(1620, 8), pick(100_000, 8)
    assert small["batch_size"] < mid["batch_size"] < large["batch_size"] <= 4096
    assert mid["batch_size"] == 256  # ~6 sqrt(rows): the batch DP-SGD reached 0.95-0.975 with on avdigits
    assert small["epochs"] >= mid["epochs"] > large["epochs"] >= 5
    assert pick(1620, 1)["epochs"] < mid["epochs"] < pick(1620, 32)["epochs"]  # steps grow with epsilon
    assert pick(40, 8)["batch_size"] <= 10  # at least 4 steps an epoch on a tiny table
    assert mid["lr"] > 1e-3 and mid["max_grad_norm"] < 1.0


def test_ngram_tables_are_sized_for_per_row_gradients():
    """20,000 rows at epsilon 8: a batch of ~1,150 rows; two default 65,536-bucket n-gram tables (dim 128)
    would need 38 GB of per-row gradients each. Unset buckets shrink to fit half of TABLE_BYTES each; a
    spec's own buckets are kept (and refused later, naming the size, if they do not fit)."""
    from polyfuse.spec.dp_defaults import TABLE_BYTES, apply, poisson_batch
    from polyfuse.spec.schema import Spec

    spec = Spec.model_validate({"inputs": {"a": {"type": "text"}, "b": {"type": "text"},
                                           "c": {"type": "text", "buckets": 1 << 15}, "n": {"type": "number"}},
                                "outputs": {"y": {"type": "category"}}, "train": {"privacy": {"epsilon": 8}}})
    chosen, lines = apply(spec, 20_000)
    batch = poisson_batch(chosen.train.batch_size, 20_000)
    for name in ("a", "b"):
        buckets = chosen.inputs[name].buckets
        assert buckets < 1 << 16 and batch * buckets * 128 * 4 <= TABLE_BYTES / 3 < batch * 2 * buckets * 128 * 4
        assert any(f"inputs.{name}.buckets {buckets} (was 65536" in line for line in lines)
    assert chosen.inputs["c"].buckets == 1 << 15 and spec.inputs["a"].buckets == 1 << 16  # the user's; the original
    assert apply(spec.model_copy(update={"train": spec.train.model_copy(update={"privacy": None})}), 20_000)[0] \
        .inputs["a"].buckets == 1 << 16  # without privacy nothing changes


def test_private_run_uses_chosen_settings(toy_csv, tmp_path):
    """Adding only privacy to a spec tuned without it: the run's batch, rate and clipping are DP-SGD's,
    the epochs the privacy section sets are kept, and the saved spec says what was trained."""
    import yaml

    from polyfuse.spec.dp_defaults import choose

    spec = toy_spec(toy_csv, epochs=30, privacy={"epsilon": 8, "delta": 1e-3, "epochs": 2})
    spec["train"].update(baseline=False, calibrate=False, batch_size=4, lr=1e-4)
    model = polyfuse.train(spec, out=tmp_path / "dp", show_progress=False)
    p = model.metrics["privacy"]
    rows = p["rows"]
    chosen = {k: v for k, (v, _) in choose(rows, 8).items()}
    assert p["expected_batch_size"] == chosen["batch_size"] != 4 and p["max_grad_norm"] == chosen["max_grad_norm"]
    assert p["epochs"] == 2 and p["settings"] == "auto"
    saved = yaml.safe_load((tmp_path / "dp" / "spec.yaml").read_text())["train"]
    assert (saved["batch_size"], saved["lr"], saved["epochs"]) == (chosen["batch_size"], chosen["lr"], 2)


def test_batch_larger_than_the_table_takes_every_row(toy_csv, tmp_path):
    """The noisy sum is divided by the expected batch: that is the rows, not a larger batch_size asked for."""
    spec = toy_spec(toy_csv, privacy={"epsilon": 8, "delta": 1e-3, "batch_size": 100_000, "epochs": 1})
    spec["train"].update(baseline=False, calibrate=False)
    p = polyfuse.train(spec, show_progress=False).metrics["privacy"]
    assert p["sample_rate"] == 1.0 and p["expected_batch_size"] == p["rows"] and p["steps"] == 1

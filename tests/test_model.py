"""The torch model: encoders, mask-respecting fusion, heads, modality dropout."""
import numpy as np
import pytest
import torch

from polyfuse.data.io import read_table
from polyfuse.nn.model import FusionModel, to_tensors
from polyfuse.preprocess.pipeline import Preprocessor, decode_table
from polyfuse.spec.schema import load_spec
from tests.conftest import toy_spec


def _setup(toy_csv, **patch):
    raw = toy_spec(toy_csv)
    for key, value in patch.items():
        section, _, field = key.partition("__")
        target = raw[section]
        for part in field.split("__")[:-1]:
            target = target[part]
        target[field.split("__")[-1]] = value
    spec = load_spec(raw)[0]
    decoded = decode_table(spec, read_table(toy_csv), with_targets=True)
    pre = Preprocessor.fit(spec, decoded)
    torch.manual_seed(0)
    return spec, pre, FusionModel(spec, pre.state).eval(), pre.collate(decoded, list(range(8)))


@pytest.mark.parametrize("method", ["concat", "mean", "max", "gated", "attention", "lowrank"])
def test_masked_input_changes_nothing(toy_csv, method):
    spec, pre, net, batch = _setup(toy_csv, fusion__method=method)
    for name in spec.inputs:
        masked = dict(batch)
        masked[f"{name}__present"] = np.zeros(8, dtype=bool)
        scrambled = dict(masked)
        arr = batch[name]
        scrambled[name] = (np.random.default_rng(1).integers(0, 2, arr.shape) if arr.dtype == np.int64
                           else np.random.default_rng(1).normal(size=arr.shape).astype(np.float32))
        with torch.no_grad():
            a = net(to_tensors(masked))["label"]
            b = net(to_tensors(scrambled))["label"]
            full = net(to_tensors(batch))["label"]
        assert torch.allclose(a, b, atol=1e-6), f"{method}: masked {name} still influences the output"
        assert not torch.allclose(a, full), f"{method}: removing {name} changed nothing at all"


@pytest.mark.parametrize("method", ["concat", "mean", "max", "gated", "attention", "lowrank"])
def test_forward_with_every_input_missing_and_all_missing(toy_csv, method):
    spec, pre, net, batch = _setup(toy_csv, fusion__method=method)
    empty = dict(batch)
    for name in spec.inputs:
        empty[f"{name}__present"] = np.zeros(8, dtype=bool)
    with torch.no_grad():
        out = net(to_tensors(empty))["label"]
    assert out.shape == (8, 3) and torch.isfinite(out).all()
    assert torch.allclose(out, out[:1].expand_as(out))  # nothing present: the same prior for all rows


@pytest.mark.parametrize("patch", [
    {"inputs__photo__encoder": "resnet"},
    {"inputs__sound__encoder": "cnn_lstm"},
    {"inputs__sound__features": "logmel"},
    {"inputs__sound__deltas": True},
    {"inputs__note__encoder": "bigru"},
    {"inputs__note__encoder": "bilstm"},
    {"inputs__note__tokenizer": "char"},
    {"inputs__weight__encoder": "linear"},
])
def test_encoder_variants_forward_and_backward(toy_csv, patch):
    spec, pre, net, batch = _setup(toy_csv, **patch)
    net.train()
    out = net(to_tensors(batch))["label"]
    out.sum().backward()
    assert out.shape == (8, 3)
    grads = [p.grad for p in net.encoders.parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)


def test_modality_dropout_only_in_training(toy_csv):
    spec, pre, net, batch = _setup(toy_csv, fusion__modality_dropout=0.9, fusion__dropout=0.0)
    t = to_tensors(batch)
    with torch.no_grad():
        net.eval()
        assert torch.equal(net(t)["label"], net(t)["label"])
        net.train()
        for m in net.modules():  # keep batch norm in eval so only modality dropout is random
            if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                m.eval()
        torch.manual_seed(0)
        a = net(t)["label"]
        torch.manual_seed(1)
        b = net(t)["label"]
    assert not torch.allclose(a, b)

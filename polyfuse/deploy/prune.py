"""Structured pruning (`polyfuse compress m --prune 0.5 --out m2`): the channels of polyfuse's own
convolutional and linear encoders with the smallest weights removed (torch-pruning, which follows
every layer a channel feeds: batch norms, the next convolution, the projection), then a short
fine-tune on the model's own training split, then the gates.

Stages: load the model -> its training/validation/test rows as training split them -> MACs,
parameters and test score before -> prune each encoder's inner channels by ``ratio`` (an encoder's
last layer keeps its width, so fusion and heads are unchanged; pretrained backbones, recurrent and
attention encoders are left whole) -> fine-tune -> MACs, parameters and test score after -> refuse
when more than ``max_loss`` points were lost -> save (structure.json records the narrowed widths).
The ONNX parity gate is `polyfuse export` on the result, as for any model.
"""
from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from polyfuse.deploy.onnx import ExportError
from polyfuse.errors import SpecError
from polyfuse.estimator import Model, load
from polyfuse.evaluate.metrics import headline
from polyfuse.evaluate.scores import evaluate
from polyfuse.nn import pruned
from polyfuse.nn.hf import PretrainedEncoder
from polyfuse.training.trainset import log

ROOTS = (nn.Conv1d, nn.Conv2d, nn.Linear)
WHOLE = (nn.RNNBase, nn.MultiheadAttention, PretrainedEncoder)  # encoders pruned not at all


def prunable(net: nn.Module) -> list[tuple[str, nn.ModuleDict, str, list[nn.Module]]]:
    """(label, its ModuleDict, name, inner layers) of every encoder with layers to prune: all but its last
    layer (its vector's width is the spec's ``dim``), none in an encoder holding a recurrent, attention or
    pretrained part (torch-pruning would reach into them)."""
    out = []
    for i, network in enumerate([net, *getattr(net, "extra", [])]):
        for name, encoder in network.encoders.items():
            if any(isinstance(m, WHOLE) for m in encoder.modules()):
                continue
            layers = [m for m in encoder.modules() if isinstance(m, ROOTS)][:-1]
            if layers:
                out.append((name if i == 0 else f"network {i + 1} {name}", network.encoders, name, layers))
    return out


def loose_parameters(net: nn.Module) -> list[tuple[nn.Parameter, int]]:
    """Parameters held by polyfuse's own modules (e.g. the learned stand-ins for absent inputs), with the
    dimension that follows a channel: they sit after each encoder's last layer, whose width stays."""
    known = tuple(pruned.WIDTHS)
    return [(p, p.dim() - 1) for m in net.modules() if not isinstance(m, known)
            for p in m.parameters(recurse=False)]


def macs_and_parameters(net: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[int, int]:
    """Multiply-accumulates of one forward pass over ``batch``'s rows (per row) and parameter count."""
    import torch_pruning as tp

    rows = len(next(iter(batch.values())))
    macs, params = tp.utils.count_ops_and_params(net.eval(), (batch,))
    return int(macs // rows), int(params)


def prune_network(net: nn.Module, batch: dict[str, torch.Tensor], ratio: float) -> tuple[dict[str, dict], list[str]]:
    """Remove ``ratio`` of each prunable layer's output channels in place (the smallest L2 groups), one
    encoder at a time; an encoder whose pruned form does not run ``batch`` (a structure the dependency
    tracer misreads, e.g. parallel branches concatenated after masking) is put back whole. Returns the
    layers whose widths changed and the encoders left whole."""
    import torch_pruning as tp

    before = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    whole = []
    for label, holder, name, layers in prunable(net):
        saved, keep = copy.deepcopy(holder[name]), {id(m) for m in layers}
        try:
            tp.pruner.MetaPruner(
                net.eval(), batch, importance=tp.importance.GroupMagnitudeImportance(p=2), pruning_ratio=ratio,
                ignored_layers=[m for m in net.modules() if isinstance(m, (*ROOTS, nn.RNNBase)) and id(m) not in keep],
                root_module_types=list(ROOTS), round_to=4, forward_fn=lambda model, inputs: model(inputs),
                output_transform=lambda out: sum(v.float().sum() for v in out.values()),
                unwrapped_parameters=loose_parameters(net)).step()
            with torch.no_grad():
                net(batch)
        except Exception as e:  # this encoder stays as it was; the others are still pruned
            holder[name] = saved
            whole.append(label)
            log(f"{label}: left whole (its pruned form failed: {type(e).__name__}: {str(e).splitlines()[0][:160]})")
    return pruned.changed_layers(before, net), whole


def _score(model: Model, rows: Any) -> tuple[dict[str, float], dict[str, Any]]:
    """Each output's headline score on ``rows``, and the whole evaluation (as training reports it)."""
    result = evaluate(model.net, model.preprocessor, rows)
    outputs = result["outputs"]
    return {n: float(outputs[n][headline(c)]) for n, c in model.spec.outputs.items() if n in outputs}, result


def _finetune(model: Model, splits: Any, epochs: int, base: Path) -> int:
    from polyfuse.spec.inputs import hf_encoder
    from polyfuse.threads import ThreadGovernor, usable_cpus
    from polyfuse.training import feature_cache, shards
    from polyfuse.training.epochs import fit_network

    spec = model.spec.model_copy(update={"train": model.spec.train.model_copy(update={"epochs": epochs,
                                                                                     "time_limit": None})})
    if any(hf_encoder(c) for c in spec.inputs.values()):  # frozen backbones' outputs, from the cache training left
        parts = [d for d in (splits.train, splits.valid, splits.test) if d is not None]
        feature_cache.precompute(spec, model.preprocessor, model.net, parts, shards.cache_root(spec, base), False)
    governor = ThreadGovernor(spec.train.threads, usable_cpus())
    valid = model.preprocessor.collate(splits.valid) if splits.valid else None
    history, _ = fit_network(spec, model.preprocessor, splits, model.net, valid, out=None, resume=False, show=False,
                             callback=None, governor=governor)
    model.net.eval()
    return len(history)


def compress(model_dir: str | Path, *, prune: float, out: str | Path, epochs: int | None = None,
             max_loss: float = 1.0) -> Model:
    """A pruned copy of ``model_dir`` at ``out``, fine-tuned for ``epochs`` (default a quarter of the model's,
    at least 3); refused when a test score falls more than ``max_loss`` points."""
    from polyfuse.training.trainset import read_splits

    if not 0 < prune < 1:
        raise SpecError(f"--prune: the share of channels to remove is between 0 and 1 (got {prune})")
    model = load(model_dir)
    base = Path(model.data_info.get("base") or ".")
    if not model.spec.data.train:
        raise SpecError(f"{model_dir}: trained on a DataFrame, so its training table is unknown; pruning fine-tunes "
                        "on it")
    if model.spec.train.privacy is not None:
        raise SpecError(f"{model_dir} was trained with DP-SGD: fine-tuning it without DP would spend privacy its "
                        "card does not account for; prune the spec's network instead (smaller dims) and retrain")
    splits = read_splits(model.spec, base, None, show=False)
    scored = splits.test if splits.test is not None and len(splits.test) else splits.valid
    example = {k: torch.from_numpy(v) for k, v in model.preprocessor.collate(scored, list(range(min(8, len(scored))))).items()}
    original = copy.deepcopy(model.net)
    macs0, params0 = macs_and_parameters(model.net, example)
    score0, _ = _score(model, scored)
    started = time.perf_counter()
    layers, whole = prune_network(model.net, example, prune)
    if not layers:
        raise SpecError(f"{model_dir}: no encoder has convolutional or linear layers to prune (pretrained backbones, "
                        "recurrent and attention encoders are left whole)")
    macs1, params1 = macs_and_parameters(model.net, example)
    log(f"pruned {len(layers)} layers: MACs per row {macs0:,} -> {macs1:,} ({1 - macs1 / macs0:.0%} fewer), "
        f"parameters {params0:,} -> {params1:,}")
    done = _finetune(model, splits, epochs or max(3, model.spec.train.epochs // 4), base)
    score1, result = _score(model, scored)
    lost = {n: round(100 * (score0[n] - score1[n]), 2) for n in score0}
    log(f"fine-tuned {done} epochs; test score {score0} -> {score1}")
    if max(lost.values(), default=0.0) > max_loss:
        raise ExportError(f"pruning {prune:.0%} of the channels lost {max(lost.values()):.2f} points (allowed "
                          f"{max_loss}); nothing written. Try a smaller --prune or more --epochs")
    model.net.pruned_layers = layers
    split = "test" if scored is splits.test else "valid"
    model.metrics = {**model.metrics, split: result, "pruning": {
        "ratio": prune, "layers": len(layers), "macs_per_row": [macs0, macs1], "parameters": [params0, params1],
        "score": {n: [score0[n], score1[n]] for n in score0}, "points_lost": lost, "finetune_epochs": done, "left_whole": whole,
        "seconds": round(time.perf_counter() - started, 1), "scored_on": split,
        "latency_ms_batch1": _latencies(original, model.net, example)}}
    model.save(out)
    return model


def _latencies(before: nn.Module, after: nn.Module, batch: dict[str, torch.Tensor], repeats: int = 30) -> list[float]:
    """Median batch-1 latency in torch of the network before and after, interleaved (a noisy machine)."""
    import statistics

    one = {k: v[:1] for k, v in batch.items()}
    times: list[list[float]] = [[], []]
    with torch.inference_mode():
        for _ in range(repeats):
            for i, net in enumerate((before.eval(), after)):
                t0 = time.perf_counter()
                net(one)
                times[i].append(time.perf_counter() - t0)
    return [round(1000 * statistics.median(t), 3) for t in times]

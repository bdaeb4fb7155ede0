"""The training recipe, top to bottom: read and decode once (:mod:`polyfuse.training.trainset`), fit
preprocessing, train with early stopping and per-epoch checkpoints, restore the best weights,
then the finishing stages: calibration, classic heads, evaluation and the linear baseline.

Determinism: data order, augmentation and dropout are seeded per epoch from ``train.seed``,
so a run resumed from a checkpoint ends with the same weights as an uninterrupted one.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from polyfuse.evaluate.scores import evaluate
from polyfuse.nn import hf
from polyfuse.nn.model import FusionModel
from polyfuse.preprocess.pipeline import BadRow, Preprocessor
from polyfuse.spec import dp_defaults
from polyfuse.spec.inputs import hf_encoder
from polyfuse.spec.schema import Spec
from polyfuse.threads import ThreadGovernor, single_threaded_blas, usable_cpus
from polyfuse.training import distributed, dp
from polyfuse.training.budget import ENSEMBLE_TRAIN_SHARE, TRAIN_SHARE, TimeBudget
from polyfuse.training.device import resolve as resolve_device
from polyfuse.training.epochs import fit_network
from polyfuse.training.memory import keep_freed_heap_top, map_large_allocations
from polyfuse.training.soft_targets import SoftTargets
from polyfuse.training.trainset import Splits, check_rows, log, read_splits
from polyfuse.training.wide import fit_wide
from polyfuse.zoo.catalog import bind_vad


@dataclass
class TrainResult:
    preprocessor: Preprocessor
    net: FusionModel
    history: list[dict] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    bad_rows: list[BadRow] = field(default_factory=list)
    sizes: dict[str, int] = field(default_factory=dict)
    train_seconds: float = 0.0
    data_info: dict[str, Any] = field(default_factory=dict)
    spec: Spec | None = None  # the spec as trained (DP-SGD's chosen settings in it), saved with the model
    main: bool = True  # False on torchrun ranks other than 0, which write nothing


def finish(spec: Spec, pre: Preprocessor, net: FusionModel, splits: Splits, valid_batch: dict | None,
           wide: dict, budget: TimeBudget | None = None) -> dict[str, Any]:
    """After training: the wide half's weight, classic heads, the ensemble, temperature scaling (of
    the ensemble's output), evaluation (test split if any, and validation) and the linear baseline.
    Past ``budget``'s time limit the classic heads, the ensemble and the baseline are skipped."""
    from polyfuse.evaluate import baseline
    from polyfuse.training import classic_heads
    from polyfuse.training.wide import blend

    result: dict[str, Any] = {}
    test_batch = pre.collate(splits.test) if splits.test is not None else None  # collated once, used thrice
    if net.wide_slices:
        result["wide"] = {**wide, "blend": blend(spec, net, valid_batch, pre.targets(splits.valid) if splits.valid else None)}
    budget = budget or TimeBudget(None)
    if any(c.head.type != "softmax" for c in spec.outputs.values()) and budget.fits("classic heads"):
        result["heads"] = classic_heads.fit_and_install(spec, pre, net, splits, valid_batch, test_batch)
    result["ensemble"] = ensemble(spec, pre, net, splits, valid_batch, test_batch, budget) if budget.fits("ensemble") else {
        "off": f"skipped: the time limit ({spec.train.time_limit:g} s) was spent"}
    if spec.train.calibrate and valid_batch is not None:
        from polyfuse.training.calibration import calibrate

        result["calibration"] = calibrate(net, spec, valid_batch, pre.targets(splits.valid), test_batch,
                                          pre.targets(splits.test) if splits.test is not None else None)
        for name, c in result["calibration"].items():
            log(f"calibration {name}: temperature {c['temperature']:.3f}, validation ECE "
                f"{c['valid_ece_before']:.4f} -> {c['valid_ece_after']:.4f}")
    if splits.test is not None:
        result["test"] = evaluate(net, pre, splits.test, batch=test_batch)
    if splits.valid is not None:
        # with its ablation always: the baseline's per-input warnings compare against it
        result["valid"] = evaluate(net, pre, splits.valid, batch=valid_batch)
    if spec.train.baseline and budget.fits("baseline"):
        result["baseline"] = baseline.fit_baselines(spec, pre, splits.train, splits.valid, splits.test)
    return result


def ensemble(spec: Spec, pre: Preprocessor, net: FusionModel, splits: Splits, valid_batch: dict | None,
             test_batch: dict | None, budget: TimeBudget | None = None) -> dict[str, Any]:
    """The linear members fitted and mixed with the network (polyfuse.training.ensemble), or why not."""
    if spec.train.ensemble == "off":
        return {"off": "train.ensemble is off"}
    if spec.train.privacy is not None:
        return {"off": "under train.privacy: the linear members would be fitted without noise, outside DP-SGD's "
                       "guarantee, so the network is the model"}
    if net.members is None:
        return {"off": "no category, binary or multilabel output, or no input a linear member can read"}
    if valid_batch is None or splits.valid is None or not len(splits.valid):
        return {"off": "no validation rows to choose the weights on"}
    from polyfuse.training.ensemble import fit_and_select

    report = fit_and_select(spec, pre, net, splits.train, splits.valid, valid_batch, splits.test, test_batch,
                            deadline=budget.deadline() if budget is not None else None)
    for out, members in report.get("unfitted", {}).items():
        budget.skipped.append(f"ensemble members {', '.join(members)} of {out}")  # only a deadline leaves them
    return report


def train_further(spec: Spec, pre: Preprocessor, splits: Splits, net: FusionModel, valid_batch: dict | None,
                  budget: TimeBudget, place: Any, governor: Any) -> list[dict]:
    """The ensemble's further networks (``train.networks``), each with its own seed, within the time limit;
    one that does not fit is left out of the mix (its weight stays 0) and recorded."""
    done = []
    if spec.train.networks > 1 and not len(net.extra):
        own = [n for n, c in spec.inputs.items() if hf_encoder(c) and not hf.shares_backbone(c)]
        reason = (f"{', '.join(map(repr, own))} would need a backbone per network: a pretrained encoder trained in "
                  "part, pooled by attention or over video frames; a frozen one with cls or mean pooling is shared"
                  if net.members is not None else "the ensemble is off")
        done.append({"networks": spec.train.networks, "skipped": f"one network trained: {reason}"})
        log(f"train.networks {spec.train.networks}: one network trained ({reason})")
    for k, extra in enumerate(net.extra):
        seed = spec.train.seed + 1000 * (k + 1)
        if not budget.fits(f"network {k + 2}"):
            done.append({"network": k + 2, "seed": seed, "skipped": "the time limit was spent"})
            continue
        torch.manual_seed(seed)
        # its own initial weights, from its seed, around the first network's frozen pretrained backbones
        net.extra[k] = extra = FusionModel(spec, pre.state, member=True, backbones=net.backbones)
        hf.leave_shared_out(net)
        seeded = spec.model_copy(update={"train": spec.train.model_copy(update={"seed": seed})})
        history, seconds = fit_network(seeded, pre, splits, extra, valid_batch, out=None, resume=False, show=False,
                                       callback=None, place=place, governor=governor, budget=budget)
        done.append({"network": k + 2, "seed": seed, "epochs": len(history), "seconds": round(seconds, 3)})
        log(f"network {k + 2} of {len(net.extra) + 1} (seed {seed}): {len(history)} epochs in {seconds:.1f} s")
    return done


def prepare_pretrained(spec: Spec, pre: Preprocessor, net: FusionModel, splits: Splits, base: Path,
                       show: bool) -> dict[str, dict]:
    """Pretrained weights into the backbones (frozen, partly trained or with LoRA), then the frozen
    ones' outputs for every row, from the on-disk cache where they were computed before."""
    from polyfuse.training import feature_cache, shards

    hf.load_pretrained(net, spec, base)
    parts = [d for d in (splits.train, splits.valid, splits.test) if d is not None]
    return feature_cache.precompute(spec, pre, net, parts, shards.cache_root(spec, base), show)


def warn_if_beaten(spec: Spec, result: dict[str, Any], history: list[dict]) -> None:
    """Say loudly, with the likely causes, when the linear baseline beats the network on validation."""
    from polyfuse.evaluate.baseline_compare import compare

    if "valid" in result and "baseline" in result:
        result["baseline_warnings"] = compare(result["valid"], result["baseline"], spec, history)
        for warning in result["baseline_warnings"]:
            log(f"WARNING: {warning}")


def run(spec: Spec, base: Path, *, data: Any = None, out: Path | None = None, resume: bool = False,
        show_progress: bool | None = None, callback: Callable[[int, dict], None] | None = None,
        soft: SoftTargets | None = None) -> TrainResult:
    """Train a model from a validated spec. ``base`` is the folder relative data paths start from.
    Progress bars only on a terminal (``show_progress=None``); one line per epoch otherwise.
    ``soft``: probability targets for the network's loss (distillation), by the table's row positions."""
    show = sys.stderr.isatty() if show_progress is None else show_progress
    mixed = spec.train.ensemble == "auto" and spec.train.privacy is None
    budget = TimeBudget(spec.train.time_limit, ENSEMBLE_TRAIN_SHARE if mixed else TRAIN_SHARE)  # counts from here
    dist = distributed.from_env()                                    # one process, or a torchrun rank
    place = resolve_device(spec.train, dist.local_rank)
    governor = ThreadGovernor(spec.train.threads, max(1, usable_cpus() // dist.world))
    torch.set_num_threads(governor.threads())
    single_threaded_blas()  # augmentation recomputes audio features beside torch's threads
    map_large_allocations()  # batches come and go every step: fragmented heap blocks would stay resident
    keep_freed_heap_top()  # ... and the smaller blocks of each step are not faulted in afresh
    show = show and dist.main

    pretrained = any(hf_encoder(c) for c in spec.inputs.values())
    if pretrained:
        hf.bind_folders(spec, base)                                  # 0. pretrained models' processors
    bind_vad(spec.inputs)                                            # 0a. voice activity for `trim: vad`
    splits = read_splits(spec, base, data, show, soft.train_only if soft else None)  # 1. decode once, split
    spec, chosen = dp_defaults.apply(spec, len(splits.train))        # 1a. DP-SGD's own settings
    for line in chosen:
        log(line)
    data_warnings = check_rows(spec, splits)
    pre = Preprocessor.fit(spec, splits.train)                       # 2. fit on training rows only
    torch.manual_seed(spec.train.seed)
    net = FusionModel(spec, pre.state)                               # 3. the network
    cached = prepare_pretrained(spec, pre, net, splits, base, show) if pretrained else {}  # 3a. backbones
    wide = {} if resume else fit_wide(spec, pre, net, splits.train, splits.valid)  # 3b. its linear half
    valid_batch = pre.collate(splits.valid) if splits.valid else None  # collated once, used in 4 and 5
    private = dp.start(spec, net, len(splits.train), dist) if spec.train.privacy else None  # 3c. DP-SGD checks
    history, seconds = fit_network(spec, pre, splits, net, valid_batch, out=out, resume=resume, show=show,
                                   callback=callback, place=place, dist=dist, governor=governor,
                                   private=private, budget=budget, soft=soft)  # 4. train
    privacy = private.finish(net) if private is not None else None  # 4a. plain layers back, epsilon spent
    distributed.finish(dist)
    if not dist.main:  # rank 0 alone finishes, evaluates and writes the artifact
        return TrainResult(pre, net, history, {}, splits.bad_rows, splits.sizes(), seconds, splits.info, spec,
                           main=False)
    if pretrained and hf.merge_lora(net):                            # 4b. adapters folded into the weights
        log("LoRA adapters merged into the backbone weights")
    further = train_further(spec, pre, splits, net, valid_batch, budget, place, governor)  # 4c. more networks
    result = finish(spec, pre, net, splits, valid_batch, wide, budget)  # 5. blend, heads, ensemble, calibrate, evaluate
    if further:
        result.setdefault("ensemble", {})["networks"] = further
    if cached:
        result["pretrained_cache"] = cached
    if privacy:
        result["privacy"] = privacy
    if soft is not None and soft.about:
        result["distillation"] = soft.about
    warn_if_beaten(spec, result, history)                            # 6. the baseline floor
    if data_warnings:
        result["data_warnings"] = data_warnings
    if budget.limit is not None:
        result["time_limit"] = budget.report()
        if budget.skipped:
            log(f"time limit {budget.limit:g} s: skipped {', '.join(budget.skipped)} ({budget.elapsed():.0f} s used)")
    return TrainResult(pre, net, history, result, splits.bad_rows, splits.sizes(), seconds, splits.info, spec)

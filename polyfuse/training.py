"""The training recipe, top to bottom: read and decode once (:mod:`polyfuse.trainset`), fit
preprocessing, train with early stopping and per-epoch checkpoints, restore the best weights,
then the finishing stages: calibration, classic heads, evaluation and the linear baseline.

Determinism: data order, augmentation and dropout are seeded per epoch from ``train.seed``,
so a run resumed from a checkpoint ends with the same weights as an uninterrupted one.
"""
from __future__ import annotations

import copy
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from polyfuse import checkpoint, metrics, optim
from polyfuse.errors import SpecError
from polyfuse.evaluate import evaluate, metrics_from_logits
from polyfuse.nn import heads, hf
from polyfuse.nn.model import FusionModel, predict_arrays, to_tensors
from polyfuse.preprocess.pipeline import BadRow, Decoded, Preprocessor
from polyfuse.spec import Spec, hf_encoder
from polyfuse.threads import single_threaded_blas, usable_cpus
from polyfuse.wide import fit_wide
from polyfuse.trainset import (Splits, batches_of, check_rows, log, prefetch, read_splits, slice_batch,  # noqa: F401 (re-exported)
                               split_decoded, split_rows)


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


# ----------------------------------------------------------------------------- training
def class_weights(spec: Spec, pre: Preprocessor, target: dict[str, np.ndarray]) -> dict[str, torch.Tensor | None]:
    out: dict[str, torch.Tensor | None] = {}
    for name, cfg in spec.outputs.items():
        cw = cfg.class_weights
        if cw is None or cfg.type not in ("category", "binary"):
            out[name] = None
            continue
        classes = pre.classes(name)
        if cw == "balanced":
            counts = np.bincount(target[name].astype(int), minlength=len(classes)).astype(np.float64)
            w = len(target[name]) / (len(classes) * np.maximum(counts, 1))
        else:
            unknown = set(cw) - set(classes)
            if unknown:
                raise SpecError(f"outputs.{name}.class_weights: unknown classes {sorted(unknown)}; classes are {classes}")
            w = np.asarray([cw.get(c, 1.0) for c in classes])
        out[name] = torch.tensor(w, dtype=torch.float32)
    return out


def total_loss(spec: Spec, logits: dict, target: dict, weights: dict) -> torch.Tensor:
    return sum(cfg.weight * heads.loss(cfg, logits[n], target[n], weights[n]) for n, cfg in spec.outputs.items())


def alone_terms(spec: Spec, net: FusionModel, vectors: list, present: torch.Tensor, wide: list, yb: dict,
                weights: dict) -> list[tuple[str, int, torch.Tensor]]:
    """(input, rows it is present in, loss of it answering alone) for each input."""
    return [(name, int(rows.sum()), total_loss(spec, out, {o: y[rows] for o, y in yb.items()}, weights))
            for name, rows, out in net.alone(vectors, present, wide)]


def step_loss(spec: Spec, net: FusionModel, xb: dict, yb: dict, weights: dict) -> torch.Tensor:
    """The training loss of one batch: the fused outputs' loss plus, with ``fusion.alone_loss``, that
    weight times the mean loss of each input answering alone (the encoders run once for both)."""
    if not spec.fusion.alone_loss or len(net.names) < 2:
        return total_loss(spec, net(xb), yb, weights)
    vectors, present, wide = net.encode(xb)
    loss = total_loss(spec, net.decide(vectors, net.drop_inputs(present), wide), yb, weights)
    alone = [term for _, _, term in alone_terms(spec, net, vectors, present, wide, yb, weights)]
    return loss + spec.fusion.alone_loss * torch.stack(alone).mean()


@torch.inference_mode()
def alone_losses(spec: Spec, net: FusionModel, batch: dict, target: dict, weights: dict, chunk: int = 512) -> dict[str, float]:
    """Validation loss of each input answering alone (every other input absent), in eval mode."""
    net.eval()
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    n = len(next(iter(target.values())))
    for start in range(0, n, chunk):
        xb = to_tensors({k: v[start : start + chunk] for k, v in batch.items()})
        yb = to_tensors({k: v[start : start + chunk] for k, v in target.items()})
        vectors, present, wide = net.encode(xb)
        for name, k, term in alone_terms(spec, net, vectors, present, wide, yb, weights):
            sums[name] = sums.get(name, 0.0) + float(term) * k
            counts[name] = counts.get(name, 0) + k
    return {k: sums[k] / counts[k] for k in sums}


def selection(spec: Spec) -> tuple[str, str | None, bool]:
    """(metric, output, higher_is_better) that early stopping watches; default: validation loss."""
    metric = spec.train.metric or "loss"
    if metric == "loss":
        return "loss", None, False
    output, _, name = metric.rpartition(".")
    output = output or next(iter(spec.outputs))
    if output not in spec.outputs:
        raise SpecError(f"train.metric: unknown output {output!r} in {metric!r}; outputs are {list(spec.outputs)}")
    return name, output, metrics.higher_is_better(name)


@dataclass
class Loop:
    """What the epoch loop carries from one epoch to the next (and a checkpoint restores)."""

    history: list[dict] = field(default_factory=list)
    best_state: dict | None = None
    best_score: float = -math.inf
    stale: int = 0
    start: int = 0


def restore(ckpt_dir: Path | None, spec: Spec, net: FusionModel, optimizer: Any, scheduler: Any) -> Loop:
    """The loop state of ``--resume``: weights, optimiser, schedule and history from the checkpoint."""
    if not ckpt_dir or not (ckpt_dir / "state.json").exists():
        raise SpecError(f"--resume: no checkpoint at {ckpt_dir}; train without --resume first")
    model_state, best_state, opt_state, info = checkpoint.load(ckpt_dir)
    if info["spec"] != spec.to_dict():
        raise SpecError(f"--resume: the checkpoint in {ckpt_dir} was made with a different spec")
    net.load_state_dict(model_state)
    optimizer.load_state_dict(opt_state)
    if scheduler is not None and info["scheduler"] is not None:
        scheduler.load_state_dict(info["scheduler"])
    log(f"resuming after epoch {info['epoch'] + 1} from {ckpt_dir}")
    return Loop(info["history"], best_state, float(info["best_score"]), info["stale"], info["epoch"] + 1)


def train_epoch(spec: Spec, net: FusionModel, pre: Preprocessor, train: Decoded, fixed: dict | None,
                target: dict, weights: dict, optimizer: Any, epoch: int, show: bool) -> dict[str, Any]:
    """One pass over the training rows; returns the epoch's record (loss, lr, timings)."""
    from tqdm import tqdm

    cfg = spec.train
    torch.manual_seed(cfg.seed * 100_003 + epoch)
    rng = np.random.default_rng([cfg.seed, epoch])
    order = rng.permutation(len(train))
    timing = {"data_s": 0.0, "step_s": 0.0, "wait_s": 0.0}

    def make(idx: np.ndarray) -> tuple[dict, dict]:
        t = time.perf_counter()
        b = slice_batch(fixed, idx) if fixed is not None else pre.collate(train, idx, train=True, rng=rng)
        y = slice_batch(target, idx)
        timing["data_s"] += time.perf_counter() - t
        return to_tensors(b), to_tensors(y)

    net.train()
    t_epoch, seen, loss_sum = time.perf_counter(), 0, 0.0
    bar = tqdm(total=len(order), desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="row", disable=not show, leave=False)
    chunks = batches_of(order, cfg.batch_size)
    # cached batches are a slice away: a helper thread would only add GIL hand-offs
    batches = (make(idx) for idx in chunks) if fixed is not None else prefetch(chunks, make)
    t_wait = time.perf_counter()
    for xb, yb in batches:
        t_step = time.perf_counter()
        timing["wait_s"] += t_step - t_wait
        loss = step_loss(spec, net, xb, yb, weights)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        n = len(next(iter(yb.values())))
        seen += n
        loss_sum += float(loss.detach()) * n
        t_wait = time.perf_counter()
        timing["step_s"] += t_wait - t_step
        bar.update(n)
        bar.set_postfix(loss=f"{loss_sum / seen:.4f}", rows_per_s=f"{seen / (t_wait - t_epoch):.0f}")
    bar.close()
    return {"epoch": epoch + 1, "train_loss": loss_sum / max(seen, 1), "lr": optimizer.param_groups[0]["lr"],
            "rows_per_s": seen / max(time.perf_counter() - t_epoch, 1e-9), **{k: round(v, 4) for k, v in timing.items()}}


def validate(spec: Spec, net: FusionModel, pre: Preprocessor, batch: dict, target: dict, weights: dict,
             record: dict) -> float:
    """Validation loss and metrics into ``record``; returns the score early stopping maximises."""
    metric, output, higher = selection(spec)
    logits = predict_arrays(net, batch, chunk=512)
    record["valid_loss"] = float(total_loss(spec, logits, to_tensors(target), weights))
    if spec.fusion.alone_loss and len(net.names) > 1:
        # select on the objective that was trained: an input's own answer counts too
        alone = alone_losses(spec, net, batch, target, weights)
        record.update({f"valid_alone_{k}_loss": v for k, v in alone.items()})
        record["valid_loss"] += spec.fusion.alone_loss * float(np.mean(list(alone.values())))
    scores = metrics_from_logits(pre, logits, target, full=False)
    record.update({f"valid_{o}_{k}": v for o, m in scores.items() for k, v in m.items() if k != "n"})
    if metric == "loss":
        return -record["valid_loss"]
    return scores[output][metric] if higher else -scores[output][metric]


def epoch_line(record: dict, epochs: int, improved: bool) -> str:
    shown = "  ".join(f"{k} {v:.4f}" for k, v in record.items()
                      if isinstance(v, float) and (k.endswith("loss") or k.endswith("accuracy") or k.endswith("r2")))
    return (f"epoch {record['epoch']:>3}/{epochs}  {shown}  {record['rows_per_s']:.0f} rows/s"
            f"{'  *best' if improved else ''}")


def fit_network(spec: Spec, pre: Preprocessor, splits: Splits, net: FusionModel, valid_batch: dict | None, *,
                out: Path | None, resume: bool, show: bool, callback: Callable[[int, dict], None] | None
                ) -> tuple[list[dict], float]:
    """The epoch loop with early stopping and per-epoch checkpoints; leaves the best weights in ``net``."""
    cfg = spec.train
    target = pre.targets(splits.train)
    fixed = None if pre.augments() else pre.collate(splits.train)
    valid_target = pre.targets(splits.valid) if splits.valid else None
    optimizer, scheduler = optim.build(spec, net)
    weights = class_weights(spec, pre, target)
    ckpt_dir = Path(str(out) + ".checkpoint") if out else None
    loop = restore(ckpt_dir, spec, net, optimizer, scheduler) if resume else Loop(best_state=copy.deepcopy(net.state_dict()))
    started = time.perf_counter()
    stopped_early = bool(loop.history and loop.history[-1].get("stop"))
    for epoch in range(loop.start, cfg.epochs):
        if stopped_early:
            break
        t_epoch = time.perf_counter()
        record = train_epoch(spec, net, pre, splits.train, fixed, target, weights, optimizer, epoch, show)
        if valid_batch is not None:
            score = validate(spec, net, pre, valid_batch, valid_target, weights, record)
        else:
            score = -record["train_loss"]
        if scheduler is not None:
            scheduler.step(record.get("valid_loss", record["train_loss"]))
        record["seconds"] = round(time.perf_counter() - t_epoch, 3)
        improved = score > loop.best_score + 1e-6
        if improved:
            loop.best_score, loop.stale, loop.best_state = score, 0, copy.deepcopy(net.state_dict())
        else:
            loop.stale += 1
        record["best"] = improved
        record["stop"] = bool(cfg.early_stopping and loop.stale >= cfg.early_stopping)
        loop.history.append(record)
        log(epoch_line(record, cfg.epochs, improved))
        if ckpt_dir:
            checkpoint.save(ckpt_dir, model=net, best=loop.best_state, optimizer=optimizer, scheduler=scheduler,
                            info={"epoch": epoch, "history": loop.history, "stale": loop.stale,
                                  "best_score": loop.best_score, "spec": spec.to_dict()})
        if callback:
            callback(epoch, record)
        if record["stop"]:
            log(f"early stopping: no improvement in {cfg.early_stopping} epochs")
            break
    net.load_state_dict(loop.best_state)
    net.eval()
    return loop.history, time.perf_counter() - started


def finish(spec: Spec, pre: Preprocessor, net: FusionModel, splits: Splits, valid_batch: dict | None,
           wide: dict) -> dict[str, Any]:
    """After training: the wide half's weight, classic heads, temperature scaling, evaluation (test
    split if any, and validation) and the linear baseline the network is compared with."""
    from polyfuse import baseline, classic_heads
    from polyfuse.wide import blend

    result: dict[str, Any] = {}
    test_batch = pre.collate(splits.test) if splits.test is not None else None  # collated once, used thrice
    if net.wide_slices:
        result["wide"] = {**wide, "blend": blend(spec, net, valid_batch, pre.targets(splits.valid) if splits.valid else None)}
    if any(c.head.type != "softmax" for c in spec.outputs.values()):
        result["heads"] = classic_heads.fit_and_install(spec, pre, net, splits, valid_batch, test_batch)
    if spec.train.calibrate and valid_batch is not None:
        from polyfuse.calibration import calibrate

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
    if spec.train.baseline:
        result["baseline"] = baseline.fit_baselines(spec, pre, splits.train, splits.valid, splits.test)
    return result


def prepare_pretrained(spec: Spec, pre: Preprocessor, net: FusionModel, splits: Splits, base: Path,
                       show: bool) -> dict[str, dict]:
    """Pretrained weights into the backbones (frozen, partly trained or with LoRA), then the frozen
    ones' outputs for every row, from the on-disk cache where they were computed before."""
    from polyfuse.nn import feature_cache

    hf.load_pretrained(net, spec, base)
    parts = [d for d in (splits.train, splits.valid, splits.test) if d is not None]
    return feature_cache.precompute(spec, pre, net, parts, feature_cache.cache_root(spec, base), show)


def warn_if_beaten(spec: Spec, result: dict[str, Any], history: list[dict]) -> None:
    """Say loudly, with the likely causes, when the linear baseline beats the network on validation."""
    from polyfuse import baseline

    if "valid" in result and "baseline" in result:
        result["baseline_warnings"] = baseline.compare(result["valid"], result["baseline"], spec, history)
        for warning in result["baseline_warnings"]:
            log(f"WARNING: {warning}")


def run(spec: Spec, base: Path, *, data: Any = None, out: Path | None = None, resume: bool = False,
        show_progress: bool | None = None, callback: Callable[[int, dict], None] | None = None) -> TrainResult:
    """Train a model from a validated spec. ``base`` is the folder relative data paths start from.
    Progress bars only on a terminal (``show_progress=None``); one line per epoch otherwise."""
    show = sys.stderr.isatty() if show_progress is None else show_progress
    torch.set_num_threads(spec.train.threads or usable_cpus())
    single_threaded_blas()  # augmentation recomputes audio features beside torch's threads

    pretrained = any(hf_encoder(c) for c in spec.inputs.values())
    if pretrained:
        hf.bind_folders(spec, base)                                  # 0. pretrained models' processors
    splits = read_splits(spec, base, data, show)                     # 1. decode once, split
    data_warnings = check_rows(spec, splits)
    pre = Preprocessor.fit(spec, splits.train)                       # 2. fit on training rows only
    torch.manual_seed(spec.train.seed)
    net = FusionModel(spec, pre.state)                               # 3. the network
    cached = prepare_pretrained(spec, pre, net, splits, base, show) if pretrained else {}  # 3a. backbones
    wide = {} if resume else fit_wide(spec, pre, net, splits.train, splits.valid)  # 3b. its linear half
    valid_batch = pre.collate(splits.valid) if splits.valid else None  # collated once, used in 4 and 5
    history, seconds = fit_network(spec, pre, splits, net, valid_batch, out=out, resume=resume, show=show,
                                   callback=callback)                # 4. train, keep the best epoch
    if pretrained and hf.merge_lora(net):                            # 4b. adapters folded into the weights
        log("LoRA adapters merged into the backbone weights")
    result = finish(spec, pre, net, splits, valid_batch, wide)       # 5. blend, heads, calibrate, evaluate
    if cached:
        result["pretrained_cache"] = cached
    warn_if_beaten(spec, result, history)                            # 6. the baseline floor
    if data_warnings:
        result["data_warnings"] = data_warnings
    return TrainResult(pre, net, history, result, splits.bad_rows, splits.sizes(), seconds, splits.info)

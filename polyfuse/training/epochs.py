"""The epoch loop: batches, the loss of a step, validation, early stopping and per-epoch
checkpoints, on one process or several (torchrun/DDP, :mod:`polyfuse.training.distributed`), on the device
and in the precision the spec asks for (:mod:`polyfuse.training.device`), with as many threads as the
machine can spare (:class:`polyfuse.threads.ThreadGovernor`).

Determinism: data order, augmentation and dropout are seeded per epoch from ``train.seed``, so a
run resumed from a checkpoint ends with the same weights as an uninterrupted one.
"""
from __future__ import annotations

import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ContextManager, Iterator

import numpy as np
import torch

from polyfuse.errors import ArtifactError, SpecError
from polyfuse.evaluate import metrics
from polyfuse.evaluate.scores import metrics_from_logits
from polyfuse.nn import heads
from polyfuse.nn.model import FusionModel, predict_arrays, to_tensors
from polyfuse.preprocess.pipeline import Decoded, Preprocessor
from polyfuse.spec.schema import Spec
from polyfuse.threads import ThreadGovernor
from polyfuse.training import checkpoint, distributed, optim, soft_targets
from polyfuse.training.averaging import WeightAverage
from polyfuse.training.device import CPU, Placement, to_device
from polyfuse.training.distributed import SINGLE, Dist
from polyfuse.training.memory import collated_fits
from polyfuse.training.trainset import Splits, batches_of, log, prefetch, slice_batch


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


def alone_terms(spec: Spec, net: FusionModel, vectors: list, present: torch.Tensor, side: Any, yb: dict,
                weights: dict) -> list[tuple[str, int, torch.Tensor]]:
    """(input, rows it is present in, loss of it answering alone) for each input."""
    return [(name, int(rows.sum()), total_loss(spec, out, {o: y[rows] for o, y in yb.items()}, weights))
            for name, rows, out in net.alone(vectors, present, side)]


def step_loss(spec: Spec, net: FusionModel, xb: dict, yb: dict, weights: dict) -> torch.Tensor:
    """The training loss of one batch: the fused outputs' loss plus, with ``fusion.alone_loss``, that
    weight times the mean loss of each input answering alone (the encoders run once for both)."""
    if not spec.fusion.alone_loss or len(net.names) < 2:
        return total_loss(spec, net(xb), yb, weights)
    vectors, present, side = net.encode(xb)
    loss = total_loss(spec, net.decide(vectors, net.drop_inputs(present), side), yb, weights)
    alone = [term for _, _, term in alone_terms(spec, net, vectors, present, side, yb, weights)]
    return loss + spec.fusion.alone_loss * torch.stack(alone).mean()


@torch.inference_mode()
def alone_losses(spec: Spec, net: FusionModel, batch: dict, target: dict, weights: dict, chunk: int = 512) -> dict[str, float]:
    """Validation loss of each input answering alone (every other input absent), in eval mode."""
    net.eval()
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    n = len(next(iter(target.values())))
    for start in range(0, n, chunk):
        device = next(net.parameters()).device
        xb = to_tensors({k: v[start : start + chunk] for k, v in batch.items()}, device)
        yb = to_tensors({k: v[start : start + chunk] for k, v in target.items()}, device)
        vectors, present, side = net.encode(xb)
        for name, k, term in alone_terms(spec, net, vectors, present, side, yb, weights):
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


def learnt_state(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A copy of what training changes (every buffer and trainable parameter), for the best-so-far weights
    and the checkpoints: copying a frozen e5 twice an epoch wrote 1.9 GB checkpoints for two text inputs."""
    frozen = checkpoint.frozen_parameters(net)
    return {k: v.detach().clone() for k, v in net.state_dict().items() if k not in frozen}


def load_learnt(net: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load a ``learnt_state``: every key but the frozen parameters must be there, and nothing else."""
    missing, unexpected = net.load_state_dict(state, strict=False)
    wrong = sorted(set(missing) - checkpoint.frozen_parameters(net)) + sorted(unexpected)
    if wrong:
        raise ArtifactError(f"saved training state does not fit the network (e.g. {wrong[:3]}); train again "
                            "without --resume")


def restore(ckpt_dir: Path | None, spec: Spec, net: FusionModel, optimizer: Any, scheduler: Any) -> Loop:
    """The loop state of ``--resume``: weights, optimiser, schedule and history from the checkpoint."""
    if not ckpt_dir or not (ckpt_dir / "state.json").exists():
        raise SpecError(f"--resume: no checkpoint at {ckpt_dir}; train without --resume first")
    model_state, best_state, opt_state, info = checkpoint.load(ckpt_dir)
    if info["spec"] != spec.to_dict():
        raise SpecError(f"--resume: the checkpoint in {ckpt_dir} was made with a different spec")
    load_learnt(net, model_state)
    optimizer.load_state_dict(opt_state)
    if scheduler is not None and info["scheduler"] is not None:
        scheduler.load_state_dict(info["scheduler"])
    log(f"resuming after epoch {info['epoch'] + 1} from {ckpt_dir}")
    return Loop(info["history"], best_state, float(info["best_score"]), info["stale"], info["epoch"] + 1)


@dataclass
class Stepper:
    """How the rows of an epoch become batches and a batch a weight update: the loss module
    (DDP-wrapped under torchrun), the optimiser, the placement (device, autocast) and, for fp16, the
    gradient scaler. DP-SGD's :class:`polyfuse.training.dp.PrivateStepper` draws Poisson batches
    and clips and noises the update instead."""

    loss: torch.nn.Module
    optimizer: Any
    place: Placement = CPU
    dist: Dist = SINGLE
    scaler: Any = None
    batch_size: int = 64  # this rank's share of train.batch_size
    average: WeightAverage | None = None  # train.ema: moved after every step

    def batches(self, order: np.ndarray, rng: np.random.Generator) -> Iterator[np.ndarray]:
        """The epoch's batches of row indices: consecutive slices of the shuffled ``order``."""
        return batches_of(order, self.batch_size)

    def summary(self) -> dict[str, Any]:
        """What the stepper adds to the epoch's record (nothing here; DP-SGD: the epsilon spent)."""
        return {}

    def step(self, xb: dict, yb: dict) -> torch.Tensor:
        with self.place.autocast():
            loss = self.loss(xb, yb)
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            for part in getattr(self.optimizer, "parts", [self.optimizer]):
                self.scaler.step(part)
            self.scaler.update()
        else:
            loss.backward()
            self.optimizer.step()
        if self.average is not None:
            self.average.update()
        return loss

    def evaluated(self) -> ContextManager[None]:
        """The weights validation and the saved model use: the average with train.ema, else the network's."""
        return self.average.applied() if self.average is not None else nullcontext()


def make_stepper(spec: Spec, net: FusionModel, weights: dict, optimizer: Any, place: Placement, dist: Dist,
                 private: Any = None, history: list[dict] | None = None) -> Stepper:
    """The run's stepper; with ``private`` (:func:`polyfuse.training.dp.start`) the DP-SGD one."""
    module = distributed.StepLoss(net, lambda n, xb, yb: step_loss(spec, n, xb, yb, weights))
    scaler = torch.amp.GradScaler(place.device.type) if place.scaled else None
    average = WeightAverage(net, spec.train.ema) if spec.train.ema else None
    stepper = Stepper(distributed.wrap(module, dist), optimizer, place, dist, scaler,
                      distributed.batch_size(spec.train.batch_size, dist), average)
    return private.wrap(stepper, net, history or []) if private is not None else stepper


def train_epoch(spec: Spec, net: FusionModel, pre: Preprocessor, train: Decoded, fixed: dict | None,
                target: dict, stepper: Stepper, epoch: int, show: bool) -> dict[str, Any]:
    """One pass over this rank's training rows; returns the epoch's record (loss, lr, timings),
    the loss and rows summed over every rank."""
    from tqdm import tqdm

    cfg, dist = spec.train, stepper.dist
    torch.manual_seed(cfg.seed * 100_003 + epoch)
    rng = np.random.default_rng([cfg.seed, epoch] + ([dist.rank] if dist.enabled else []))
    order = distributed.epoch_order(len(train), epoch, cfg.seed, dist, rng)
    timing = {"data_s": 0.0, "step_s": 0.0, "wait_s": 0.0}
    device = stepper.place.device

    def make(idx: np.ndarray) -> tuple[dict, dict]:
        t = time.perf_counter()
        b = slice_batch(fixed, idx) if fixed is not None else pre.collate(train, idx, train=True, rng=rng)
        y = slice_batch(target, idx)
        timing["data_s"] += time.perf_counter() - t
        return to_device(to_tensors(b), device), to_device(to_tensors(y), device)

    net.train()
    t_epoch, seen, loss_sum = time.perf_counter(), 0, 0.0
    bar = tqdm(total=len(order), desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="row", disable=not show, leave=False)
    chunks = stepper.batches(order, rng)
    # cached batches are a slice away: a helper thread would only add GIL hand-offs
    batches = (make(idx) for idx in chunks) if fixed is not None else prefetch(chunks, make)
    t_wait = time.perf_counter()
    for xb, yb in batches:
        t_step = time.perf_counter()
        timing["wait_s"] += t_step - t_wait
        loss = stepper.step(xb, yb)
        n = len(next(iter(yb.values())))
        seen += n
        loss_sum += float(loss.detach()) * n
        t_wait = time.perf_counter()
        timing["step_s"] += t_wait - t_step
        bar.update(n)
        bar.set_postfix(loss=f"{loss_sum / seen:.4f}", rows_per_s=f"{seen / (t_wait - t_epoch):.0f}")
    bar.close()
    loss_sum, seen = distributed.all_sum([loss_sum, float(seen)], dist)
    return {"epoch": epoch + 1, "train_loss": loss_sum / max(seen, 1), "lr": stepper.optimizer.param_groups[0]["lr"],
            "rows_per_s": seen / max(time.perf_counter() - t_epoch, 1e-9), **{k: round(v, 4) for k, v in timing.items()},
            **stepper.summary()}


def validate(spec: Spec, net: FusionModel, pre: Preprocessor, batch: dict, target: dict, weights: dict,
             record: dict) -> float:
    """Validation loss and metrics into ``record``; returns the score early stopping maximises."""
    metric, output, higher = selection(spec)
    logits = predict_arrays(net, batch, chunk=512)  # on the CPU, whatever the device
    on_cpu = {k: None if w is None else w.cpu() for k, w in weights.items()}
    record["valid_loss"] = float(total_loss(spec, logits, to_tensors(target), on_cpu))
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


def set_threads(governor: ThreadGovernor | None) -> None:
    """Torch threads for the next epoch: fewer while other processes hold some of the cores."""
    if governor is None:
        return
    n, before = governor.threads(), torch.get_num_threads()
    if n != before:
        torch.set_num_threads(n)
        log(f"torch threads {before} -> {n} (of {governor.cpus} usable CPUs; other processes are using the rest)"
            if n < governor.cpus else f"torch threads {before} -> {n}: the CPUs are free again")


def fit_network(spec: Spec, pre: Preprocessor, splits: Splits, net: FusionModel, valid_batch: dict | None, *,
                out: Path | None, resume: bool, show: bool, callback: Callable[[int, dict], None] | None,
                place: Placement = CPU, dist: Dist = SINGLE, governor: ThreadGovernor | None = None,
                private: Any = None, budget: Any = None, soft: soft_targets.SoftTargets | None = None) -> tuple[list[dict], float]:
    """The epoch loop with early stopping and per-epoch checkpoints (written by rank 0); leaves the
    best weights in ``net``, back on the CPU. ``private``: train with DP-SGD (:mod:`polyfuse.training.dp`);
    ``budget``: a :class:`polyfuse.training.budget.TimeBudget` that may end training before ``epochs``;
    ``soft``: probability targets the loss reads instead of the training labels."""
    cfg = spec.train
    target = pre.targets(splits.train)
    learn = target if soft is None else soft_targets.replace(
        target, soft, splits.train.rows, {n: pre.classes(n) for n in soft.probs},
        {n: spec.outputs[n].type for n in soft.probs})
    fixed = None  # unaugmented rows are collated once where that copy fits data.memory_budget_mb's share
    if not pre.augments():
        fits, mb = collated_fits(pre, splits.train, spec.data.memory_budget_mb)
        fixed = pre.collate(splits.train) if fits else None
        if not fits:
            log(f"training rows collated batch by batch: collated once they would take ~{mb:.0f} MB, over a quarter "
                f"of data.memory_budget_mb ({spec.data.memory_budget_mb})")
    valid_target = pre.targets(splits.valid) if splits.valid else None
    net.to(place.device)
    optimizer, scheduler = optim.build(spec, net)
    weights = {k: None if w is None else w.to(place.device) for k, w in class_weights(spec, pre, target).items()}
    ckpt_dir = Path(str(out) + ".checkpoint") if out else None
    loop = restore(ckpt_dir, spec, net, optimizer, scheduler) if resume else Loop(best_state=learnt_state(net))
    stepper = make_stepper(spec, net, weights, optimizer, place, dist, private, loop.history)
    if resume and stepper.average is not None:
        checkpoint.restore_average(ckpt_dir, stepper.average)  # type: ignore[arg-type]
    started = time.perf_counter()
    stopped_early = bool(loop.history and loop.history[-1].get("stop"))
    for epoch in range(loop.start, cfg.epochs):
        if stopped_early:
            break
        set_threads(governor)
        t_epoch = time.perf_counter()
        record = train_epoch(spec, net, pre, splits.train, fixed, learn, stepper, epoch, show)
        distributed.sync_buffers(net, dist)
        with stepper.evaluated():
            if valid_batch is not None:
                score = validate(spec, net, pre, valid_batch, valid_target, weights, record)
            else:
                score = -record["train_loss"]
            score = distributed.from_main(score, dist)
            improved = score > loop.best_score + 1e-6
            if improved:
                loop.best_score, loop.stale, loop.best_state = score, 0, learnt_state(net)
            else:
                loop.stale += 1
        if scheduler is not None:
            scheduler.step(record.get("valid_loss", record["train_loss"]))
        record["seconds"] = round(time.perf_counter() - t_epoch, 3)
        record["best"] = improved
        record["stop"] = bool(cfg.early_stopping and loop.stale >= cfg.early_stopping)
        loop.history.append(record)
        log(epoch_line(record, cfg.epochs, improved))
        if ckpt_dir and dist.main:
            checkpoint.save(ckpt_dir, model=net, best=loop.best_state, optimizer=optimizer, scheduler=scheduler,
                            info={"epoch": epoch, "history": loop.history, "stale": loop.stale,
                                  "best_score": loop.best_score, "spec": spec.to_dict()}, average=stepper.average)
        if callback:
            callback(epoch, record)
        if record["stop"]:
            log(f"early stopping: no improvement in {cfg.early_stopping} epochs")
            break
        if budget is not None and epoch + 1 < cfg.epochs and not distributed.from_main(
                float(budget.another_epoch(record["seconds"])), dist):
            budget.skipped.append(f"epochs {epoch + 2}-{cfg.epochs}")
            log(f"time limit: training stops after epoch {epoch + 1} ({budget.elapsed():.0f} s of {budget.limit:g} s; "
                f"another epoch takes ~{record['seconds']:.0f} s)")
            break
    load_learnt(net, loop.best_state)
    net.to("cpu").eval()
    return loop.history, time.perf_counter() - started



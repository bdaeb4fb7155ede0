"""The training recipe, top to bottom: read, decode once, split, fit preprocessing, train with
early stopping and per-epoch checkpoints, restore the best weights, evaluate.

Determinism: data order, augmentation and dropout are seeded per epoch from ``train.seed``,
so a run resumed from a checkpoint ends with the same weights as an uninterrupted one.
"""
from __future__ import annotations

import copy
import math
import queue
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from polyfuse import checkpoint, metrics
from polyfuse.errors import BadInputError, SpecError
from polyfuse.evaluate import evaluate, metrics_from_logits
from polyfuse.io import Table, read_table
from polyfuse.nn import heads
from polyfuse.nn.model import FusionModel, predict_arrays, to_tensors
from polyfuse.preprocess.pipeline import BadRow, Decoded, Preprocessor, decode_table
from polyfuse.spec import Spec
from polyfuse.threads import single_threaded_blas, usable_cpus


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


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- data
def decode_with_progress(spec: Spec, table: Table, what: str, on_bad_row: str, show: bool) -> Decoded:
    from tqdm import tqdm

    total = len(table) * (len(spec.inputs) + len(spec.outputs))
    with tqdm(total=total, desc=f"decode {what}", unit="cell", disable=not show, leave=False) as bar:
        decoded = decode_table(spec, table, with_targets=True, on_bad_row=on_bad_row, progress=bar.update)
    if decoded.bad:
        log(f"{what}: skipped {len(decoded.bad)} bad row(s) of {len(table)} in {table.name}:")
        for bad in decoded.bad[:20]:
            log(f"  {bad}")
        if len(decoded.bad) > 20:
            log(f"  ... and {len(decoded.bad) - 20} more (all are listed in metrics.json)")
    if len(decoded) == 0:
        raise BadInputError(f"{what}: no usable rows in {table.name} ({len(decoded.bad)} bad)")
    return decoded


def split_rows(n: int, groups: list | None, valid: float, test: float, seed: int) -> tuple[list[int], list[int], list[int]]:
    """Random (or grouped: a group never straddles two parts) train/valid/test positions."""
    rng = np.random.default_rng(seed)
    if groups is None:
        order = rng.permutation(n)
        n_valid, n_test = int(round(n * valid)), int(round(n * test))
        if valid > 0:
            n_valid = max(1, n_valid)
        return sorted(order[n_valid + n_test :]), sorted(order[:n_valid]), sorted(order[n_valid : n_valid + n_test])
    keys = sorted({str(g) for g in groups})
    rng.shuffle(keys)
    by_key: dict[str, list[int]] = {}
    for i, g in enumerate(groups):
        by_key.setdefault(str(g), []).append(i)
    parts: list[list[int]] = [[], [], []]
    quota = [n * valid, n * test]
    for key in keys:  # fill valid, then test, with whole groups; the rest trains
        for p in (0, 1):
            if quota[p] > 0 and len(parts[p]) < quota[p] and len(keys) > 1:
                parts[p].extend(by_key[key])
                break
        else:
            parts[2].extend(by_key[key])
    if not parts[2]:
        raise SpecError(f"data.split.group_by: only {len(keys)} group(s); cannot keep any for training")
    return sorted(parts[2]), sorted(parts[0]), sorted(parts[1])


def split_decoded(spec: Spec, table: Table, full: Decoded, *, valid: bool, test: bool
                  ) -> tuple[Decoded, Decoded | None, Decoded | None]:
    """Train/valid/test parts of the decoded training table as ``data.split`` says (deterministic)."""
    split = spec.data.split
    groups = None
    if split.group_by:
        if split.group_by not in table.columns:
            raise SpecError(f"data.split.group_by: column {split.group_by!r} not in {table.name} "
                            f"(columns: {list(table.columns)})")
        position = {row: i for i, row in enumerate(table.rows)}
        groups = [table.columns[split.group_by][position[row]] for row in full.rows]
    tr, va, te = split_rows(len(full), groups, split.valid if valid else 0.0, split.test if test else 0.0, split.seed)
    if groups is not None and va:
        log(f"split by {split.group_by!r}: valid holds {len(va)} rows ({len(va) / len(full):.0%}; asked "
            f"{split.valid:.0%}) from {len({str(groups[i]) for i in va})} group(s)")
    return full.subset(tr), full.subset(va) if va else None, full.subset(te) if te else None


def batches_of(order: np.ndarray, size: int) -> list[np.ndarray]:
    """Mini-batches; a last batch of one row joins the previous one (batch norm needs two)."""
    out = [order[i : i + size] for i in range(0, len(order), size)]
    if len(out) > 1 and len(out[-1]) < 2:
        out[-2] = np.concatenate([out[-2], out.pop()])
    return out


def prefetch(items: list, make: Callable[[Any], Any], depth: int = 3) -> Iterator[Any]:
    """Build batches in a background thread while the model trains on the previous one."""
    q: queue.Queue = queue.Queue(maxsize=depth)

    def work() -> None:
        try:
            for item in items:
                q.put(make(item))
        except BaseException as e:  # hand any failure to the consumer instead of hanging it
            q.put(e)
        q.put(StopIteration)

    threading.Thread(target=work, daemon=True).start()
    while (got := q.get()) is not StopIteration:
        if isinstance(got, BaseException):
            raise got
        yield got


def slice_batch(batch: dict[str, np.ndarray], idx: np.ndarray) -> dict[str, np.ndarray]:
    return {k: v[idx] for k, v in batch.items()}


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


def alone_terms(spec: Spec, net: FusionModel, vectors: list, present: torch.Tensor, yb: dict,
                weights: dict) -> list[tuple[str, int, torch.Tensor]]:
    """(input, rows it is present in, loss of it answering alone) for each input."""
    return [(name, int(rows.sum()), total_loss(spec, out, {o: y[rows] for o, y in yb.items()}, weights))
            for name, rows, out in net.alone(vectors, present)]


def step_loss(spec: Spec, net: FusionModel, xb: dict, yb: dict, weights: dict) -> torch.Tensor:
    """The training loss of one batch: the fused outputs' loss plus, with ``fusion.alone_loss``, that
    weight times the mean loss of each input answering alone (the encoders run once for both)."""
    if not spec.fusion.alone_loss or len(net.names) < 2:
        return total_loss(spec, net(xb), yb, weights)
    vectors, present = net.encode(xb)
    loss = total_loss(spec, net.decide(vectors, net.drop_inputs(present)), yb, weights)
    alone = [term for _, _, term in alone_terms(spec, net, vectors, present, yb, weights)]
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
        vectors, present = net.encode(xb)
        for name, k, term in alone_terms(spec, net, vectors, present, yb, weights):
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


def run(spec: Spec, base: Path, *, data: Any = None, out: Path | None = None, resume: bool = False,
        show_progress: bool | None = None, callback: Callable[[int, dict], None] | None = None) -> TrainResult:
    """Train a model from a validated spec. ``base`` is the folder relative data paths start from."""
    show = sys.stderr.isatty() if show_progress is None else show_progress
    cfg = spec.train
    torch.set_num_threads(cfg.threads or usable_cpus())
    single_threaded_blas()  # augmentation recomputes audio features beside torch's threads
    on_bad = spec.data.on_bad_row

    # 1. read and decode every table once; later epochs reuse the decoded values
    source = data if data is not None else spec.data.train
    if source is None:
        raise SpecError("data.train: no training table given (set data.train in the spec or pass data=)")
    train_table = read_table(source, base)
    full = decode_with_progress(spec, train_table, "train", on_bad, show)
    bad_rows = list(full.bad)
    test_dec = valid_dec = None
    if spec.data.valid:
        valid_dec = decode_with_progress(spec, read_table(spec.data.valid, base), "valid", on_bad, show)
        bad_rows += valid_dec.bad
    if spec.data.test:
        test_dec = decode_with_progress(spec, read_table(spec.data.test, base), "test", on_bad, show)
        bad_rows += test_dec.bad

    # 2. split what the spec did not give as separate tables
    train_dec, va_part, te_part = split_decoded(spec, train_table, full, valid=valid_dec is None, test=test_dec is None)
    valid_dec, test_dec = valid_dec or va_part, test_dec or te_part
    sizes = {"train": len(train_dec), "valid": len(valid_dec or []), "test": len(test_dec or [])}
    # where the validation rows came from, so that export can verify itself on them later
    data_info = {"base": str(Path(base).resolve()), "train": None if data is not None else spec.data.train,
                 "valid": spec.data.valid, "valid_rows": None if spec.data.valid or not valid_dec else valid_dec.rows}

    # 3. fit preprocessing on training rows only, then build what does not change per epoch
    pre = Preprocessor.fit(spec, train_dec)
    train_target = pre.targets(train_dec)
    fixed_train = None if pre.augments() else pre.collate(train_dec)
    valid_batch = pre.collate(valid_dec) if valid_dec else None
    valid_target = pre.targets(valid_dec) if valid_dec else None

    # 4. model, optimiser, schedule
    torch.manual_seed(cfg.seed)
    net = FusionModel(spec, pre.state)
    opt_cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    optimizer = opt_cls(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.schedule == "cosine":
        scheduler: Any = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs)
    elif cfg.schedule == "plateau":
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.5, patience=2)
    else:
        scheduler = None
    weights = class_weights(spec, pre, train_target)
    metric, metric_output, higher = selection(spec)

    history: list[dict] = []
    best_state = copy.deepcopy(net.state_dict())
    best_score, stale, start = -math.inf, 0, 0
    ckpt_dir = Path(str(out) + ".checkpoint") if out else None
    if resume:
        if not ckpt_dir or not (ckpt_dir / "state.json").exists():
            raise SpecError(f"--resume: no checkpoint at {ckpt_dir}; train without --resume first")
        model_state, best_state, opt_state, info = checkpoint.load(ckpt_dir)
        if info["spec"] != spec.to_dict():
            raise SpecError(f"--resume: the checkpoint in {ckpt_dir} was made with a different spec")
        net.load_state_dict(model_state)
        optimizer.load_state_dict(opt_state)
        if scheduler is not None and info["scheduler"] is not None:
            scheduler.load_state_dict(info["scheduler"])
        history, stale, start = info["history"], info["stale"], info["epoch"] + 1
        best_score = float(info["best_score"])
        log(f"resuming after epoch {start} from {ckpt_dir}")

    # 5. train
    from tqdm import tqdm

    started = time.perf_counter()
    stopped_early = bool(history and history[-1].get("stop"))
    for epoch in range(start, cfg.epochs):
        if stopped_early:
            break
        torch.manual_seed(cfg.seed * 100_003 + epoch)
        rng = np.random.default_rng([cfg.seed, epoch])
        order = rng.permutation(len(train_dec))
        chunks = batches_of(order, cfg.batch_size)
        timing = {"data_s": 0.0, "step_s": 0.0, "wait_s": 0.0}

        def make(idx: np.ndarray) -> tuple[dict, dict]:
            t = time.perf_counter()
            b = slice_batch(fixed_train, idx) if fixed_train is not None else pre.collate(train_dec, idx, train=True, rng=rng)
            y = slice_batch(train_target, idx)
            timing["data_s"] += time.perf_counter() - t
            return to_tensors(b), to_tensors(y)

        net.train()
        t_epoch, seen, loss_sum = time.perf_counter(), 0, 0.0
        bar = tqdm(total=len(order), desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="row", disable=not show, leave=False)
        t_wait = time.perf_counter()
        # cached batches are a slice away: a helper thread would only add GIL hand-offs
        batches = (make(idx) for idx in chunks) if fixed_train is not None else prefetch(chunks, make)
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

        record: dict[str, Any] = {"epoch": epoch + 1, "train_loss": loss_sum / max(seen, 1),
                                  "lr": optimizer.param_groups[0]["lr"], **{k: round(v, 4) for k, v in timing.items()}}
        if valid_batch is not None:
            logits = predict_arrays(net, valid_batch, chunk=512)
            record["valid_loss"] = float(total_loss(spec, logits, to_tensors(valid_target), weights))
            if spec.fusion.alone_loss and len(net.names) > 1:
                # select on the objective that was trained: an input's own answer counts too
                alone = alone_losses(spec, net, valid_batch, valid_target, weights)
                record.update({f"valid_alone_{k}_loss": v for k, v in alone.items()})
                record["valid_loss"] += spec.fusion.alone_loss * float(np.mean(list(alone.values())))
            scores = metrics_from_logits(pre, logits, valid_target, full=False)
            for o, m in scores.items():
                for k, v in m.items():
                    if k != "n":
                        record[f"valid_{o}_{k}"] = v
            score = -record["valid_loss"] if metric == "loss" else scores[metric_output][metric]
            if metric != "loss" and not higher:
                score = -score
        else:
            score = -record["train_loss"]
        if scheduler is not None:
            scheduler.step(record.get("valid_loss", record["train_loss"])) if cfg.schedule == "plateau" else scheduler.step()
        record["seconds"] = round(time.perf_counter() - t_epoch, 3)
        improved = score > best_score + 1e-6
        if improved:
            best_score, stale = score, 0
            best_state = copy.deepcopy(net.state_dict())
        else:
            stale += 1
        record["best"] = improved
        record["stop"] = bool(cfg.early_stopping and stale >= cfg.early_stopping)
        history.append(record)
        shown = "  ".join(f"{k} {v:.4f}" for k, v in record.items()
                          if isinstance(v, float) and (k.endswith("loss") or k.endswith("accuracy") or k.endswith("r2")))
        log(f"epoch {epoch + 1:>3}/{cfg.epochs}  {shown}  {seen / max(record['seconds'], 1e-9):.0f} rows/s"
            f"{'  *best' if improved else ''}")
        if ckpt_dir:
            checkpoint.save(ckpt_dir, model=net, best=best_state, optimizer=optimizer, scheduler=scheduler,
                            info={"epoch": epoch, "history": history, "stale": stale, "best_score": best_score,
                                  "spec": spec.to_dict()})
        if callback:
            callback(epoch, record)
        if record["stop"]:
            log(f"early stopping: no improvement in {cfg.early_stopping} epochs")
            break
    train_seconds = time.perf_counter() - started

    # 6. best weights, final evaluation (test split if any, else validation)
    net.load_state_dict(best_state)
    net.eval()
    result_metrics: dict[str, Any] = {}
    test_batch = pre.collate(test_dec) if test_dec is not None else None  # collated once, used twice
    if cfg.calibrate and valid_batch is not None:
        from polyfuse.calibration import calibrate

        result_metrics["calibration"] = calibrate(net, spec, valid_batch, valid_target, test_batch,
                                                  pre.targets(test_dec) if test_dec is not None else None)
        for name, c in result_metrics["calibration"].items():
            log(f"calibration {name}: temperature {c['temperature']:.3f}, validation ECE "
                f"{c['valid_ece_before']:.4f} -> {c['valid_ece_after']:.4f}")
    if test_dec is not None:
        result_metrics["test"] = evaluate(net, pre, test_dec, batch=test_batch)
    if valid_dec is not None:
        result_metrics["valid"] = evaluate(net, pre, valid_dec, ablation=test_dec is None, batch=valid_batch)
    return TrainResult(pre, net, history, result_metrics, bad_rows, sizes, train_seconds, data_info)

"""`polyfuse tune spec.yaml --space space.yaml --trials N --out DIR`: hyperparameter search over spec fields.

A space names dotted spec fields and what they may take::

    train.lr: loguniform(1e-4, 1e-2)
    train.batch_size: [16, 32, 64]
    fusion.method: [concat, gated, attention]
    inputs.note.encoder: [ngram, cnn]

``uniform(a, b)``, ``loguniform(a, b)``, ``int(a, b)`` or a list of choices. The first trial is the spec's
own settings (a value outside a range at its nearest end), so the search does not end below what it started
from on validation; Optuna's TPE proposes the others. Its pruner, asynchronous successive halving (ASHA, as Ray
Tune's engine runs too), reads the validation score that early stopping watches after every epoch and
stops a trial at epochs 1, 4, 16 unless it is in the top quarter of the trials that got there: Optuna's
own benchmarks rank it and Hyperband above the median pruner, which on mvsa pruned 7 of 20 trials and
saved a tenth of the search's time. The study lives in ``DIR/study.db`` (SQLite), so a search that was
killed resumes where it stopped: trials that finished are never repeated. Each trial's model is a normal
artifact in ``DIR/trial-NNN`` (with ``tune_trial.json``), so `polyfuse leaderboard DIR` ranks them;
``DIR/best.yaml`` is the best spec, and ``--refit`` trains it again on the training and validation rows.
"""
from __future__ import annotations

import copy
import json
import math
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from polyfuse.errors import SpecError
from polyfuse.spec.schema import Spec
from polyfuse.training.tracking import SearchRun

# anchored, no nested quantifiers: linear time on whatever a space file holds
_RANGE = re.compile(r"^\s*(uniform|loguniform|int)\(\s*([-+0-9.eE]+)\s*,\s*([-+0-9.eE]+)\s*\)\s*$")


@dataclass(frozen=True)
class Dimension:
    kind: str  # uniform | loguniform | int | choice
    low: float = 0.0
    high: float = 0.0
    choices: tuple = ()


def parse_space(space: dict[str, Any]) -> dict[str, Dimension]:
    """The space file's entries as dimensions; a bad entry names its field."""
    dims = {}
    for field, value in space.items():
        if isinstance(value, list):
            if not value:
                raise SpecError(f"space: {field} has no choices")
            dims[field] = Dimension("choice", choices=tuple(value))
            continue
        m = _RANGE.match(str(value))
        if not m:
            raise SpecError(f"space: {field}: {value!r} is not uniform(a, b), loguniform(a, b), int(a, b) or a list")
        kind, low, high = m.group(1), float(m.group(2)), float(m.group(3))
        if not low < high or (kind == "loguniform" and low <= 0):
            raise SpecError(f"space: {field}: {kind} needs low < high{' and low > 0' if kind == 'loguniform' else ''}")
        dims[field] = Dimension(kind, low, high)
    return dims


def apply(spec: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """``spec`` with each dotted field set; a field whose parent is not in the spec is an error."""
    out = copy.deepcopy(spec)
    for field, value in params.items():
        *parents, leaf = field.split(".")
        node = out
        for p in parents:
            if not isinstance(node.get(p), dict):
                if p in ("train", "fusion") and p not in node:
                    node[p] = {}
                else:
                    raise SpecError(f"space: {field}: the spec has no {p!r} there (check the input's name)")
            node = node[p]
        node[leaf] = value
    return out


def suggest_space(spec: Spec) -> dict[str, Any]:
    """A sensible space for ``spec``: learning rate and weight decay around the usual, batch size, the fusion
    method and width, dropout, each text input's encoder, and whether linear models join the network
    (`train.ensemble`: the choice between the fast and medium presets; a mixed trial's validation score was
    chosen on those rows, so it reads a little high)."""
    lr = spec.train.lr
    space: dict[str, Any] = {
        "train.ensemble": ["off", "auto"],
        "train.lr": f"loguniform({lr / 10:.1e}, {min(lr * 10, 0.05):.1e})",
        "train.weight_decay": "loguniform(1e-6, 1e-2)",
        "train.batch_size": [16, 32, 64, 128],
        "fusion.method": ["concat", "gated", "attention"],
        "fusion.dim": [64, 128, 256],
        "fusion.dropout": "uniform(0.0, 0.5)",
    }
    for name, cfg in spec.inputs.items():
        if cfg.type == "text" and isinstance(cfg.encoder, str):
            space[f"inputs.{name}.encoder"] = ["ngram", "cnn"]
    return space


def suggest(trial: Any, field: str, dim: Dimension) -> Any:
    if dim.kind == "choice":
        return trial.suggest_categorical(field, list(dim.choices))
    if dim.kind == "int":
        return trial.suggest_int(field, int(dim.low), int(dim.high))
    return trial.suggest_float(field, dim.low, dim.high, log=dim.kind == "loguniform")


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def score_of(spec: Spec, record: dict) -> float | None:
    """The epoch's validation score as early stopping reads it (higher is better)."""
    from polyfuse.training.epochs import selection

    metric, output, higher = selection(spec)
    if metric == "loss":
        value = record.get("valid_loss")
        return None if value is None else -value
    value = record.get(f"valid_{output}_{metric}")
    return None if value is None else (value if higher else -value)


def _finished(study: Any) -> int:
    from optuna.trial import TrialState

    return sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in study.trials)


def _fail_interrupted(study: Any) -> None:
    """Trials left RUNNING by a killed search are marked failed (they never finished; the count skips them)."""
    from optuna.trial import TrialState

    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study._storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL)


def tune(spec_path: str | Path, space: dict[str, Any], trials: int, out: str | Path,
         time_limit: float | None = None, refit: bool = False, seed: int = 0) -> dict[str, Any]:
    """Run (or resume) the search; returns the summary written to ``out/tune.json``."""
    import optuna

    from polyfuse.errors import PolyfuseError
    from polyfuse.estimator import train
    from polyfuse.spec.schema import load_spec

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    base_spec, base_dir = load_spec(str(spec_path))
    raw = base_spec.to_dict()
    dims = parse_space(space)
    for field in dims:  # every field must land in a valid spec: checked before any training
        Spec.model_validate(apply(raw, {field: example_value(dims[field])}))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name="polyfuse", storage=f"sqlite:///{out / 'study.db'}", load_if_exists=True, direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=seed),
        pruner=optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=4))
    _fail_interrupted(study)
    if not study.trials:
        study.enqueue_trial(starting_point(raw, dims))
    # a resumed search seeds its sampler afresh: the same seed would propose the first run's trials again
    study.sampler = optuna.samplers.TPESampler(seed=seed + len(study.trials))
    remaining = max(0, trials - _finished(study))
    _log(f"tune: {remaining} of {trials} trials to run ({_finished(study)} done before) in {out}")

    def objective(trial: Any) -> float:
        params = {f: suggest(trial, f, d) for f, d in dims.items()}
        spec = Spec.model_validate(apply(raw, params))
        folder = out / f"trial-{trial.number:03d}"

        def report(epoch: int, record: dict) -> None:
            score = score_of(spec, record)
            if score is not None and math.isfinite(score):
                trial.report(score, epoch)
                if trial.should_prune():
                    shutil.rmtree(f"{folder}.checkpoint", ignore_errors=True)  # its model is never written
                    raise optuna.TrialPruned(f"epoch {epoch + 1}: {score:.4f} trails the median")

        model = train(spec, out=folder, callback=report, base=base_dir, show_progress=False)
        value = trial_value(spec, model.metrics)
        write_trial(folder, trial.number, params, "complete", value)
        _log(f"trial {trial.number}: {value:.4f} {params}")
        return value

    with SearchRun(base_spec, space, "optuna") as parent:  # trials tracked to MLflow nest under it
        if remaining:
            # a combination the spec cannot train (a bad value for this table) fails its trial, not the search
            study.optimize(objective, n_trials=remaining, timeout=time_limit, catch=(PolyfuseError,))
        result = _summarise(study, spec_path, base_dir, out, refit)
        parent.finish(result, out)
    return result


def _as_written(spec_path: str | Path, base_dir: Path) -> dict[str, Any]:
    """The user's spec as they wrote it, its data paths made absolute (best.yaml lives in another folder)."""
    spec = yaml.safe_load(Path(spec_path).read_text()) or {}
    data = spec.get("data") or {}
    for key in ("train", "valid", "test"):
        if isinstance(data.get(key), str) and not Path(data[key]).is_absolute():
            data[key] = str((base_dir / data[key]).resolve())
    return spec


def starting_point(raw: dict[str, Any], dims: dict[str, Dimension]) -> dict[str, Any]:
    """The spec's own value of each searched field, or the nearest a range allows (weight decay 0 starts at
    the space's 1e-6); a choice the space lacks is left to the sampler."""
    point = {}
    for field, dim in dims.items():
        node: Any = raw
        for part in field.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if dim.kind == "choice" and node in dim.choices:
            point[field] = node
        elif dim.kind != "choice" and isinstance(node, (int, float)) and not isinstance(node, bool):
            near = min(max(float(node), dim.low), dim.high)
            point[field] = int(round(near)) if dim.kind == "int" else near
    return point


def example_value(dim: Dimension) -> Any:
    """A value ``dim`` may take (its first choice or its low end), to validate the field before a search."""
    return dim.choices[0] if dim.kind == "choice" else (int(dim.low) if dim.kind == "int" else dim.low)


def trial_value(spec: Spec, metrics: dict) -> float:
    """The trained model's validation headline for the first output (higher is better)."""
    from polyfuse.evaluate.metrics import headline, higher_is_better

    name, cfg = next(iter(spec.outputs.items()))
    metric = headline(cfg)
    value = float(metrics.get("valid", {}).get("outputs", {}).get(name, {}).get(metric, float("nan")))
    return value if higher_is_better(metric) else -value


def write_trial(folder: Path, number: int | str, params: dict, state: str, value: float | None) -> None:
    """tune_trial.json beside the trial's artifact (not in its manifest: the leaderboard's note, not model input)."""
    (folder / "tune_trial.json").write_text(json.dumps({"number": number, "params": params, "state": state,
                                                         "value": value}, indent=1))


def _summarise(study: Any, spec_path: str | Path, base_dir: Path, out: Path, refit: bool) -> dict[str, Any]:
    from optuna.trial import TrialState

    done = [t for t in study.trials if t.state == TrialState.COMPLETE]
    if not done:
        raise SpecError(f"tune: no trial finished in {out} (see the log above)")
    best = study.best_trial
    counts = {"engine": "optuna", "trials": len(study.trials), "complete": len(done),
              "pruned": sum(t.state == TrialState.PRUNED for t in study.trials),
              "failed": sum(t.state == TrialState.FAIL for t in study.trials)}
    return summary(spec_path, base_dir, out, best.params, best.value, str(out / f"trial-{best.number:03d}"), counts,
                   refit)


def summary(spec_path: str | Path, base_dir: Path, out: Path, params: dict, value: float, model: str,
            counts: dict[str, Any], refit: bool = False) -> dict[str, Any]:
    """best.yaml (the user's spec with the winning settings), the optional refit, and tune.json."""
    from polyfuse.estimator import train

    best_spec = apply(_as_written(spec_path, base_dir), params)
    (out / "best.yaml").write_text(yaml.safe_dump(best_spec, sort_keys=False))
    result = {**counts, "best": {"value": value, "params": params, "model": model}}
    if refit:  # the best settings on the training and validation rows, for as many epochs as the trial kept
        spec = copy.deepcopy(best_spec)
        spec.setdefault("data", {}).setdefault("split", {})["valid"] = 0.0
        spec.setdefault("train", {})["epochs"] = max(1, _best_epoch(Path(model)))
        spec["train"]["early_stopping"] = None
        train(Spec.model_validate(spec), out=out / "refit", base=base_dir, show_progress=False)
        result["refit"] = str(out / "refit")
    (out / "tune.json").write_text(json.dumps(result, indent=1))
    return result


def _best_epoch(folder: Path) -> int:
    history = json.loads((folder / "history.json").read_text()) if (folder / "history.json").is_file() else []
    best = [i for i, r in enumerate(history) if r.get("best")]
    return (best[-1] + 1) if best else len(history)

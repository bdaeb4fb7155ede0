"""`polyfuse tune ... --engine ray [--address HOST:PORT]`: the same search on a Ray cluster with Ray Tune.

Optuna's TPE still proposes the settings (Ray Tune's OptunaSearch); ASHA stops trials early from the
validation score each epoch reports; trials run in parallel, one CPU each, on the cluster (or a local Ray).
The run lives in ``DIR/ray`` and resumes from there (finished trials are not run again); each finished
trial's model is ``DIR/trial-<id>`` with its ``tune_trial.json``, and ``best.yaml`` and ``tune.json`` are
written as with Optuna alone, so `polyfuse leaderboard DIR` reads both engines' searches alike.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from polyfuse.errors import SpecError
from polyfuse.experiments.tune import (
    Dimension,
    apply,
    example_value,
    parse_space,
    score_of,
    summary,
    trial_value,
    write_trial,
)
from polyfuse.scale import init_ray
from polyfuse.spec.schema import Spec, load_spec
from polyfuse.training.tracking import PARENT_ENV, SearchRun


def _ray_dim(dim: Dimension) -> Any:
    from ray import tune as rt

    if dim.kind == "choice":
        return rt.choice(list(dim.choices))
    if dim.kind == "int":
        return rt.randint(int(dim.low), int(dim.high) + 1)
    return (rt.loguniform if dim.kind == "loguniform" else rt.uniform)(dim.low, dim.high)


def tune_ray(spec_path: str | Path, space: dict[str, Any], trials: int, out: str | Path,
             time_limit: float | None = None, address: str | None = None, refit: bool = False,
             seed: int = 0) -> dict[str, Any]:
    """Run (or resume) the search with Ray Tune; returns the summary written to ``out/tune.json``."""
    init_ray(address)
    from ray import tune as rt
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    base_spec, base_dir = load_spec(str(spec_path))
    raw, dims = base_spec.to_dict(), parse_space(space)
    for field, dim in dims.items():  # every field must land in a valid spec before a trial starts
        Spec.model_validate(apply(raw, {field: example_value(dim)}))

    search = SearchRun(base_spec, space, "ray")
    search.start()  # its id goes to the trials; the `with` below closes it once they end
    parent_run = search.run_id

    def trainable(config: dict) -> None:
        from polyfuse.estimator import train

        if parent_run:  # this worker's trial is tracked under the search's MLflow run
            os.environ[PARENT_ENV] = parent_run
        params = {f: config[f] for f in dims}
        spec = Spec.model_validate(apply(raw, params))
        folder = out / f"trial-{rt.get_context().get_trial_id()}"

        def report(epoch: int, record: dict) -> None:
            score = score_of(spec, record)
            if score is not None and math.isfinite(score):
                rt.report({"score": score, "epoch": epoch})

        model = train(spec, out=folder, callback=report, base=base_dir, show_progress=False)
        value = trial_value(spec, model.metrics)
        write_trial(folder, rt.get_context().get_trial_id(), params, "complete", value)
        rt.report({"score": value, "final": True})

    place = out / "ray"
    runnable = rt.with_resources(trainable, {"cpu": 1})
    if place.exists() and rt.Tuner.can_restore(str(place)):
        tuner = rt.Tuner.restore(str(place), runnable, resume_errored=True)
    else:
        tuner = rt.Tuner(
            runnable, param_space={f: _ray_dim(d) for f, d in dims.items()},
            tune_config=rt.TuneConfig(metric="score", mode="max", num_samples=trials, time_budget_s=time_limit,
                                      search_alg=OptunaSearch(seed=seed),
                                      scheduler=ASHAScheduler(grace_period=1, max_t=max(2, base_spec.train.epochs + 1))),
            run_config=rt.RunConfig(name="ray", storage_path=str(out), verbose=0))
    with search:
        results = tuner.fit()
        finished = [r for r in results if r.error is None and r.metrics and r.metrics.get("final")]
        if not finished:
            raise SpecError(f"tune: no trial finished in {out} (Ray Tune's log: {place})")
        best = max(finished, key=lambda r: r.metrics["score"])
        stopped = sum(1 for r in results if r.error is None and r.metrics and not r.metrics.get("final"))
        result = summary(spec_path, base_dir, out, {f: best.config[f] for f in dims}, best.metrics["score"],
                         str(out / f"trial-{best.metrics['trial_id']}"),
                         {"engine": "ray", "trials": len(results), "complete": len(finished), "pruned": stopped,
                          "failed": sum(1 for r in results if r.error is not None)}, refit)
        search.finish(result, out)
    return result

"""Tracking a training run (`train.tracking`, `polyfuse train --track [URI] --tensorboard DIR`).

MLflow gets the spec as params (dotted names), the tables' sha256 as tags, every epoch's numbers as
metrics by step, the final validation/test/baseline figures, and the model card, metrics.json, spec and
plots as artifacts. TensorBoard gets the per-epoch scalars as event files. A tracking server that cannot
be reached is said once and the run goes on untracked: tracking never costs a training run.
"""
from __future__ import annotations

import hashlib
import os
import sys
import urllib.request
from pathlib import Path
from typing import Any

from polyfuse.spec.schema import Spec

# `--track` without a URI: a SQLite store in the working directory (artifacts beside it in ./mlruns), MLflow 3's
# own default; its plain file store refuses to open unless MLFLOW_ALLOW_FILE_STORE=true
DEFAULT_STORE = "mlflow.db"
PROBE_SECONDS = 3.0
MAX_PARAM = 500  # MLflow refuses longer param values


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """{"train": {"lr": 0.001}} -> {"train.lr": 0.001}; lists stay one value."""
    if not isinstance(tree, dict):
        return {prefix: tree}
    out: dict[str, Any] = {}
    for k, v in tree.items():
        out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def _numbers(record: dict) -> dict[str, float]:
    return {k: float(v) for k, v in record.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _file_digest(path: Path) -> str | None:
    if not path.is_file():
        return None
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def reachable(uri: str) -> str | None:
    """None when an http(s) tracking server answers its health check (or the store is local), else why not."""
    if not uri.startswith(("http://", "https://")):
        return None
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=PROBE_SECONDS) as r:  # noqa: S310 - the user's URI
            return None if r.status == 200 else f"HTTP {r.status}"
    except Exception as e:  # noqa: BLE001 - any failure to answer means the same: not tracked
        return str(getattr(e, "reason", e))[:200]


def use_experiment(mlflow: Any, uri: str, name: str) -> None:
    """Point MLflow at ``uri`` and experiment ``name``, created if new: for a SQLite store with its artifacts
    beside the database, not in whatever folder the run happens to start from."""
    # a server that dies mid-run must not hold training in MLflow's retries (minutes by default)
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    mlflow.set_tracking_uri(uri)
    if uri.startswith("sqlite:///") and mlflow.get_experiment_by_name(name) is None:
        db = Path(uri[len("sqlite:///"):])
        mlflow.create_experiment(name, artifact_location=(db.parent / "mlruns").resolve().as_uri())
    mlflow.set_experiment(name)


PARENT_ENV = "POLYFUSE_MLFLOW_PARENT_RUN"  # the run id a trial in another process nests under


class Tracker:
    """One run's tracking; every call is safe: the first failure is reported and tracking stops."""

    def __init__(self, spec: Spec, base: Path):
        cfg = spec.train.tracking
        self.mlflow_uri = cfg.mlflow if cfg else None
        self.experiment = cfg.experiment if cfg else "polyfuse"
        self.board_dir = cfg.tensorboard if cfg else None
        self.spec, self.base = spec, base
        self.mlflow: Any = None
        self.board: Any = None
        self.run_id: str | None = None

    def _off(self, what: str, error: Exception | str) -> None:
        _say(f"tracking: {what} failed ({str(error)[:200]}); training goes on without it")
        if what.startswith("MLflow"):
            self._end("FAILED")
            self.mlflow = None
        else:
            self.board = None

    def _end(self, status: str) -> None:
        try:
            if self.mlflow is not None and self.mlflow.active_run() is not None:
                self.mlflow.end_run(status=status)
        except Exception:  # noqa: BLE001 - closing a run on a store that is gone
            pass

    def stopped(self, error: BaseException) -> None:
        """The run ended by an exception (a bad table, a pruned trial, Ctrl-C): the MLflow run says so."""
        self._end("KILLED" if isinstance(error, KeyboardInterrupt) or type(error).__name__ == "TrialPruned" else "FAILED")
        if self.board is not None:
            self.board.close()

    def start(self) -> None:
        if self.mlflow_uri:
            why = reachable(self.mlflow_uri)
            if why is not None:
                _say(f"tracking: MLflow at {self.mlflow_uri} cannot be reached ({why}); training goes on untracked")
            else:
                self._start_mlflow()
        if self.board_dir:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.board = SummaryWriter(log_dir=self.board_dir)
            except Exception as e:  # noqa: BLE001 - a missing tensorboard package or an unwritable folder
                self._off("TensorBoard", e)

    def _start_mlflow(self) -> None:
        try:
            import mlflow

            use_experiment(mlflow, self.mlflow_uri, self.experiment)
            # a search's trial nests under the search's run: in its process (Optuna), or named by PARENT_ENV
            # in a worker of its own (Ray Tune)
            parent = os.environ.get(PARENT_ENV)
            run = mlflow.start_run(nested=mlflow.active_run() is not None,
                                   tags={"mlflow.parentRunId": parent} if parent and mlflow.active_run() is None else None)
            self.mlflow, self.run_id = mlflow, run.info.run_id
            params = {k: str(v)[:MAX_PARAM] for k, v in flatten(self.spec.to_dict()).items()}
            for start in range(0, len(params), 100):  # MLflow takes at most 100 params per call
                mlflow.log_params(dict(list(params.items())[start : start + 100]))
            tags = {"polyfuse.spec.sha256": hashlib.sha256(str(sorted(params.items())).encode()).hexdigest()}
            for split in ("train", "valid", "test"):
                table = getattr(self.spec.data, split)
                digest = _file_digest(self.base / table) if table else None
                if digest:
                    tags[f"polyfuse.data.{split}.sha256"] = digest
            mlflow.set_tags(tags)
        except Exception as e:  # noqa: BLE001 - an unreachable or refusing store
            self._off("MLflow start", e)

    def epoch(self, epoch: int, record: dict) -> None:
        numbers = _numbers(record)
        if self.mlflow is not None:
            try:
                self.mlflow.log_metrics(numbers, step=epoch)
            except Exception as e:  # noqa: BLE001
                self._off("MLflow logging", e)
        if self.board is not None:
            try:
                for k, v in numbers.items():
                    self.board.add_scalar(k.replace("_", "/", 1), v, epoch)
                self.board.flush()
            except Exception as e:  # noqa: BLE001
                self._off("TensorBoard logging", e)

    def finish(self, metrics: dict, out: Path | None) -> None:
        """Final figures and, from the saved artifact, its card, metrics, spec and plots; then close."""
        if self.mlflow is not None:
            try:
                final = {f"final.{k}": v for k, v in _numbers(flatten(
                    {s: metrics.get(s, {}).get("outputs", {}) for s in ("valid", "test")})).items()}
                final.update({f"final.{k}": v for k, v in _numbers(flatten(
                    {"baseline": metrics.get("baseline", {}).get("outputs", {})})).items()})
                final.update(_numbers({"train_seconds": metrics.get("train_seconds"),
                                       "total_seconds": metrics.get("total_seconds")}))
                self.mlflow.log_metrics(final)
                if out is not None:
                    for name in ("MODEL_CARD.md", "metrics.json", "spec.yaml", "history.json"):
                        if (out / name).is_file():
                            self.mlflow.log_artifact(str(out / name))
                    for plot in sorted(out.glob("*.png")):
                        self.mlflow.log_artifact(str(plot), artifact_path="plots")
                    self.mlflow.set_tag("polyfuse.model_dir", str(out.resolve()))
                self._end("FINISHED")
            except Exception as e:  # noqa: BLE001
                self._off("MLflow final logging", e)
        if self.board is not None:
            self.board.close()


def tracker_for(spec: Spec, base: Path) -> Tracker | None:
    """A started tracker when the spec asks for tracking, else None."""
    if spec.train.tracking is None or not (spec.train.tracking.mlflow or spec.train.tracking.tensorboard):
        return None
    tracker = Tracker(spec, base)
    tracker.start()
    return tracker


class SearchRun:
    """The MLflow run a search's trials nest under (`polyfuse tune` with tracking on): the space as params,
    the best trial's value and settings, best.yaml and tune.json. Like a Tracker, a store that fails is
    reported once and the search goes on."""

    def __init__(self, spec: Spec, space: dict[str, Any], engine: str):
        cfg = spec.train.tracking
        self.uri = cfg.mlflow if cfg else None
        self.experiment = cfg.experiment if cfg else "polyfuse"
        self.space, self.engine = space, engine
        self.mlflow: Any = None
        self.run_id: str | None = None  # a trial in another process passes it on as PARENT_ENV
        self.started = False

    def __enter__(self) -> "SearchRun":
        self.start()
        return self

    def start(self) -> None:
        """Open the run (once: a second call does nothing), so its id can go to trials before the `with`."""
        if not self.uri or self.started:
            return
        self.started = True
        why = reachable(self.uri)
        if why is not None:
            _say(f"tracking: MLflow at {self.uri} cannot be reached ({why}); the search goes on untracked")
            return
        try:
            import mlflow

            use_experiment(mlflow, self.uri, self.experiment)
            self.run_id = mlflow.start_run(run_name=f"tune ({self.engine})",
                                           tags={"polyfuse.tune.engine": self.engine}).info.run_id
            mlflow.log_params({f"space.{k}": str(v)[:MAX_PARAM] for k, v in list(self.space.items())[:100]})
            self.mlflow = mlflow
        except Exception as e:  # noqa: BLE001 - an unreachable or refusing store
            _say(f"tracking: MLflow search run failed ({str(e)[:200]}); the search goes on untracked")

    def finish(self, result: dict[str, Any], out: Path) -> None:
        if self.mlflow is None:
            return
        try:
            best = result["best"]
            self.mlflow.log_metrics({"best.value": float(best["value"]), **_numbers(
                {k: result.get(k) for k in ("trials", "complete", "pruned", "failed")})})
            self.mlflow.log_params({f"best.{k}": str(v)[:MAX_PARAM] for k, v in list(best["params"].items())[:100]})
            for name in ("best.yaml", "tune.json"):
                if (out / name).is_file():
                    self.mlflow.log_artifact(str(out / name))
        except Exception as e:  # noqa: BLE001
            _say(f"tracking: MLflow search run logging failed ({str(e)[:200]})")

    def __exit__(self, kind: Any, error: Any, tb: Any) -> None:
        if self.mlflow is not None:
            try:
                self.mlflow.end_run(status="FINISHED" if error is None else
                                    "KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED")
            except Exception:  # noqa: BLE001 - closing a run on a store that is gone
                pass

"""`polyfuse bench`: every runtime of an artifact side by side on one labelled table.

For torch eager, ONNX fp32 / int8-dynamic / int8-static and the torch.export program (each when
its file is present) it measures artifact size, load time, cold start in a fresh process, batch-1
latency of the model alone and end to end from raw records, batch-32 throughput and accuracy.

The machine is shared and noisy, so runtimes are interleaved (torch, onnx, ..., torch, onnx, ...)
and each figure is the median over ``repeats`` blocks. Results go to ``bench.json`` and
``bench.png`` inside the artifact, whose manifest is then re-hashed.
"""
from __future__ import annotations

import contextlib
import copy
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from polyfuse.deploy.bench_backends import WEIGHTS, Backend, Loaded, backends
from polyfuse.deploy.bench_report import format_table, ratios, save
from polyfuse.deploy.footprint import cached_footprint
from polyfuse.errors import ArtifactError, PolyfuseError
from polyfuse.runtime import PT2
from polyfuse.threads import usable_cpus

LATENCY_SAMPLES = 200  # batch-1 model calls per block: enough for a p99 that is not just the maximum
WARMUP = 5
THROUGHPUT_BATCH = 32
THROUGHPUT_SECONDS = 0.3  # minimum timed span per block for the batch-32 figure
COLD_START_TIMEOUT = 300


class BenchError(PolyfuseError):
    """The benchmark cannot run: no data table, no runtime to measure, or a runtime failed."""


# ---------------------------------------------------------------------------------- workload
@dataclass
class Workload:
    """The fixed inputs every runtime sees: the same rows, already collated where the model runs alone."""

    singles: list[dict[str, np.ndarray]]  # batch-1 arrays of the latency rows
    records: list[dict[str, Any]]  # the same rows as raw records (for end to end)
    folder: Path  # relative file paths in the records start here
    batches: list[dict[str, np.ndarray]]  # batch-32 arrays for throughput
    chunks: list[dict[str, np.ndarray]]  # every row, for accuracy
    targets: dict[str, np.ndarray]
    rows: int  # usable rows of the table
    spec: Any
    preprocessor: Any


def _plain(value: Any) -> Any:
    """A JSON-friendly cell (numpy scalars -> Python), so a child process receives the same record."""
    return value.item() if isinstance(value, np.generic) else value


def workload(model_dir: Path, data: str | Path, rows: int) -> Workload:
    """Decode the table once with the artifact's preprocessing; take the first ``rows`` rows for latency."""
    from polyfuse.data.io import read_table
    from polyfuse.preprocess.pipeline import Preprocessor, decode_table
    from polyfuse.spec.schema import load_spec

    if not Path(data).is_file():
        raise BenchError(f"data table {str(data)!r} not found; pass a labelled table with --data")
    spec, _ = load_spec(model_dir / "spec.yaml")
    pre = Preprocessor.from_json(spec, (model_dir / "preprocess.json").read_text())
    table = read_table(data)
    decoded = decode_table(spec, table, with_targets=True)
    if len(decoded) == 0:
        raise BenchError(f"{data}: no usable rows (all {len(table)} were bad: {decoded.bad[:1]})")
    n = len(decoded)
    latency_rows = list(range(min(rows, n)))
    position = {row: i for i, row in enumerate(table.rows)}
    columns = [spec.column(name) for name in spec.inputs]
    records = [{c: _plain(table.columns[c][position[decoded.rows[i]]]) for c in columns} for i in latency_rows]
    # A table smaller than one batch still gets full batches: its rows are repeated.
    pool = np.resize(np.arange(n), max(THROUGHPUT_BATCH, n - n % THROUGHPUT_BATCH))[: 4 * THROUGHPUT_BATCH]
    return Workload(
        singles=[pre.collate(decoded, [i]) for i in latency_rows],
        records=records,
        folder=table.folder,
        batches=[pre.collate(decoded, pool[s : s + THROUGHPUT_BATCH]) for s in range(0, len(pool), THROUGHPUT_BATCH)],
        chunks=[pre.collate(decoded, range(s, min(s + 256, n))) for s in range(0, n, 256)],
        targets=pre.targets(decoded),
        rows=n,
        spec=spec,
        preprocessor=pre,
    )


# ---------------------------------------------------------------------------------- measuring
def _ms(samples: list[float]) -> tuple[float, float]:
    arr = np.asarray(samples) * 1e3
    return float(np.percentile(arr, 50)), float(np.percentile(arr, 99))


def _latency(loaded: Loaded, work: Workload) -> dict[str, float]:
    """Batch-1 latency: the model alone cycling over the collated rows, then each raw record end to end."""
    singles, n = work.singles, len(work.singles)
    for i in range(WARMUP):
        loaded.run(singles[i % n])
        loaded.predict([work.records[i % n]], work.folder)
    model = []
    for i in range(LATENCY_SAMPLES):
        t0 = time.perf_counter()
        loaded.run(singles[i % n])
        model.append(time.perf_counter() - t0)
    e2e = []
    for record in work.records:
        t0 = time.perf_counter()
        loaded.predict([record], work.folder)
        e2e.append(time.perf_counter() - t0)
    p50, p99 = _ms(model)
    e50, e99 = _ms(e2e)
    return {"p50_ms": p50, "p99_ms": p99, "e2e_p50_ms": e50, "e2e_p99_ms": e99}


def _throughput(loaded: Loaded, work: Workload) -> float:
    loaded.run(work.batches[0])
    done, t0 = 0, time.perf_counter()
    while True:
        for batch in work.batches:
            loaded.run(batch)
            done += THROUGHPUT_BATCH
        elapsed = time.perf_counter() - t0
        if elapsed >= THROUGHPUT_SECONDS and done >= 3 * THROUGHPUT_BATCH:
            return done / elapsed


def _cold_start(backend: Backend, record: dict, record_folder: Path) -> dict[str, Any]:
    """Import + load + first prediction in a fresh interpreter; the child's own clock is the figure."""
    args = {**backend.child_args, "record": record, "record_folder": str(Path(record_folder).resolve())}
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[1])  # the child must import this very polyfuse
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "") if env.get("PYTHONPATH") else root
    env["OPENBLAS_NUM_THREADS"] = str(backend.child_args["threads"])  # as thread_limits does in-process
    t0 = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, "-c", backend.child, json.dumps(args)], capture_output=True,
                              text=True, env=env, timeout=COLD_START_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise BenchError(f"{backend.name}: cold start took over {COLD_START_TIMEOUT} s") from None
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-3:]
        raise BenchError(f"{backend.name}: cold-start process failed (exit {proc.returncode}): {' | '.join(tail)}")
    try:
        child = json.loads(proc.stdout.strip().splitlines()[-1])
    except (json.JSONDecodeError, IndexError) as e:
        raise BenchError(f"{backend.name}: the cold-start process printed no timing ({e}): "
                         f"{proc.stdout[-200:]!r}") from None
    return {"cold_start_s": child["import_s"] + child["load_s"] + child["predict_s"], "cold_start_wall_s": wall,
            "cold_import_s": child["import_s"], "cold_load_s": child["load_s"], "cold_predict_s": child["predict_s"],
            "torch_imported": child["torch_imported"]}


def _scores(loaded: Loaded, work: Workload) -> dict[str, Any]:
    """Headline metric per output over every row of the table, plus the mean classification accuracy."""
    from polyfuse.evaluate.metrics import compute, headline

    parts: dict[str, list] = {}
    for chunk in work.chunks:
        for name, p in loaded.run(chunk).items():
            parts.setdefault(name, []).append(p)
    probs = {k: np.concatenate(v) for k, v in parts.items()}
    spec, pre = work.spec, work.preprocessor
    scores = {}
    for name, cfg in spec.outputs.items():
        metric = headline(cfg)
        scores[name] = {"metric": metric,
                        "value": compute(cfg, pre.state[name], probs[name], work.targets[name], full=False)[metric]}
    accuracies = [s["value"] for n, s in scores.items() if spec.outputs[n].type in ("category", "binary")]
    return {"accuracy": float(np.mean(accuracies)) if accuracies else None, "scores": scores}


def _block(backend: Backend, work: Workload) -> tuple[dict[str, Any], Loaded]:
    """One timed pass over one runtime: load, latency, throughput, cold start."""
    gc.collect()
    t0 = time.perf_counter()
    loaded = backend.load()
    load_ms = 1e3 * (time.perf_counter() - t0)
    gc.disable()  # a collection landing inside one runtime's block would be charged to it
    try:
        figures = {"load_ms": load_ms, **_latency(loaded, work), "batch32_rows_per_s": _throughput(loaded, work)}
    finally:
        gc.enable()
    figures.update(_cold_start(backend, work.records[0], work.folder))
    return figures, loaded


# ---------------------------------------------------------------------------------- footprint
# ---------------------------------------------------------------------------------- entry point
@contextlib.contextmanager
def thread_limits(threads: int, torch_needed: bool) -> Iterator[None]:
    """torch and numpy's BLAS (used by audio preprocessing) on ``threads`` threads for the bench, then restored.

    ONNX Runtime takes its thread count per session. Without the BLAS limit a "1 thread" bench would
    still run preprocessing matrix products on every core.
    """
    with contextlib.ExitStack() as stack:
        if torch_needed:
            import torch

            previous = torch.get_num_threads()
            torch.set_num_threads(threads)
            stack.callback(torch.set_num_threads, previous)
        try:
            from threadpoolctl import threadpool_limits
        except ImportError:  # threadpoolctl comes with scikit-learn; without it BLAS keeps its default
            pass
        else:
            stack.enter_context(threadpool_limits(threads, user_api="blas"))
        yield


def _measure(found: list[Backend], work: Workload, repeats: int) -> dict[str, dict[str, Any]]:
    """Interleaved blocks (every runtime once per repeat), reduced to the median of each figure."""
    blocks: dict[str, list[dict]] = {b.name: [] for b in found}
    scores: dict[str, dict] = {}
    for r in range(repeats):
        for backend in found:
            print(f"bench: repeat {r + 1}/{repeats}: {backend.name}", file=sys.stderr, flush=True)
            figures, loaded = _block(backend, work)
            blocks[backend.name].append(figures)
            if backend.name not in scores:  # deterministic: once is enough
                scores[backend.name] = _scores(loaded, work)
            del loaded
    runtimes = {}
    for backend in found:
        runs = blocks[backend.name]
        numeric = [k for k, v in runs[0].items() if isinstance(v, float)]
        size = backend.file.stat().st_size
        runtimes[backend.name] = {"file": backend.file.name, "bytes": size, "size_mb": size / 1e6,
                                  **{k: statistics.median(run[k] for run in runs) for k in numeric},
                                  "torch_imported_at_cold_start": any(run["torch_imported"] for run in runs),
                                  **scores[backend.name]}
    return runtimes


def run_bench(model_dir: str | Path, data: str | Path, repeats: int = 3, threads: int | None = None,
              rows: int = 64) -> dict[str, Any]:
    """Benchmark every runtime of an artifact on a labelled table; print, save and return the figures.

    ``threads`` (default: all cores) applies to torch, ONNX Runtime and numpy's BLAS alike; ``rows``
    is how many rows of ``data`` are timed one by one for latency (accuracy uses every row).
    """
    folder = Path(model_dir)
    if not folder.is_dir():
        raise ArtifactError(f"model directory {str(folder)!r} not found")
    if repeats < 1 or rows < 1:
        raise BenchError(f"repeats and rows must be at least 1 (got repeats={repeats}, rows={rows})")
    threads = threads or usable_cpus()
    found = backends(folder, threads)
    if not found:
        raise BenchError(f"{folder}: no runtime to benchmark (no {WEIGHTS}, ONNX model or {PT2}); "
                         f"train or export into it first")
    work = workload(folder, data, rows)
    busy = list(os.getloadavg()) if hasattr(os, "getloadavg") else []
    with thread_limits(threads, any(b.name in ("torch", "torch-export") for b in found)):
        runtimes = _measure(found, work, repeats)
    result = {"data": str(data), "rows": work.rows, "latency_rows": len(work.singles), "repeats": repeats,
              "threads": threads, "cores": os.cpu_count(), "load_average": [round(x, 2) for x in busy],
              "runtimes": runtimes, "ratios": ratios(runtimes), **copy.deepcopy(cached_footprint())}
    metrics = folder / "metrics.json"
    if metrics.exists():  # a pruned model: what pruning removed, beside what the runtimes measure
        pruning = json.loads(metrics.read_text()).get("pruning")
        if pruning:
            result["pruning"] = {k: pruning[k] for k in ("ratio", "macs_per_row", "parameters", "latency_ms_batch1")}
    print(format_table(result))
    save(folder, result)
    return result

"""Batch prediction on Ray Data: tasks whose worker processes each hold the torch-free Runtime map over
units of rows and write Parquet shards with the columns of local `polyfuse predict` (``polyfuse.deploy.batch``).

A unit is a piece of the input that knows how to produce its rows as a ``Table`` with global row ids:
- a CSV/JSONL/Parquet file is read on the driver in chunks exactly as local predict reads it
  (``iter_table_chunks``: the same pandas parsing, so the same values and row ids), and the chunks
  travel to the workers through the object store;
- a folder of Parquet files is read by the workers themselves, one row group each (row ids follow the
  files in sorted order, from the footers' row counts), so the data never passes through the driver.
Each row goes through ``polyfuse.deploy.batch.predict_chunk``, the very code local predict runs: a bad row
gets its message in the ``error`` column and never stops the job.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from polyfuse.data.io import Table, iter_table_chunks
from polyfuse.deploy.batch import id_column_of, output_columns, predict_chunk
from polyfuse.errors import BadInputError
from polyfuse.scale import init_ray

PARQUET_SUFFIXES = (".parquet", ".pq")


@dataclass
class Chunks:
    """Consecutive chunks the driver already read (several per unit: each unit costs a task and a shard)."""

    parts: list[Table]

    def tables(self, chunk_rows: int) -> Iterator[Table]:
        yield from self.parts


@dataclass
class RowGroup:
    """One row group of one Parquet file, read where it is predicted; ``folder``: where media paths start."""

    path: str
    row_group: int
    first_row: int
    folder: str

    def tables(self, chunk_rows: int) -> Iterator[Table]:
        import pyarrow.parquet as pq

        frame = pq.ParquetFile(self.path).read_row_group(self.row_group).to_pandas()
        frame.index = range(self.first_row, self.first_row + len(frame))  # global row ids, as reset_index gives locally
        whole = Table.from_frame(frame, Path(self.folder), Path(self.path).name)
        for start in range(0, len(whole), chunk_rows):
            part = slice(start, start + chunk_rows)
            yield Table({c: v[part] for c, v in whole.columns.items()}, whole.rows[part], whole.folder, whole.name)


def plan_units(data: str | Path, chunk_rows: int, units_wanted: int = 8) -> list[Chunks | RowGroup]:
    """The units of a table file (about ``units_wanted`` of them) or a folder of Parquet files (one per
    row group; media paths relative to that folder)."""
    path = Path(data)
    if path.is_dir():
        import pyarrow.parquet as pq

        files = sorted(p for p in path.rglob("*") if p.suffix.lower() in PARQUET_SUFFIXES and p.is_file())
        if not files:
            raise BadInputError(f"{path}: no Parquet files (*.parquet, *.pq) in this folder")
        units: list[Chunks | RowGroup] = []
        offset = 0
        for file in files:
            meta = pq.ParquetFile(file).metadata
            for g in range(meta.num_row_groups):
                units.append(RowGroup(str(file.resolve()), g, offset, str(path.resolve())))
                offset += meta.row_group(g).num_rows
        return units
    if not path.is_file():
        raise BadInputError(f"table {str(data)!r} not found; give a CSV/JSONL/Parquet file or a folder of Parquet files")
    chunks = list(iter_table_chunks(path, chunk_rows))
    per_unit = max(1, -(-len(chunks) // max(1, units_wanted)))
    return [Chunks(chunks[i : i + per_unit]) for i in range(0, len(chunks), per_unit)]


class Predictor:
    """The torch-free Runtime of one model in one Ray worker process, turning units into output rows."""

    def __init__(self, model_dir: str, variant: str, id_column: str | None, chunk_rows: int,
                 key_env: str | None = None, verify_key: str | None = None):
        from polyfuse.runtime import Runtime
        from polyfuse.threads import single_threaded_blas

        single_threaded_blas()  # each task has one CPU; see polyfuse.threads
        self.rt = Runtime(model_dir, variant=variant, threads=1, key_env=key_env, verify_key=verify_key)
        self.id_column, self.chunk_rows = id_column, chunk_rows

    def __call__(self, unit: Chunks | RowGroup) -> Iterator[Any]:
        rt = self.rt
        for table in unit.tables(self.chunk_rows):
            idc = id_column_of(table, self.id_column)
            values, _ = predict_chunk(rt.spec, rt.preprocessor, rt.run_arrays, table, idc, workers=1)
            yield to_arrow(rt.spec, output_columns(rt.spec, idc), values)


# Ray reuses its worker processes across tasks, so each process loads a model once and keeps it here: the
# model stays resident as an actor would hold it, without the seconds an actor pool takes to start
_PREDICTORS: dict[tuple, Predictor] = {}


def hold(predictor: tuple) -> None:
    """Load ``Predictor(*predictor)`` into this worker process's cache (if it is not there already)."""
    if predictor not in _PREDICTORS:
        _PREDICTORS[predictor] = Predictor(*predictor)


def predict_units(batch: dict[str, np.ndarray], *, predictor: tuple, units: list, out: str) -> dict[str, np.ndarray]:
    """The Ray Data map function: each unit named by index in ``batch`` (its data comes from Ray's object
    store) is predicted by this process's cached ``Predictor(*predictor)`` and written to its own shard
    ``out/part-<unit>.parquet``, so results never travel back through the object store."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import ray

    hold(predictor)
    held = _PREDICTORS[predictor]
    rows = []
    for index in batch["unit"]:
        table = pa.concat_tables(list(held(ray.get(units[int(index)]))))
        shard = Path(out) / f"part-{int(index):05d}.parquet"
        pq.write_table(table, shard.with_suffix(".tmp"))
        os.replace(shard.with_suffix(".tmp"), shard)  # a retried task never leaves half a shard
        rows.append(len(table))
    return {"rows": np.asarray(rows, dtype=np.int64)}


def to_arrow(spec: Any, header: list[str], values: list[list]) -> Any:
    """Rows as an Arrow table with fixed types where the spec knows them, so that shards whose rows are
    all bad (or all good) still share one schema: labels string, probabilities float64, error string."""
    import pyarrow as pa

    columns = list(zip(*values)) if values else [[] for _ in header]
    types: dict[str, Any] = {"row": pa.int64(), "error": pa.string()}
    for name, cfg in spec.outputs.items():
        if cfg.type != "number":
            types[name] = pa.string()
        if cfg.type in ("category", "binary"):
            types[f"{name}_probability"] = pa.float64()
    arrays = []
    for name, column in zip(header, columns):
        t = types.get(name)
        if t == pa.string():
            column = [None if v is None else str(v) for v in column]
        arrays.append(pa.array(list(column), type=t))
    return pa.Table.from_arrays(arrays, names=header)


def predict_ray(model_dir: str | Path, data: str | Path, out: str | Path, *, address: str | None = None,
                variant: str = "fp32", id_column: str | None = None, chunk_rows: int = 512,
                workers: int | None = None, key_env: str | None = None,
                verify_key: str | None = None) -> dict[str, int]:
    """Predict every row of ``data`` on Ray into Parquet shards in the folder ``out``.

    ``out`` is written under a temporary name beside it and renamed at the end (local paths), so a
    failed job leaves no half-written folder. Returns {"rows", "bad", "shards"}.
    """
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise BadInputError(f"--out {out}: exists and is not an empty folder; remove it or choose another")
    model_dir = Path(model_dir).resolve()
    ray = init_ray(address)
    from ray import data as ray_data  # the submodule, loaded after init_ray has checked Ray is installed

    cpus = int(ray.cluster_resources().get("CPU", 1))
    predictor = (str(model_dir), variant, id_column, chunk_rows, key_env, verify_key)
    # the workers load the model while the driver reads the table: the first units then find it resident
    warming = [ray.remote(num_cpus=1)(hold).remote(predictor) for _ in range(workers or cpus)]
    # a few units per worker balance the load; more would only add tasks and tiny shards
    units = plan_units(data, chunk_rows, units_wanted=4 * (workers or cpus))
    # one task per CPU at a time (each runs its Runtime on one thread), never more than there are units
    n = max(1, min(workers or cpus, len(units)))
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    # units live in Ray's object store and travel by index (Arrow cannot hold them as values)
    refs = [ray.put(u) for u in units]
    ray.get(warming)  # a model that fails to load fails here, once, with its own message
    ds = ray_data.from_items([{"unit": i} for i in range(len(units))], override_num_blocks=len(units))
    tmp.mkdir(parents=True)
    ds = ds.map_batches(predict_units, batch_size=1, num_cpus=1, concurrency=n, batch_format="numpy",
                        fn_kwargs={"predictor": predictor, "units": refs, "out": str(tmp.resolve())})
    ds.materialize()
    counts = count_output(tmp)
    if out.exists():
        out.rmdir()  # empty (checked above): the finished folder takes its place
    os.replace(tmp, out)
    return counts


def count_output(folder: Path) -> dict[str, int]:
    """Rows, bad rows and shards written (reads only the error column's footers and values)."""
    import pyarrow.parquet as pq

    shards = sorted(folder.glob("*.parquet"))
    rows = bad = 0
    for shard in shards:
        errors = pq.read_table(shard, columns=["error"]).column("error")
        rows += len(errors)
        bad += len(errors) - errors.null_count
    return {"rows": rows, "bad": bad, "shards": len(shards)}

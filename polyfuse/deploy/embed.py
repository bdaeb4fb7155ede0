"""`polyfuse embed`: the fused vector and each input's vector for every row of a table, as Parquet.

Rows are streamed in chunks through the shared preprocessing and the trained encoders; each row
keeps its row id (and an id column when there is one). A missing input's vector is null, and a
bad row gets null vectors and its error, so the output has exactly one line per input row.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np


def _vectors(values: np.ndarray, keep: np.ndarray) -> Any:
    """A list column: one float32 vector per row (all of one length), null where ``keep`` is False.

    A plain list rather than a fixed-size one: pyarrow before 26 (which MLflow 3.17 requires) cannot read
    a null fixed-size list back from Parquet."""
    import pyarrow as pa

    flat = pa.array(np.ascontiguousarray(values, dtype=np.float32).ravel())
    offsets = pa.array(np.arange(0, values.size + 1, max(values.shape[1], 1), dtype=np.int32)[: len(values) + 1])
    return pa.ListArray.from_arrays(offsets, flat, mask=pa.array(~keep))


def _chunk_table(model: Any, table: Any, idc: str | None) -> Any:
    import pyarrow as pa

    from polyfuse.nn.model import embed_arrays
    from polyfuse.preprocess.pipeline import decode_table

    decoded = decode_table(model.spec, table, with_targets=False, on_bad_row="skip")
    n, dim = len(table), model.spec.fusion.dim
    where = {row: i for i, row in enumerate(table.rows)}
    ok = np.zeros(n, dtype=bool)
    fused = np.zeros((n, dim), dtype=np.float32)
    names = list(model.spec.inputs)
    per_input = {name: np.zeros((n, model.spec.inputs[name].dim), dtype=np.float32) for name in names}
    present = np.zeros((n, len(names)), dtype=bool)
    if len(decoded):
        f, vectors, pres = embed_arrays(model.net, model.preprocessor.collate(decoded))
        idx = np.asarray([where[r] for r in decoded.rows])
        ok[idx], fused[idx], present[idx] = True, f, pres
        for name, v in zip(names, vectors):
            per_input[name][idx] = v
    errors = [None] * n
    for bad in decoded.bad:
        errors[where[bad.row]] = f"column '{bad.column}': {bad.message}"
    columns = {"row": pa.array([str(r) for r in table.rows])}
    if idc:
        columns[idc] = pa.array([None if v is None else str(v) for v in table.columns[idc]])
    columns["fused"] = _vectors(fused, ok)
    for j, name in enumerate(names):
        columns[name] = _vectors(per_input[name], ok & present[:, j])
    columns["error"] = pa.array(errors, type=pa.string())
    return pa.table(columns)


def embed_table(model: Any, data: str | Path, out: str | Path, *, chunk_rows: int = 512,
                id_column: str | None = None, show_progress: bool = False) -> dict[str, int]:
    """Write ``row, [id], fused, <input>..., error`` for every row of ``data`` to Parquet ``out``."""
    import pyarrow.parquet as pq
    from tqdm import tqdm

    from polyfuse.data.io import count_rows, iter_table_chunks
    from polyfuse.errors import BadInputError

    out = Path(out)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    rows = bad = 0
    writer = None
    try:
        with tqdm(total=count_rows(data), unit="row", desc="embed", disable=not show_progress) as bar:
            for table in iter_table_chunks(data, chunk_rows):
                idc = id_column or ("id" if "id" in table.columns else None)
                if idc and idc not in table.columns:
                    raise BadInputError(f"--id-column {idc!r} is not a column of {table.name}")
                part = _chunk_table(model, table, idc)
                writer = writer or pq.ParquetWriter(str(tmp), part.schema)
                writer.write_table(part)
                rows += len(table)
                bad += len(table) - part.column("error").null_count
                bar.update(len(table))
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        if writer is not None:
            writer.close()
    if writer is None:
        raise BadInputError(f"{data}: the table has no rows to embed")
    os.replace(tmp, out)
    return {"rows": rows, "bad": bad}

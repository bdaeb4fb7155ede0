"""Batch prediction over a table, streamed in chunks: one bad row is reported in its own output
row (``error`` column) and never stops the job; row ids are kept."""
from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np

from polyfuse.data.io import Table, count_rows, iter_table_chunks
from polyfuse.errors import BadInputError

Run = Callable[[dict], dict[str, np.ndarray]]


def id_column_of(table: Table, id_column: str | None) -> str | None:
    """The column copied into the output: ``id_column`` if given (it must exist), else 'id' if present."""
    idc = id_column or ("id" if "id" in table.columns else None)
    if idc and idc not in table.columns:
        raise BadInputError(f"--id-column {idc!r} is not a column of {table.name}")
    return idc


def output_columns(spec: Any, idc: str | None) -> list[str]:
    """``row, [id], <output>..., <output>_probability..., error``."""
    header = ["row"] + ([idc] if idc else []) + list(spec.outputs)
    header += [f"{o}_probability" for o, c in spec.outputs.items() if c.type in ("category", "binary")]
    return header + ["error"]


def predict_chunk(spec: Any, pre: Any, run: Run, table: Table, idc: str | None,
                  workers: int | None = None) -> tuple[list[list], int]:
    """One output row per input row (in ``output_columns`` order; probabilities as floats, None where
    empty) and the number of bad rows. Shared by the local CSV job and the Ray Data one."""
    from polyfuse.preprocess.pipeline import decode_table
    from polyfuse.preprocess.targets import decode_outputs

    decoded = decode_table(spec, table, with_targets=False, on_bad_row="skip", workers=workers)
    results: dict[Any, list] = {}
    if len(decoded):
        probs = run(pre.collate(decoded))
        labels = decode_outputs(spec, pre.state, probs)
        for i, row in enumerate(decoded.rows):
            values = [labels[o][i] for o in spec.outputs]
            values += [float(np.max(probs[o][i])) for o, c in spec.outputs.items() if c.type in ("category", "binary")]
            results[row] = values + [None]
    width = len(spec.outputs) + sum(c.type in ("category", "binary") for c in spec.outputs.values())
    for b in decoded.bad:
        results[b.row] = [None] * width + [f"column '{b.column}': {b.message}"]
    out = []
    for i, row in enumerate(table.rows):
        ident = [table.columns[idc][i]] if idc else []
        out.append([row] + ident + results[row])
    return out, len(decoded.bad)


def predict_table(spec: Any, pre: Any, run: Run, data: str | Path, out: str | Path, *, chunk_rows: int = 512,
                  id_column: str | None = None, show_progress: bool = True) -> dict[str, int]:
    """Write ``row, [id], <output>..., <output>_probability..., error`` for every input row.

    ``run`` maps a collated batch to probabilities per output: torch (``Model.run_arrays``) or
    ONNX Runtime (``Runtime.run_arrays``) — the rest of the job is the same code.
    """
    from tqdm import tqdm

    out = Path(out)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    rows = bad = 0
    header_written = False
    probability_at: range = range(0)
    with open(tmp, "w", newline="") as f, tqdm(total=count_rows(data), unit="row", desc="predict",
                                                disable=not show_progress) as bar:
        writer = csv.writer(f)
        for table in iter_table_chunks(data, chunk_rows):
            idc = id_column_of(table, id_column)
            if not header_written:
                header = output_columns(spec, idc)
                writer.writerow(header)
                first = 1 + bool(idc) + len(spec.outputs)  # the probabilities follow the labels
                probability_at = range(first, len(header) - 1)
                header_written = True
            values, n_bad = predict_chunk(spec, pre, run, table, idc)
            for value in values:
                for i in probability_at:
                    value[i] = "" if value[i] is None else f"{value[i]:.6f}"
                writer.writerow(value)
            bad += n_bad
            rows += len(table)
            bar.update(len(table))
    os.replace(tmp, out)
    return {"rows": rows, "bad": bad}

"""Batch prediction over a table, streamed in chunks: one bad row is reported in its own output
row (``error`` column) and never stops the job; row ids are kept."""
from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np

from polyfuse.errors import BadInputError
from polyfuse.io import count_rows, iter_table_chunks


def predict_table(spec: Any, pre: Any, run: Callable[[dict], dict[str, np.ndarray]], data: str | Path,
                  out: str | Path, *, chunk_rows: int = 512, id_column: str | None = None,
                  show_progress: bool = True) -> dict[str, int]:
    """Write ``row, [id], <output>..., <output>_probability..., error`` for every input row.

    ``run`` maps a collated batch to probabilities per output: torch (``Model.run_arrays``) or
    ONNX Runtime (``Runtime.run_arrays``) — the rest of the job is the same code.
    """
    from tqdm import tqdm

    from polyfuse.preprocess.pipeline import decode_table
    from polyfuse.preprocess.targets import decode_outputs

    out = Path(out)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    rows = bad = 0
    header_written = False
    with open(tmp, "w", newline="") as f, tqdm(total=count_rows(data), unit="row", desc="predict",
                                                disable=not show_progress) as bar:
        writer = csv.writer(f)
        for table in iter_table_chunks(data, chunk_rows):
            idc = id_column or ("id" if "id" in table.columns else None)
            if idc and idc not in table.columns:
                raise BadInputError(f"--id-column {idc!r} is not a column of {table.name}")
            if not header_written:
                header = ["row"] + ([idc] if idc else []) + list(spec.outputs)
                header += [f"{o}_probability" for o, c in spec.outputs.items() if c.type in ("category", "binary")]
                writer.writerow(header + ["error"])
                header_written = True
            decoded = decode_table(spec, table, with_targets=False, on_bad_row="skip")
            results: dict[Any, list] = {}
            if len(decoded):
                probs = run(pre.collate(decoded))
                labels = decode_outputs(spec, pre.state, probs)
                for i, row in enumerate(decoded.rows):
                    values = [labels[o][i] for o in spec.outputs]
                    values += [f"{float(np.max(probs[o][i])):.6f}" for o, c in spec.outputs.items()
                               if c.type in ("category", "binary")]
                    results[row] = values + [""]
            width = len(spec.outputs) + sum(c.type in ("category", "binary") for c in spec.outputs.values())
            for b in decoded.bad:
                results[b.row] = [""] * width + [f"column '{b.column}': {b.message}"]
            bad += len(decoded.bad)
            for i, row in enumerate(table.rows):
                ident = [table.columns[idc][i]] if idc else []
                writer.writerow([row] + ident + results[row])
            rows += len(table)
            bar.update(len(table))
    os.replace(tmp, out)
    return {"rows": rows, "bad": bad}

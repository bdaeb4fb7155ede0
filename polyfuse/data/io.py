"""Reading tables (CSV, Parquet, JSONL, DataFrame, records) and the raw files their cells name.

File paths inside a table are relative to that table's folder. A missing cell (empty, NaN,
None) is a *missing value* — the model gets a presence mask — whereas a cell that names a
file that does not exist is a *bad value*, reported with its row and column.
"""
from __future__ import annotations

import base64
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from polyfuse.errors import BadInputError
from polyfuse.extras import require

TABLE_SUFFIXES = {".csv", ".tsv", ".parquet", ".pq", ".jsonl", ".ndjson", ".json"}


@dataclass
class Table:
    """Rows as columns of Python values, their row ids, and the folder relative paths start from.

    Built from records without pandas (the torch-free runtime's path) or from a DataFrame.
    """

    columns: dict[str, list]
    rows: list  # row ids: the table's index (0-based data row numbers for files)
    folder: Path
    name: str = "<records>"

    def __len__(self) -> int:
        return len(self.rows)

    def slice(self, start: int, stop: int) -> "Table":
        """Rows [start, stop) as a table of their own (same folder, same name)."""
        return Table({k: v[start:stop] for k, v in self.columns.items()}, self.rows[start:stop], self.folder, self.name)

    @classmethod
    def from_frame(cls, frame: Any, folder: Path, name: str) -> "Table":
        return cls({str(c): frame[c].tolist() for c in frame.columns}, list(frame.index), folder, name)

    @classmethod
    def from_records(cls, records: Sequence[dict], folder: Path) -> "Table":
        names: dict[str, None] = {}
        for i, record in enumerate(records):
            if not isinstance(record, dict):
                raise BadInputError(f"record {i} is a {type(record).__name__}, expected a mapping of input name to value")
            names.update(dict.fromkeys(record))
        columns = {n: [r.get(n) for r in records] for n in names}
        return cls(columns, list(range(len(records))), folder, "<records>")


def read_table(source: Any, base: Path | None = None) -> Table:
    """Read a table from a path, a DataFrame, or a list of record dicts."""
    base = base or Path.cwd()
    if isinstance(source, Table):
        return source
    if isinstance(source, dict):
        source = [source]
    if isinstance(source, (list, tuple)):
        return Table.from_records(list(source), base)
    if type(source).__name__ == "DataFrame":
        return Table.from_frame(source, base, "<DataFrame>")
    path = Path(source)
    if not path.is_absolute():
        path = base / path
    if not path.is_file():
        raise BadInputError(f"table {str(source)!r} not found (looked for {path}); check the path")
    suffix = path.suffix.lower()
    require("tables", f"reading the table file {path.name!r}",
            modules=("pandas", "pyarrow") if suffix in (".parquet", ".pq") else ("pandas",))
    import pandas as pd

    try:
        if suffix in (".csv", ".tsv"):
            sep = "\t" if suffix == ".tsv" else ","
            try:
                frame = pd.read_csv(path, sep=sep, keep_default_na=True)
            except UnicodeDecodeError:
                encoding, how = detect_encoding(path.read_bytes())
                warnings.warn(f"table {path.name!r} is not UTF-8: read it as {encoding} ({how})", UnicodeWarning,
                              stacklevel=2)
                frame = pd.read_csv(path, sep=sep, keep_default_na=True, encoding=encoding)
        elif suffix in (".parquet", ".pq"):
            frame = pd.read_parquet(path)
        elif suffix in (".jsonl", ".ndjson"):
            frame = pd.read_json(path, lines=True)
        elif suffix == ".json":
            frame = pd.read_json(path)
        else:
            raise BadInputError(
                f"table {path.name!r}: unsupported format {suffix!r}; use one of {sorted(TABLE_SUFFIXES)}"
            )
    except BadInputError:
        raise
    except (ValueError, OSError, pd.errors.ParserError) as e:
        raise BadInputError(f"table {str(path)!r} could not be read: {e}") from None
    return Table.from_frame(frame.reset_index(drop=True), path.parent, path.name)


# Legacy encodings to try when the detector is absent or finds nothing, most distinctive first:
# cp1252 decodes almost any byte string, so it goes last; gb18030 is a superset of GBK/GB2312,
# cp932 of Shift-JIS. UTF-16 is only tried with a byte-order mark.
FALLBACK_ENCODINGS = ("gb18030", "big5", "cp932", "euc_kr", "cp1252")
_SUPERSETS = {"gb2312": "gb18030", "gbk": "gb18030", "shift_jis": "cp932", "big5": "big5hkscs"}


def detect_encoding(data: bytes) -> tuple[str, str]:
    """(encoding, how it was found) for bytes that are not UTF-8; the encoding decodes every byte."""
    candidates: list[tuple[str, str]] = []
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        candidates.append(("utf-16", "byte-order mark"))
    try:
        from charset_normalizer import from_bytes
    except ImportError:
        pass
    else:
        matches = from_bytes(data)
        best = matches.best()
        if best is not None:
            # Single-byte Latin code pages often tie on a sample; then prefer the most widespread one.
            tied = {best.encoding, *best.could_be_from_charset,
                    *(m.encoding for m in matches if (m.chaos, m.coherence) == (best.chaos, best.coherence))}
            found = "cp1252" if "cp1252" in tied else best.encoding.lower().replace("-", "_")
            candidates.append((_SUPERSETS.get(found, found), "detected by charset_normalizer"))
    tried = "the first of " + ", ".join(FALLBACK_ENCODINGS) + " that decodes every byte"
    candidates += [(enc, tried) for enc in FALLBACK_ENCODINGS]
    for encoding, how in candidates:
        try:
            data.decode(encoding)
        except (UnicodeDecodeError, LookupError):
            continue
        return encoding, how
    return "latin-1", "nothing else decoded every byte; latin-1 maps each byte to one character"


def iter_table_chunks(path: str | Path, chunk_rows: int = 1024) -> Iterator[Table]:
    """Stream a large CSV/JSONL in chunks (Parquet is read whole); row index is kept global."""
    path = Path(path)
    require("tables", f"reading the table file {path.name!r}", modules=("pandas",))
    import pandas as pd

    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        reader = pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",", chunksize=chunk_rows)
    elif suffix in (".jsonl", ".ndjson"):
        reader = pd.read_json(path, lines=True, chunksize=chunk_rows)
    else:
        table = read_table(path)
        for start in range(0, len(table), chunk_rows):
            part = slice(start, start + chunk_rows)
            yield Table({c: v[part] for c, v in table.columns.items()}, table.rows[part], table.folder, table.name)
        return
    for chunk in reader:
        yield Table.from_frame(chunk, path.parent, path.name)


def count_rows(path: str | Path) -> int | None:
    """Number of data rows of a CSV/JSONL without parsing it (for progress bars)."""
    path = Path(path)
    if path.suffix.lower() not in (".csv", ".tsv", ".jsonl", ".ndjson"):
        return None
    with open(path, "rb") as f:
        n = sum(1 for _ in f)
    return n - 1 if path.suffix.lower() in (".csv", ".tsv") else n


def require_columns(table: Table, columns: Iterable[str], what: str = "the spec") -> None:
    """Raise a clear error naming every column the table lacks."""
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise BadInputError(
            f"{'the records have' if table.name == '<records>' else f'table {table.name!r} has'} no column {missing[0]!r}"
            + (f" (nor {missing[1:]})" if len(missing) > 1 else "")
            + f", which {what} needs; it has {list(table.columns)}. "
            "Rename the column or set `column:` for that input in the spec."
        )


def is_missing(value: Any) -> bool:
    """True for the cells that mean 'no value here': None, NaN, empty or blank strings."""
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    if isinstance(value, str) and not value.strip():
        return True
    if isinstance(value, (bytes, bytearray)) and len(value) == 0:
        return True
    return False


def resolve_media(value: Any, folder: Path) -> bytes | Path | np.ndarray:
    """Turn a cell of an image/audio column into bytes, an existing file path, or an array.

    Accepts raw bytes, ``data:...;base64,`` URIs, arrays, and paths relative to ``folder``.
    Raises :class:`BadInputError` (without row/column; the caller adds them) for a missing file.
    """
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, np.ndarray):
        return value
    if isinstance(value, (list, tuple)):
        return np.asarray(value, dtype=np.float32)
    if isinstance(value, dict) and "bytes" in value:  # parquet binary struct written by some tools
        return bytes(value["bytes"])
    if isinstance(value, (str, Path)):
        text = str(value).strip()
        if text.startswith("data:") and ";base64," in text:
            return base64.b64decode(text.split(";base64,", 1)[1])
        path = Path(text).expanduser()
        if not path.is_absolute():
            path = folder / path
        if not path.is_file():
            raise BadInputError(f"file {text!r} not found (looked for {path}); fix the path or leave the cell empty")
        return path
    raise BadInputError(f"expected a file path or bytes, got {type(value).__name__}")

"""`polyfuse init`'s target: which column is predicted, what kind of output it is (number, binary,
category, multilabel; class balance in its comment), and a test table found beside the training one."""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from polyfuse.autospec.profile import MAX_VALUES, sample
from polyfuse.data.io import TABLE_SUFFIXES, is_missing
from polyfuse.errors import SpecError

TARGET_NAMES = ("label", "target", "y", "class", "outcome")


def level(value: Any) -> str:
    """A class or category level as the preprocessing sees it (3.0 and '3' are one level)."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).strip()


def pick_target(columns: list[str], requested: str | None) -> tuple[str, str]:
    """The column to predict and how it was chosen (for the comment)."""
    if requested is not None:
        if requested not in columns:
            raise SpecError(f"--target {requested!r}: the table has no such column; it has {columns}")
        return requested, "chosen with --target"
    named = next((c for c in columns if c.lower() in TARGET_NAMES), None)
    if named:
        return named, f"the column named {named!r} (pass --target COLUMN to choose another)"
    return columns[-1], "the last column (no column is named " + "/".join(TARGET_NAMES) + "; pass --target COLUMN)"


METRICS = ("accuracy", "f1_macro")  # what `polyfuse init --metric` may ask the model to be good at


def target_entry(name: str, values: list, how: str, requested: bool,
                 metric: str = "accuracy") -> tuple[dict, dict[str, str], str]:
    """The output entry: number, binary, category or multilabel; class balance in the comment."""
    present = [v for v in values if not is_missing(v)]
    if not present:
        raise SpecError(f"target column {name!r} is empty: nothing to learn; pass --target COLUMN")
    unlabelled = len(values) - len(present)
    gap = f"; {unlabelled} rows have no label" if unlabelled else ""
    numeric = all(isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) for v in present)
    if numeric:
        arr = np.asarray(present, dtype=np.float64)
        if not (np.all(arr == np.round(arr)) and len(set(present)) <= 20):
            return ({"type": "number"}, {"type": f"{how}: numbers, min {arr.min():.4g}, median {np.median(arr):.4g}, "
                                                 f"max {arr.max():.4g}: regression{gap}"}, "regression target")
    levels = [level(v) for v in present]
    with_sep = sum("|" in v for v in sample(levels, MAX_VALUES))
    if not numeric and with_sep >= 0.2 * min(len(levels), MAX_VALUES):
        parts = Counter(p.strip() for v in levels for p in v.split("|") if p.strip())
        return ({"type": "multilabel", "separator": "|"},
                {"type": f"{how}: {with_sep} of the sampled cells list several labels separated by '|' "
                         f"({len(parts)} labels){gap}"}, f"{len(parts)} labels")
    counts = Counter(levels)
    if len(counts) == 1:
        raise SpecError(f"target column {name!r} has one class ({levels[0][:40]!r}) in all {len(present)} labelled "
                        "rows: nothing to learn; pass --target COLUMN to choose another column")
    if not requested and not numeric and len(counts) > max(50, len(present) // 2):
        raise SpecError(f"target column {name!r} ({how}) has {len(counts)} distinct values in {len(present)} rows: "
                        "it does not look like a label; pass --target COLUMN")
    entry: dict[str, Any] = {"type": "binary" if len(counts) == 2 else "category"}
    (top, most), (_, least) = counts.most_common(1)[0], counts.most_common()[-1]
    share = most / len(present)
    shown = ", ".join(f"{c[:20]!r} {n}" for c, n in counts.most_common(4)) + (", ..." if len(counts) > 4 else "")
    why = {"type": f"{how}: {len(counts)} classes ({shown}){gap}"}
    # Imbalanced: the largest class has >= 3x the rows of the smallest, or with 3+ classes one class
    # holds half the rows. Balanced weights make every class count, which is what macro-F1 asks; they
    # also move the decision threshold away from the majority, which costs accuracy (an 82/18 binary
    # review table fell below its one-column baseline): only a macro metric gets them.
    if most >= 3 * least or (len(counts) >= 3 and share >= 0.5):
        balance = f"imbalanced: largest/smallest class {most / least:.1f}x, {top[:20]!r} holds {100 * share:.0f}%"
        if metric == "f1_macro":
            entry["class_weights"] = "balanced"
            why["class_weights"] = f"{balance}; --metric f1_macro: every class counts alike"
        else:
            why["type"] += (f"; {balance}: no class weights, so accuracy is what training serves (macro-F1 is "
                            "reported beside it); pass --metric f1_macro to weight the classes")
    single = [c for c, n in counts.items() if n == 1]
    if single:
        why["type"] += (f"; WARNING: {len(single)} classes have a single row (e.g. {single[0][:20]!r}): a "
                        "stratified split cannot put them in both train and validation; gather more or merge them")
    return entry, why, f"{len(counts)} classes, largest {100 * share:.0f}%"


SPLIT_NAMES = {"valid": ("valid", "val", "validation", "dev"), "test": ("test",)}


def sibling_table(table_path: str | Path, split: str) -> str | None:
    """'valid.csv' or 'test.csv' beside 'train.csv' (or x_val.* beside x_train.*; ``SPLIT_NAMES``), as a path
    like the one given."""
    path = Path(table_path)
    if "train" not in path.stem.lower():
        return None
    i = path.stem.lower().rindex("train")
    for name in SPLIT_NAMES[split]:
        stem = path.stem[:i] + (name.upper() if path.stem[i:i + 5].isupper() else name) + path.stem[i + 5:]
        for suffix in [path.suffix] + sorted(TABLE_SUFFIXES - {path.suffix}):
            if path.with_name(stem + suffix).is_file():
                return str(path.with_name(stem + suffix))
    return None

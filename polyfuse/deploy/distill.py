"""Distillation (Hinton et al. 2015): a small student learns a large teacher's softened outputs, so the
accuracy of a pretrained ensemble can run where only a small network fits.

Stages: the teacher's training table (plus unlabelled rows, labelled by the teacher) -> the teacher's
probabilities on every row, softened by ``temperature`` and mixed with the labels (``alpha`` the
teacher's share) -> the student's spec (`init --preset fast` on the same table, or a spec file) ->
the student trained on those probability targets (:mod:`polyfuse.training.soft_targets`), scored on the
teacher's test table, with the teacher and both scores in its card and metrics.json.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from polyfuse.data.io import is_missing, read_table
from polyfuse.errors import BadInputError, SpecError
from polyfuse.estimator import Model, load, train
from polyfuse.preprocess.pipeline import decode_table
from polyfuse.preprocess.targets import decode as decode_target
from polyfuse.training import feature_cache, shards
from polyfuse.training.soft_targets import SoftTargets
from polyfuse.training.trainset import log

MEDIA = ("image", "audio", "video", "timeseries")
CHUNK = 512  # rows the teacher scores at once


def teacher_tables(teacher: Model) -> tuple[Path, Path | None]:
    """The teacher's training table and its test table (absolute), from its spec and data.json."""
    base = Path(teacher.data_info.get("base") or ".")
    if not teacher.spec.data.train:
        raise SpecError("the teacher was trained on a DataFrame, so its training table is unknown: pass the student "
                        "a table (distill(..., table=...))")
    test = teacher.spec.data.test
    return base / teacher.spec.data.train, (base / test) if test else None


def _frame(path: Path | Any) -> tuple[Any, Path]:
    import pandas as pd

    if isinstance(path, pd.DataFrame):
        return path.reset_index(drop=True), Path.cwd()
    table = read_table(path)
    return pd.DataFrame(table.columns), Path(table.folder)


def _absolute_media(frame: Any, folder: Path, columns: list[str]) -> Any:
    """Relative media paths of ``frame`` made absolute (its rows join a table in another folder)."""
    frame = frame.copy()
    for col in columns:
        if col in frame:
            frame[col] = [str(folder / v) if isinstance(v, str) and v and not Path(v).is_absolute()
                          and (folder / v).exists() else v for v in frame[col]]
    return frame


def teacher_probabilities(teacher: Model, frame: Any, folder: Path, output: str,
                          cache: Path | None = None) -> tuple[list[str], np.ndarray]:
    """(classes, [rows, classes]) of the teacher on every row; NaN where the teacher cannot read a row.

    With ``cache`` (the embedding cache the teacher's training filled), its frozen backbones' outputs are
    read from there, so only rows it never saw run a backbone: scoring mvsa's 3,200 training rows through
    e5 and EfficientNet again took ~5 minutes, longer than training the student."""
    classes = teacher.preprocessor.classes(output)
    probs = np.full((len(frame), len(classes)), np.nan)

    def score(part: Any) -> np.ndarray:
        table = read_table(part, folder)
        decoded = decode_table(teacher.spec, table, with_targets=False, on_bad_row="error")
        if cache is not None:
            feature_cache.precompute(teacher.spec, teacher.preprocessor, teacher.net, [decoded], cache, False)
        return teacher.run_arrays(teacher.preprocessor.collate(decoded))[output]

    for start in range(0, len(frame), CHUNK):
        part = frame.iloc[start : start + CHUNK]
        try:
            probs[start : start + len(part)] = score(part)
        except BadInputError:  # one bad row: score the chunk row by row
            for i in range(len(part)):
                try:
                    probs[start + i] = score(part.iloc[i : i + 1])[0]
                except BadInputError:
                    pass
    return classes, probs


def soften(probs: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(log p / T): the teacher's probabilities with their logits divided by T."""
    logits = np.log(np.clip(probs, 1e-12, None)) / temperature
    e = np.exp(logits - logits.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def mixed_targets(labels: list, classes: list[str], soft: np.ndarray, alpha: float) -> np.ndarray:
    """(1 - alpha) x one-hot labels + alpha x the softened teacher; rows the teacher could not read keep
    their label, rows without a label take the teacher's answer alone."""
    onehot = np.zeros_like(soft)
    index = {c: i for i, c in enumerate(classes)}
    known = np.array([str(v) in index for v in labels])
    for i, v in enumerate(labels):
        if known[i]:
            onehot[i, index[str(v)]] = 1.0
    seen = ~np.isnan(soft).any(1)
    out = np.where(seen[:, None], alpha * np.nan_to_num(soft) + (1 - alpha) * onehot, onehot)
    out[~known & seen] = np.nan_to_num(soft[~known & seen])
    return out


def _label(value: Any, cfg: Any) -> str | None:
    """A target cell as its class name, or None where it is missing or unreadable (the teacher answers)."""
    if is_missing(value):
        return None
    try:
        return str(decode_target(value, cfg))
    except BadInputError:
        return None


def student_spec(student: str | Path, table: Path, target: str) -> dict:
    if str(student) == "fast":
        from polyfuse.autospec.infer import infer

        return infer(table, target=target, preset="fast").spec
    import yaml

    return yaml.safe_load(Path(student).read_text())


def distill(teacher_dir: str | Path, student: str | Path = "fast", *, out: str | Path | None = None,
            unlabelled: str | Path | None = None, table: Any = None, temperature: float = 2.0, alpha: float = 0.7,
            show_progress: bool | None = None) -> Model:
    """Train a student on ``teacher_dir``'s softened outputs over its training table (or ``table``) and
    ``unlabelled`` rows; returns the student (saved to ``out``)."""
    if temperature <= 0 or not 0 <= alpha <= 1:
        raise SpecError(f"distill: temperature must be > 0 and alpha in [0, 1] (got {temperature}, {alpha})")
    teacher = load(teacher_dir)
    outputs = [n for n, c in teacher.spec.outputs.items() if c.type in ("category", "binary")]
    if len(outputs) != 1 or len(teacher.spec.outputs) != 1:
        raise SpecError("distill: the teacher needs exactly one output, a category or binary one; a student spec "
                        "for several outputs is not supported yet")
    output = outputs[0]
    column = teacher.spec.column(output)
    train_path, test_path = (Path(table), None) if isinstance(table, (str, Path)) else teacher_tables(teacher)
    frame, folder = _frame(table if table is not None and not isinstance(table, (str, Path)) else train_path)
    media = [teacher.spec.column(n) for n, c in teacher.spec.inputs.items() if c.type in MEDIA]
    extra_rows = 0
    if unlabelled is not None:
        import pandas as pd

        extra, extra_folder = _frame(Path(unlabelled))
        extra = _absolute_media(extra, extra_folder, media)
        extra[column] = None
        frame, extra_rows = pd.concat([frame, extra], ignore_index=True), len(extra)
        log(f"distill: {len(extra)} unlabelled rows from {unlabelled} join the {len(frame) - len(extra)} training rows")
    cache = shards.cache_root(teacher.spec, Path(teacher.data_info.get("base") or "."))
    classes, probs = teacher_probabilities(teacher, frame, folder, output, cache)
    labels = [_label(v, teacher.spec.outputs[output]) for v in frame[column]]  # as training reads them (3.0 -> "3")
    targets = mixed_targets(labels, classes, soften(probs, temperature), alpha)
    frame[column] = [classes[int(np.argmax(t))] if label is None else v
                     for v, label, t in zip(frame[column], labels, np.nan_to_num(targets))]  # unlabelled: the teacher's
    spec = student_spec(student, train_path, column)
    if test_path is not None:
        spec["data"]["test"] = str(test_path)
    teacher_test = teacher.metrics.get("test", {}).get("outputs", {}).get(output, {})
    about = {"teacher": str(teacher_dir), "temperature": temperature, "alpha": alpha, "rows": len(frame),
             "unlabelled_rows": extra_rows,
             "teacher_test": {k: teacher_test[k] for k in ("accuracy", "f1_macro") if k in teacher_test}}
    soft = SoftTargets({output: classes}, {output: targets}, about,
                       train_only=np.array([label is None for label in labels]))
    return train(spec, data=frame, out=out, show_progress=show_progress, base=folder, soft=soft)

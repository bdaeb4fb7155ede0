"""Robustness of a trained model to corrupted and missing inputs (``polyfuse robustness``).

For every input and each corruption of its modality (:mod:`polyfuse.evaluate.corruptions`), the
headline metric of every output (accuracy for category/binary outputs, R² for numbers,
micro-F1 for multilabel) is measured at each corruption level: a *curve*. Corruptions act on
decoded values, so the shared preprocessing runs after them exactly as in serving. Then, for
every non-empty proper subset of inputs, those inputs are removed (their ``name__present``
masks switched off in the collated batch, as :mod:`polyfuse.evaluate.scores` does) and the metric is
measured with only the remaining inputs present.

Summary figures per curve, in the sense of MultiBench (Liang et al., 2021):

* normalised level: the i-th of L levels sits at x_i = i / (L - 1), so x = 0 is clean and
  x = 1 the most severe level, whatever the corruption's own unit;
* relative robustness = the area under the metric-vs-x curve (trapezoid rule on [0, 1]);
* effective robustness = relative robustness minus the area the model's clean score predicts
  under a reference degradation. MultiBench compares against the trend of a family of
  baseline models; with a single model there is no such family, so the reference here is a
  linear decay from the clean score at x = 0 to chance at x = 1, whose area is
  (clean + chance) / 2. Chance is 1 / n_classes for category and binary outputs and 0 for
  R² (predicting the mean); it is undefined for multilabel outputs (effective is then null).
  Positive: the model degrades more gracefully than a straight slide to chance.

Deterministic under ``seed``: the evaluated rows (at most ``rows``, drawn when the table is
larger) and every corruption's random draws derive from it, so one seed gives one JSON.
"""
from __future__ import annotations

import itertools
import json
import math
import os
import zlib
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from polyfuse import artifact
from polyfuse.data.io import Table, read_table
from polyfuse.errors import BadInputError, PolyfuseError
from polyfuse.evaluate import corruptions, metrics
from polyfuse.evaluate.corruptions import Corruption
from polyfuse.preprocess.pipeline import Decoded, Preprocessor, decode_table

FORMAT = "polyfuse.evaluate.robustness/1"
DEFAULT_ROWS = 1000
CHUNK = 256  # rows collated at once: bounds memory on long tables
MAX_SUBSET_INPUTS = 8  # above this, 2^n - 2 subsets is too many: singletons and their complements only
JSON_NAME, PNG_NAME = "robustness.json", "robustness.png"

DEFINITIONS = {
    "normalised_level": "the i-th of L levels is at x = i / (L - 1): 0 = clean, 1 = most severe",
    "relative_robustness": "area under the metric-vs-normalised-level curve (trapezoid rule on [0, 1])",
    "effective_robustness": (
        "relative robustness minus (clean + chance) / 2, the area of a reference that decays linearly from "
        "the clean score to chance at the last level; MultiBench (Liang et al. 2021) measures performance beyond "
        "what clean performance predicts from a family of baselines - with one model there is none, so the "
        "reference is this linear decay"),
    "chance": "1 / n_classes for category and binary outputs, 0 for R2 (number outputs), null for multilabel",
    "missing": "inputs in 'missing' removed (presence masks off), the metric with only 'present' inputs",
}


# ----------------------------------------------------------------------------- data
def _pick_rows(table: Table, rows: int, seed: int) -> Table:
    """At most ``rows`` rows, drawn with ``seed`` (kept in table order) when the table is longer."""
    if len(table) <= rows:
        return table
    idx = sorted(np.random.default_rng(seed).choice(len(table), size=rows, replace=False).tolist())
    return Table({c: [v[i] for i in idx] for c, v in table.columns.items()}, [table.rows[i] for i in idx],
                 table.folder, table.name)


def _concat(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


class _Evaluator:
    """Scores collated batches of one decoded table; the clean batch is collated once and a
    corrupted input only re-collates that input's arrays (audio features are the costly part)."""

    def __init__(self, model: Any, decoded: Decoded):
        self.model, self.decoded = model, decoded
        self.pre: Preprocessor = model.preprocessor
        self.spec = model.spec
        self.target = self.pre.targets(decoded)
        self.chunks = [range(s, min(s + CHUNK, len(decoded))) for s in range(0, len(decoded), CHUNK)]
        self.clean = _concat([self.pre.collate(decoded, list(c)) for c in self.chunks])
        # one-input preprocessors reuse the fitted state and the pipeline's own key naming
        self._single = {n: Preprocessor(self.spec.model_copy(update={"inputs": {n: cfg}}), self.pre.state)
                        for n, cfg in self.spec.inputs.items()}

    def with_values(self, name: str, values: list) -> dict[str, np.ndarray]:
        """The clean batch with input ``name`` replaced by ``values``."""
        part = Decoded({name: values}, {}, self.decoded.rows)
        batch = dict(self.clean)
        batch.update(_concat([self._single[name].collate(part, list(c)) for c in self.chunks]))
        return batch

    def without(self, missing: Sequence[str]) -> dict[str, np.ndarray]:
        batch = dict(self.clean)
        for n in missing:
            batch[f"{n}__present"] = np.zeros_like(batch[f"{n}__present"])
        return batch

    def scores(self, batch: dict[str, np.ndarray]) -> dict[str, float]:
        probs = self.model.run_arrays(batch)  # chunked model calls (predict_arrays)
        return {o: float(metrics.compute(cfg, self.pre.state[o], probs[o], self.target[o], full=False)[metrics.headline(cfg)])
                for o, cfg in self.spec.outputs.items()}


# ----------------------------------------------------------------------------- figures
def chance_level(cfg: Any, state: dict) -> float | None:
    """The score of an uninformed model: 1/n_classes (accuracy), 0 (R²), None (multilabel F1)."""
    if cfg.type in ("category", "binary"):
        n = len(state.get("classes", [])) or (2 if cfg.type == "binary" else 1)
        return 1.0 / n
    return 0.0 if cfg.type == "number" else None


def relative_robustness(scores: Sequence[float]) -> float:
    """Trapezoid area under ``scores`` at equally spaced normalised levels on [0, 1]."""
    y = np.asarray(scores, dtype=np.float64)
    if len(y) < 2:
        raise ValueError("a robustness curve needs at least two levels")
    return float(np.sum((y[1:] + y[:-1]) / 2.0) / (len(y) - 1))


def effective_robustness(relative: float, clean: float, chance: float | None) -> float | None:
    """``relative`` minus the area of a linear decay from ``clean`` to ``chance``."""
    if chance is None or not math.isfinite(relative) or not math.isfinite(clean):
        return None
    return relative - (clean + chance) / 2.0


# ----------------------------------------------------------------------------- the run
def _curve_rng(seed: int, name: str, corruption: str, level_index: int) -> np.random.Generator:
    """A stream per (input, corruption, level): stable across runs, Python versions and the
    presence of other inputs (crc32, not ``hash``, which is salted per process)."""
    return np.random.default_rng([seed, zlib.crc32(name.encode()), zlib.crc32(corruption.encode()), level_index])


def _resolve_levels(spec: Any, levels: dict[str, Sequence[float]] | None) -> dict[str, list[Corruption]]:
    """Each input's corruptions, with levels overridden by ``levels`` keyed by corruption name
    (every input that has it) or ``input.corruption`` (that one input; wins)."""
    plan = {n: corruptions.for_input(cfg) for n, cfg in spec.inputs.items()}
    levels = levels or {}
    known = {c.name for cs in plan.values() for c in cs} | {f"{n}.{c.name}" for n, cs in plan.items() for c in cs}
    unknown = sorted(set(levels) - known)
    if unknown:
        raise ValueError(f"levels: unknown corruption(s) {unknown}; expected some of {sorted(known)}")
    for n, cs in plan.items():
        for i, c in enumerate(cs):
            chosen = levels.get(f"{n}.{c.name}", levels.get(c.name))
            if chosen is not None:
                if len(chosen) < 2:
                    raise ValueError(f"levels for {n}.{c.name}: need at least two (clean first), got {list(chosen)}")
                cs[i] = c.with_levels(chosen)
    return plan


def _curve(ev: _Evaluator, name: str, c: Corruption, seed: int, clean: dict[str, float],
           outputs: dict[str, dict]) -> dict[str, Any]:
    per_level: list[dict[str, float]] = []
    for i, level in enumerate(c.levels):
        if level == c.clean:  # identity by contract: reuse the clean scores
            per_level.append(clean)
            continue
        rng = _curve_rng(seed, name, c.name, i)
        values = [None if v is None else c.apply(v, level, rng) for v in ev.decoded.inputs[name]]
        per_level.append(ev.scores(ev.with_values(name, values)))
    scores = {o: [s[o] for s in per_level] for o in outputs}
    relative = {o: relative_robustness(scores[o]) for o in outputs}
    return {
        "param": c.param,
        "levels": list(c.levels),
        "labels": [c.label(x) for x in c.levels],
        "normalised": [i / (len(c.levels) - 1) for i in range(len(c.levels))],
        "scores": scores,
        "relative": relative,
        "effective": {o: effective_robustness(relative[o], outputs[o]["clean"], outputs[o]["chance"]) for o in outputs},
    }


def _subsets(names: list[str]) -> tuple[str, list[tuple[str, ...]]]:
    """Non-empty proper subsets to remove, smallest first (all of them, up to MAX_SUBSET_INPUTS)."""
    n = len(names)
    if n <= MAX_SUBSET_INPUTS:
        return "all", [s for k in range(1, n) for s in itertools.combinations(names, k)]
    singles = [(x,) for x in names]
    return "singletons and their complements", singles + [tuple(y for y in names if y != x) for x in names]


def _missing(ev: _Evaluator) -> dict[str, Any]:
    names = list(ev.spec.inputs)
    kind, subsets = _subsets(names)
    entries = [{"missing": list(s), "present": [x for x in names if x not in s], "scores": ev.scores(ev.without(s))}
               for s in subsets]
    return {"subsets": kind, "entries": entries}


def run(model: Any, table: Any, seed: int = 0, levels: dict[str, Sequence[float]] | None = None,
        rows: int = DEFAULT_ROWS) -> dict[str, Any]:
    """Robustness curves and missing-input scores of a trained model (``polyfuse.load``) on a labelled
    table (path, DataFrame or records). ``levels`` overrides level lists, keyed by corruption name
    or ``input.corruption``; at most ``rows`` rows are evaluated. Returns the JSON-ready report."""
    if rows < 1:
        raise ValueError(f"rows must be >= 1, got {rows}")
    plan = _resolve_levels(model.spec, levels)
    full = read_table(table)
    picked = _pick_rows(full, rows, seed)
    decoded = decode_table(model.spec, picked, with_targets=True, on_bad_row="skip")
    if len(decoded) == 0:
        raise BadInputError(f"{full.name}: no usable rows to evaluate ({len(decoded.bad)} bad)")
    ev = _Evaluator(model, decoded)
    clean = ev.scores(ev.clean)
    outputs = {o: {"metric": metrics.headline(cfg), "clean": clean[o], "chance": chance_level(cfg, model.preprocessor.state[o])}
               for o, cfg in model.spec.outputs.items()}
    curves = {n: {c.name: _curve(ev, n, c, seed, clean, outputs) for c in cs} for n, cs in plan.items()}
    result = {
        "format": FORMAT,
        "seed": seed,
        "table": str(table) if isinstance(table, (str, Path)) else full.name,
        "rows": len(decoded),
        "rows_in_table": len(full),
        "bad_rows": [str(b) for b in decoded.bad],
        "definitions": DEFINITIONS,
        "inputs": {n: cfg.type for n, cfg in model.spec.inputs.items()},
        "outputs": outputs,
        "curves": curves,
        "missing": _missing(ev) if len(model.spec.inputs) > 1 else {"subsets": "none (one input)", "entries": []},
    }
    return _json_safe(result)


def _json_safe(value: Any) -> Any:
    """Plain JSON: non-finite floats (the clean SNR is +inf, R² of one row is NaN) become null,
    others are rounded so that the file reads well and compares exactly."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, float):
        return round(value, 6) if math.isfinite(value) else None
    return value


# ----------------------------------------------------------------------------- output
def _fmt(x: float | None, width: int = 6, sign: bool = False) -> str:
    if x is None:
        return f"{'n/a':>{width}}"
    return f"{x:>+{width}.3f}" if sign else f"{x:>{width}.3f}"


def format_table(result: dict[str, Any]) -> str:
    """Terminal tables: per output, input × corruption scores at each level with relative and
    effective robustness, the level legend, then the missing-input table."""
    lines: list[str] = []
    n_levels = max((len(c["levels"]) for cs in result["curves"].values() for c in cs.values()), default=0)
    for o, info in result["outputs"].items():
        lines.append(f"{result['table']}: {result['rows']} rows, seed {result['seed']} - {o}: {info['metric']} "
                     f"(clean {_fmt(info['clean'], 0)}, chance {_fmt(info['chance'], 0)})")
        lines.append(f"  {'input':<12}{'corruption':<12}" + "".join(f"{'L' + str(i):>7}" for i in range(n_levels))
                     + f"{'relative':>10}{'effective':>11}")
        for n, cs in result["curves"].items():
            for cname, c in cs.items():
                cells = "".join(f" {_fmt(s)}" for s in c["scores"][o]) + " " * 7 * (n_levels - len(c["levels"]))
                lines.append(f"  {n:<12}{cname:<12}{cells}{_fmt(c['relative'][o], 10)}{_fmt(c['effective'][o], 11, True)}")
        lines.append("")
    lines.append("levels (L0 = clean ... most severe):")
    seen = set()
    for n, cs in result["curves"].items():
        for cname, c in cs.items():
            key = (result["inputs"][n], cname, tuple(c["labels"]))
            if key not in seen:
                seen.add(key)
                lines.append(f"  {result['inputs'][n]} {cname} ({c['param']}): " + ", ".join(c["labels"]))
    entries = result["missing"]["entries"]
    if entries:
        lines.append("")
        lines.append(f"missing inputs ({result['missing']['subsets']} non-empty proper subsets removed):")
        width = max(len(", ".join(e["missing"])) for e in entries) + 2
        outs = list(result["outputs"])
        lines.append(f"  {'missing':<{width}}" + "".join(f"{o + ' ' + result['outputs'][o]['metric']:>20}" for o in outs)
                     + "   present")
        for e in entries:
            lines.append(f"  {', '.join(e['missing']):<{width}}" + "".join(f"{_fmt(e['scores'][o], 20)}" for o in outs)
                         + "   " + ", ".join(e["present"]))
    return "\n".join(lines)


def _render_png(result: dict[str, Any], path: Path) -> None:
    """One subplot per input: a curve per corruption (and output), dashed: that input missing."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(result["curves"])
    cols = min(3, len(names))
    rows_ = -(-len(names) // cols)
    fig, axes = plt.subplots(rows_, cols, figsize=(4.2 * cols, 3.4 * rows_), squeeze=False)
    alone = {tuple(e["missing"]): e["scores"] for e in result["missing"]["entries"]}
    outs = list(result["outputs"])
    for ax, n in zip(axes.flat, names):
        for cname, c in result["curves"][n].items():
            for o in outs:
                label = cname if len(outs) == 1 else f"{cname} ({o})"
                ax.plot(c["normalised"], [np.nan if s is None else s for s in c["scores"][o]], marker="o", ms=3, label=label)
        for o in outs:
            missing = alone.get((n,), {}).get(o)
            if missing is not None:
                ax.axhline(missing, ls="--", color="grey", lw=1, label=f"{n} missing" + ("" if len(outs) == 1 else f" ({o})"))
        metric = result["outputs"][outs[0]]["metric"]
        ax.set(title=f"{n} ({result['inputs'][n]})", xlabel="normalised level (0 = clean)", ylabel=metric, xlim=(0, 1))
        if metric in ("accuracy", "f1_micro"):
            ax.set_ylim(0, 1.02)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=100, metadata={"Software": None})
    plt.close(fig)


def _atomic(path: Path, write: Any) -> None:
    """Write through a hidden temp name in the same folder, then rename over ``path``."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write(result: dict[str, Any], model_dir: str | Path | None = None, out: str | Path | None = None) -> list[Path]:
    """Write ``robustness.json`` and ``robustness.png`` into the model directory and re-sign its
    manifest (other manifest keys kept), or, with ``out``, the JSON to ``out`` and the PNG beside
    it with a .png suffix (the artifact untouched). Returns the paths written."""
    text = json.dumps(result, indent=1) + "\n"
    if out is not None:
        json_path = Path(out)
        json_path.parent.mkdir(parents=True, exist_ok=True)
        png_path = json_path.with_suffix(".png")
        _atomic(json_path, lambda p: p.write_text(text))
        _atomic(png_path, lambda p: _render_png(result, p))
        return [json_path, png_path]
    if model_dir is None:
        raise PolyfuseError("robustness: no model directory to write into; pass --out FILE")
    folder = Path(model_dir)
    # Re-signing blesses every file: refuse if anything changed since the model was saved.
    artifact.verify(folder)
    _atomic(folder / JSON_NAME, lambda p: p.write_text(text))
    _atomic(folder / PNG_NAME, lambda p: _render_png(result, p))
    artifact.refresh_manifest(folder)
    return [folder / JSON_NAME, folder / PNG_NAME]


def model_dir_of(model_or_dir: Any) -> Path | None:
    """The artifact directory of a path or of a loaded model (None for an unsaved model)."""
    if isinstance(model_or_dir, (str, Path)):
        return Path(model_or_dir)
    path = getattr(model_or_dir, "info", {}).get("path")
    return Path(path) if path else None

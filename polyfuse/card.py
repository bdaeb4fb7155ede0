"""MODEL_CARD.md: what the model was trained on, how well it does, and where it should not be used."""
from __future__ import annotations

import datetime
from typing import Any

import polyfuse
from polyfuse import report


def _exports(exports: dict[str, Any]) -> str:
    if not exports:
        return "None yet (`polyfuse export DIR --to onnx`)."
    lines = ["| file | format | precision | size | verification |", "| --- | --- | --- | --- | --- |"]
    for name, e in exports.items():
        v = e["verification"]
        figures = ", ".join(f"{k} {val:.4g}" for k, val in v.items() if k != "passed" and isinstance(val, float))
        status = "passed" if v["passed"] else "**FAILED — written with --force**"
        lines.append(f"| `{name}` | {e['format']} | {e['precision']} | {e['bytes'] / 1e6:.2f} MB | {status}: {figures} |")
    return "\n".join(lines)


def render(model: Any, exports: dict[str, Any] | None = None) -> str:
    spec, m = model.spec, model.metrics
    inputs = "\n".join(f"- `{n}`: {c.type} (column `{spec.column(n)}`, encoder `{c.encoder}`)" for n, c in spec.inputs.items())
    outputs = "\n".join(f"- `{n}`: {c.type}" + (f", classes {model.preprocessor.classes(n)}" if c.type != "number" else "")
                        for n, c in spec.outputs.items())
    sizes = m.get("sizes", {})
    evals = []
    for split in ("test", "valid"):
        if split in m:
            evals.append(f"### {split} split\n```\n{report.summary(m[split], spec)}\n```")
    bad = m.get("bad_rows", [])
    return f"""# Model card

Trained with polyfuse {polyfuse.__version__} on {datetime.date.today().isoformat()}.

## Inputs
{inputs}

Fusion: `{spec.fusion.method}` (width {spec.fusion.dim}, modality dropout {spec.fusion.modality_dropout}).
Any input may be missing at prediction time; the model then uses the others.

## Outputs
{outputs}

## Data
- training table: `{spec.data.train or '<DataFrame>'}`; rows: train {sizes.get('train', '?')}, \
valid {sizes.get('valid', '?')}, test {sizes.get('test', '?')}
- split: {spec.data.split.model_dump(exclude_none=True)}
- bad rows skipped: {len(bad)}{' (listed in metrics.json)' if bad else ''}
- training time: {m.get('train_seconds', '?')} s

## Evaluation
{chr(10).join(evals) or 'No held-out data was evaluated.'}

## Deployment builds
{_exports(exports or {})}

## Intended use and limits
- Intended for data drawn like the training table: the same columns, devices, languages and populations.
  Accuracy on other sources (other microphones, cameras, speakers, writers) is unmeasured here.
- The "only <input>" rows above show how the model degrades when inputs are missing; check them before
  deploying where a sensor can fail.
- Probabilities are not calibrated unless stated; do not use them as risk estimates without checking.
- Not for decisions about people without human review.
"""

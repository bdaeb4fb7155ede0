"""MODEL_CARD.md: what the model was trained on, how well it does, and where it should not be used."""
from __future__ import annotations

import datetime
from typing import Any

from polyfuse.evaluate import report
from polyfuse.version import __version__


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


def _baseline(metrics: dict[str, Any], spec: Any) -> str:
    """Markdown: network vs linear baseline per output and split, with the warnings in bold."""
    tables = report.baseline_tables(metrics, spec)
    if not tables:
        reason = (metrics.get("baseline") or {}).get("skipped")
        return f"No baseline was fitted ({reason})." if reason else "No baseline was fitted."
    base = metrics["baseline"]
    parts = [f"Linear models on cheap features of the same training rows, scored on the same rows "
             f"({base['method']}; fitted in {base['seconds']:.1f} s). A network that does not beat them is not "
             "earning its complexity."]
    parts += [f"**⚠ {w}**" for w in metrics.get("baseline_warnings", [])]
    for out, columns, rows in tables:
        table = [f"| `{out}` | " + " | ".join(columns) + " |", "| --- |" + " --- |" * len(columns)]
        parts.append("\n".join(table + [f"| {label} | " + " | ".join(cells) + " |" for label, cells in rows]))
    return "\n\n".join(parts)


def _heads_and_wide(metrics: dict[str, Any]) -> str:
    """Markdown: classic heads against the softmax head, and the wide half's blend, when present."""
    lines = []
    for out, entry in (metrics.get("heads") or {}).items():
        for head, scores in entry.items():
            if isinstance(scores, dict):
                figures = "; ".join(f"{part} " + ", ".join(f"{k} {v:.4f}" for k, v in s.items()) for part, s in scores.items())
                lines.append(f"- `{out}` head `{head}`: {figures}")
    for out, b in ((metrics.get("wide") or {}).get("blend") or {}).items():
        if isinstance(b, dict) and "weight" in b:
            lines.append(f"- `{out}`: wide (linear n-gram) half added with weight {b['weight']}; validation accuracy "
                         f"deep {b['valid_accuracy_deep']}, wide {b['valid_accuracy_wide']}, both {b['valid_accuracy_blend']}")
    return "\n".join(lines) or "Softmax heads on the fused features; no wide half."


def _ensemble(metrics: dict[str, Any]) -> str:
    """Markdown: each member's weight and scores, and the mix against the best member; or why there is none."""
    from polyfuse.evaluate.report import ensemble_rows

    ens = metrics.get("ensemble") or {}
    if "off" in ens:
        return f"Off: {ens['off']}."
    parts = []
    for out, metric, rows in ensemble_rows(metrics):
        table = [f"`{out}`, {metric} (weights chosen on the validation rows):", "",
                 "| member | weight | valid | test |", "| --- | --- | --- | --- |"]
        parts.append("\n".join(table + [f"| {m} | {w} | {v} | {t} |" for m, w, v, t in rows]))
    return "\n\n".join(parts) or "No ensemble."


def encoder_text(cfg: Any) -> str:
    """`cnn`, or for a pretrained backbone its name, how it was trained and its pooling."""
    enc = cfg.encoder
    if isinstance(enc, str):
        return f"`{enc}`"
    how = (f"LoRA r={enc.lora.r}" if enc.lora else f"last {enc.train_last} layers trained" if enc.train_last
           else "frozen" if enc.freeze else "fine-tuned")
    return f"pretrained `{enc.name}` ({how}, {enc.pooling or 'default'} pooling)"


def _pretrained(model: Any) -> str:
    """Which pretrained backbones were used, from which folder, and what the embedding cache did."""
    lines = []
    for name, cfg in model.spec.inputs.items():
        enc = cfg.encoder
        if isinstance(enc, str):
            continue
        conf = model.preprocessor.state[name].get("backbone") or {}
        lines.append(f"- `{name}`: `{conf.get('model_type', '?')}` backbone from `{enc.name}` "
                     f"({conf.get('_name_or_path') or 'local folder'})")
        if enc.pretrained is not None:
            from polyfuse.zoo.catalog import describe, entry

            z = describe(entry(enc.pretrained))
            lines.append(f"  - zoo model `{z['name']}`: {z['source']}; licence {z['licence']}; weights from the "
                         f"package `{z['package']}=={z['version']}`")
        cache = model.metrics.get("pretrained_cache", {}).get(name)
        if cache:
            lines.append(f"  - embedding cache: {cache['computed']} rows computed, {cache['reused']} reused "
                         f"({cache['cache_mb']} MB)")
            gate = cache.get("int8_parity") or cache.get("onnx_parity")
            if gate:
                how = "with int8 weights" if "int8_parity" in cache else "exported to ONNX (fp32)"
                lines.append(f"  - its outputs were computed by the backbone {how} (ONNX Runtime): cosine "
                             f"to torch's {gate['mean_cos']} on average, {gate['min_cos']} at least, on {gate['rows']} "
                             "rows; the saved model runs the fp32 backbone")
    return ("Pretrained backbones (their licences and training data apply):\n" + "\n".join(lines) + "\n") if lines else ""


def _pruning(metrics: dict[str, Any]) -> str:
    """What structured pruning removed and what it cost, before/after."""
    p = metrics.get("pruning")
    if not p:
        return ""
    (m0, m1), (p0, p1), (l0, l1) = p["macs_per_row"], p["parameters"], p["latency_ms_batch1"]
    scores = ", ".join(f"{n} {a:.4f} -> {b:.4f}" for n, (a, b) in p["score"].items())
    return (f"Pruned: {p['ratio']:.0%} of the channels of {p['layers']} encoder layers removed (torch-pruning, L2 "
            f"magnitude), then {p['finetune_epochs']} fine-tuning epochs. MACs per row {m0:,} -> {m1:,}; parameters "
            f"{p0:,} -> {p1:,}; torch batch-1 latency {l0:.2f} -> {l1:.2f} ms; {p['scored_on']} {scores}.\n")


def _distillation(metrics: dict[str, Any]) -> str:
    """Where a distilled student's targets came from, and the teacher's test scores beside its own."""
    d = metrics.get("distillation")
    if not d:
        return ""
    own = next(iter(metrics.get("test", {}).get("outputs", {}).values()), {})
    scores = ", ".join(f"{k} teacher {v:.4f} / student {own[k]:.4f}" for k, v in d.get("teacher_test", {}).items()
                       if k in own)
    return (f"- distilled from the teacher `{d['teacher']}`: trained on its probabilities at temperature "
            f"{d['temperature']} mixed with the labels (teacher's share {d['alpha']}) over {d['rows']} rows "
            f"({d['unlabelled_rows']} unlabelled){'; test ' + scores if scores else ''}\n")


def _privacy(metrics: dict[str, Any]) -> str:
    """Markdown: the differential-privacy guarantee of a DP-SGD run, or that there is none."""
    p = metrics.get("privacy")
    if not p:
        return "Trained without differential privacy (`train.privacy` unset): the weights may reveal training rows."
    target = f" (target {p['target_epsilon']})" if p.get("target_epsilon") else ""
    return (f"Trained with DP-SGD ({p['library']}): **(ε = {p['epsilon']}{target}, δ = {p['delta']:g})-differential "
            f"privacy** for each training row, by the {p['accountant'].upper()} accountant.\n\n"
            f"- noise multiplier {p['noise_multiplier']}, per-row gradient clipping at {p['max_grad_norm']}\n"
            f"- Poisson sampling, rate {p['sample_rate']} (expected batch {p['expected_batch_size']} of {p['rows']} "
            f"rows), {p['steps']} steps = {p['epochs']} epochs\n"
            "- Covers the network's weights. Not covered: the fitted preprocessing (vocabularies, means, IDF "
            "weights) and the baseline scores, computed from the training rows without noise; the temperature "
            "and the best epoch are chosen on validation rows.")


def render(model: Any, exports: dict[str, Any] | None = None) -> str:
    spec, m = model.spec, model.metrics
    inputs = "\n".join(f"- `{n}`: {c.type} (column `{spec.column(n)}`, encoder {encoder_text(c)})"
                       for n, c in spec.inputs.items())
    outputs = "\n".join(f"- `{n}`: {c.type}" + (f", classes {model.preprocessor.classes(n)}" if c.type != "number" else "")
                        for n, c in spec.outputs.items())
    sizes = m.get("sizes", {})
    evals = []
    for split in ("test", "valid"):
        if split in m:
            evals.append(f"### {split} split\n```\n{report.summary(m[split], spec)}\n```")
    bad = m.get("bad_rows", [])
    return f"""# Model card

Trained with polyfuse {__version__} on {datetime.date.today().isoformat()}.

## Inputs
{inputs}

{_pretrained(model)}
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
{_distillation(m)}{_pruning(m)}
## Evaluation
{chr(10).join(evals) or 'No held-out data was evaluated.'}

## Heads
{_heads_and_wide(m)}

## Ensemble
{_ensemble(m)}

## Baseline
{_baseline(m, spec)}

## Privacy
{_privacy(m)}

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

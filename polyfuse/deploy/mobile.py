"""`polyfuse export m --to onnx|executorch --with-preprocessing`: a ``mobile/<format>/`` bundle an app can ship.

The bundle holds the graph (preprocessing inside: :mod:`polyfuse.deploy.device_graph`), ``labels.json``,
``contract.json`` (every input's name, dtype, shape, range and meaning; the outputs and their labels),
and for text inputs ``text_ids.md`` (how an app turns text into ids, step by step) with
``text_vectors.json`` (texts, their tokens and ids, from polyfuse's own code, so an app checks itself).

Verification, before anything is written: each validation row goes from its raw record both ways —
through the numpy preprocessing into torch (the reference), and as the device inputs an app would
build into the graph in eager torch (features compared) and in the written file's own runtime
(probabilities compared, top-1 equal on every row).
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from polyfuse.deploy import device_graph as dg
from polyfuse.deploy.onnx import Check, ExportError, batch1_latency, metadata, output_names, write_graph
from polyfuse.preprocess import text as text_prep

BUNDLE = "mobile"
FILES = {"onnx": "model.onnx", "executorch": "model.pte", "litert": "model.tflite"}
# phrases that exercise each rule of text_ids.md: case, punctuation, digits, accents, CJK without spaces, emoji
SAMPLE_TEXTS = ["Hello, World! It's 2026.", "Café crème brûlée — très bon", "我们今天去北京", "Ünïcödé   spaces\tand\nlines",
                "emoji 👍🏽 ok?", "a", ""]


def check_probabilities(reference: dict[str, np.ndarray], got: dict[str, np.ndarray], gaps: dict[str, float],
                        allowed: dict[str, float]) -> Check:
    """Top-1 equal on every row and features within their tolerance; probability gaps are reported."""
    delta = max(float(np.abs(reference[k] - got[k]).max()) for k in reference)
    same = min(float((reference[k].argmax(-1) == got[k].argmax(-1)).mean()) for k in reference)
    over = {k: v for k, v in gaps.items() if v > allowed[k]}
    ok = same == 1.0 and not over
    worst = max(gaps, key=lambda k: gaps[k] / allowed[k]) if gaps else ""
    message = (f"top-1 equal on {same:.2%} of rows (needs all), max |Δ probability| {delta:.2e}; features: largest "
               f"gap {gaps.get(worst, 0.0):.2e} on {worst!r} (allowed {allowed.get(worst, 0.0):.1e})"
               + (f"; over tolerance: {', '.join(over)}" if over else ""))
    return Check(ok, {"top1_agreement": same, "max_abs_diff": delta,
                      "feature_gaps": {k: float(f"{v:.3g}") for k, v in gaps.items()},
                      "feature_tolerances": {k: float(f"{v:.3g}") for k, v in allowed.items()}}, message)


def _runner(to: str, path: Path, names: list[str]) -> Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]:
    if to == "onnx":
        from polyfuse.runtime import open_session

        session = open_session(path)
        return lambda row: dict(zip(names, session.run(names, row)))
    if to == "litert":
        from polyfuse.deploy.litert import open_runner

        return open_runner(path, names)
    from polyfuse.deploy.pte import open_method

    method = open_method(path)
    return lambda row: {n: p.numpy() for n, p in zip(names, method.execute([torch.from_numpy(v) for v in row.values()]))}


def _write_graph(to: str, model: Any, wrapper: torch.nn.Module, path: Path, artifact_dir: Path) -> None:
    if to == "onnx":
        batch = torch.export.Dim("batch", min=1, max=1 << 16)
        write_graph(wrapper, dg.example(model, 2), dg.dynamic_shapes(model, batch, bounded=False),
                    output_names(model), path, metadata(model, artifact_dir))
    elif to == "litert":  # its converter runs in its own environment and traces the same DeviceModel
        from polyfuse.deploy.litert import convert

        convert(artifact_dir, path, with_preprocessing=True)
    else:  # phones run one record at a time; a batch axis would multiply the planned memory
        from polyfuse.deploy.pte import lower_module

        lower_module(wrapper, dg.example(model, 1), dg.dynamic_shapes(model, None, bounded=True), path)


def export_bundle(folder: Path, model: Any, table: Any, rows: Any, reference: dict[str, np.ndarray],
                  to: str) -> tuple[Path, dict[str, Any], Check]:
    """Build and verify the bundle in a temporary folder; returns (that folder, entry, check)."""
    if to not in FILES:
        raise ExportError(f"--with-preprocessing exports to {' or '.join(FILES)}, not {to!r}")
    dg.check_supported(model)
    if to == "litert":
        from polyfuse.deploy.litert import check_supported

        check_supported(model, with_preprocessing=True)
    t0 = time.perf_counter()
    wrapper = dg.DeviceModel(model).eval()
    positions = {r: k for k, r in enumerate(table.rows)}
    device = [dg.device_row(model, rows, i, dg.decode_pixels(model, table, positions[rows.rows[i]]))
              for i in range(len(rows))]
    if to == "litert":  # fixed shapes: what an app would pass it
        device = [dg.padded_clips(model, row) for row in device]
    collated = [model.preprocessor.collate(rows, [i]) for i in range(len(rows))]
    gaps = dg.feature_gaps(model, wrapper.preprocessing, device, collated)
    allowed = {k: dg.allowed_gap(model, k) for k in gaps}
    staging = Path(tempfile.mkdtemp(prefix=".mobile.", dir=folder))
    os.chmod(staging, 0o755)  # mkdtemp's 0700 would hide the bundle from a serving or packaging user
    try:
        graph = staging / FILES[to]
        _write_graph(to, model, wrapper, graph, folder)
        names = list(model.spec.outputs)
        run = _runner(to, graph, names)
        outs = [run(row) for row in device]
        got = {n: np.concatenate([o[n] for o in outs]) for n in names}
        check = check_probabilities({n: reference[n] for n in names}, got, gaps, allowed)
        ms = 1000 * float(np.median([batch1_latency(run, row, repeats=5) for row in device[:8]]))
        contract = write_contract(staging, model, to, check)
    except Exception:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    entry = {"format": f"{to} (preprocessing in the graph)", "precision": "fp32", "bytes": graph.stat().st_size,
             "files": sorted(p.name for p in staging.iterdir()), "inputs": [i["name"] for i in contract["inputs"]],
             "batch1_ms": round(ms, 3), "verification": check.as_dict(), "forced": not check.passed,
             "rows": len(rows), "seconds": round(time.perf_counter() - t0, 2)}
    return staging, entry, check


def install(staging: Path, folder: Path, to: str) -> str:
    """Move a verified bundle into place (replacing an older one); returns its path in the artifact."""
    target = folder / BUNDLE / to
    target.parent.mkdir(exist_ok=True)
    old = None
    if target.exists():
        old = target.with_name(f".{to}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
    os.replace(staging, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return f"{BUNDLE}/{to}/{FILES[to]}"


# ----------------------------------------------------------------------------- the contract
def _input_entries(model: Any, name: str, cfg: Any, to: str) -> list[dict[str, Any]]:
    batch: Any = "batch" if to == "onnx" else 1
    state = model.preprocessor.state[name]
    present = {"name": f"{name}__present", "dtype": "bool", "shape": [batch], "meaning": f"false where {name} is missing"}
    if cfg.type == "image":
        side = dg.MAX_SIDE if to == "executorch" else None
        return [{"name": name, "dtype": "uint8", "shape": [batch, "height", "width", 3], "range": [0, 255],
                 "max_side": side, "meaning": "the picture decoded to RGB, upright (EXIF orientation applied), alpha "
                 f"dropped, at its own size: resized to {cfg.size[0]}x{cfg.size[1]} (Pillow bilinear) and "
                 "normalised inside"}, present]
    if cfg.type == "audio":
        seconds = dg.MAX_CLIP_SECONDS if to in ("executorch", "litert") else None
        fixed = to == "litert"
        return [{"name": name, "dtype": "float32", "shape": [batch, dg.fixed_clip_samples(cfg) if fixed else "samples"],
                 "sample_rate": cfg.sample_rate, "max_seconds_read": cfg.max_seconds, "max_seconds_accepted": seconds,
                 "meaning": f"mono waveform at {cfg.sample_rate} Hz, any scale (peak-normalised inside; PCM16/32768 "
                 f"is fine); the first {cfg.max_seconds} s are used"
                 + (f"; zero-padded to {dg.fixed_clip_samples(cfg)} samples (the build's fixed shape)" if fixed else "")},
                {"name": f"{name}__length", "dtype": "int64", "shape": [batch], "meaning": "samples of each row that "
                 "are audio (the rest of the row is padding)"}, present]
    if cfg.type == "text":
        width = cfg.max_ngrams if cfg.encoder == "ngram" else cfg.max_length
        how = "hashed n-gram ids" if cfg.encoder == "ngram" else f"ids from vocab_{name}.json"
        return [{"name": name, "dtype": "int64", "shape": [batch, width], "meaning": f"{how} as text_ids.md says, "
                 "padded with 0 (all zeros: missing)"}]
    if cfg.type == "number":
        return [{"name": name, "dtype": "float32", "shape": [batch], "meaning": "the raw number; NaN when missing",
                 "training_mean": state["mean"], "training_std": state["std"]}]
    return [{"name": name, "dtype": "int64", "shape": [batch], "vocabulary": state["vocab"],
             "meaning": "the level's index in vocabulary (0 = a level not seen in training), -1 when missing"}]


def write_contract(staging: Path, model: Any, to: str, check: Check) -> dict[str, Any]:
    """contract.json, labels.json and, for text inputs, text_ids.md, text_vectors.json and vocabularies."""
    batch: Any = "batch" if to == "onnx" else 1
    labels = {n: model.preprocessor.classes(n) for n in model.spec.outputs}
    inputs = [e for n, c in model.spec.inputs.items() for e in _input_entries(model, n, c, to)]
    outputs = [{"name": n, "dtype": "float32", "type": c.type,
                "shape": [batch, len(labels[n])] if labels[n] else [batch, "values"],
                "meaning": "probabilities, in the order of labels.json" if labels[n] else "the prediction"}
               for n, c in model.spec.outputs.items()]
    contract = {"format": "polyfuse.mobile/1", "model": FILES[to],
                "runtime": {"onnx": "ONNX Runtime (opset 18)", "executorch": "ExecuTorch with the XNNPACK delegate",
                            "litert": "LiteRT (TensorFlow Lite) interpreter; int64 inputs narrowed to int32"}[to],
                "inputs": inputs, "outputs": outputs, "verification": check.as_dict()}
    (staging / "contract.json").write_text(json.dumps(contract, indent=1, ensure_ascii=False))
    (staging / "labels.json").write_text(json.dumps(labels, indent=1, ensure_ascii=False))
    texts = {n: c for n, c in model.spec.inputs.items() if c.type == "text"}
    if texts:
        (staging / "text_ids.md").write_text(text_ids_doc(texts))
        vectors = {n: text_vectors(c, model.preprocessor.state[n]) for n, c in texts.items()}
        (staging / "text_vectors.json").write_text(json.dumps(vectors, indent=1, ensure_ascii=False))
        for n, c in texts.items():
            if c.encoder != "ngram":
                (staging / f"vocab_{n}.json").write_text(json.dumps(model.preprocessor.state[n]["vocab"], ensure_ascii=False))
    return contract


def text_vectors(cfg: Any, state: dict) -> list[dict[str, Any]]:
    """SAMPLE_TEXTS through polyfuse's own tokeniser and id code: what an app's port must reproduce."""
    out = []
    for sample in SAMPLE_TEXTS:
        tokens = text_prep.tokenize(sample, cfg.tokenizer, cfg.lowercase)[: cfg.max_length]
        ids = text_prep.collate([tokens], cfg, state, False, None)[""][0]
        out.append({"text": sample, "tokens": tokens, "ids": [int(i) for i in ids[ids > 0]], "width": len(ids)})
    return out


def text_ids_doc(texts: dict[str, Any]) -> str:
    """How each text input becomes ids, precise enough to port (text_vectors.json checks the port)."""
    parts = ["# Text to ids\n", "Each text input of this model becomes a fixed-width row of int64 ids, padded with 0. "
             "Strings are sequences of Unicode code points (in Swift use `unicodeScalars`, in Kotlin `codePoints()`, "
             "not grapheme clusters or UTF-16 units). `text_vectors.json` lists texts with their tokens and ids; "
             "an app should check its port against every one.\n"]
    for name, cfg in texts.items():
        parts.append(f"\n## `{name}`\n")
        steps = ["Lower-case the text (Unicode full case mapping, as Python's `str.lower`)." if cfg.lowercase
                 else "Keep the text's case."]
        if cfg.tokenizer == "char":
            steps.append("Tokens: every code point that is not whitespace, in order.")
        else:
            steps.append(r"Tokens: the matches, left to right, of the regular expression `\w+|[^\w\s]` with "
                         r"Unicode semantics: runs of letters, digits, marks and underscore, or any single other "
                         "character that is not whitespace.")
        steps.append(f"Keep the first {cfg.max_length} tokens.")
        if cfg.encoder == "ngram":
            chars = cfg.char_ngrams and cfg.tokenizer != "char"
            steps += [f"`bucket(key) = 1 + crc32(utf8(key)) mod {cfg.buckets - 1}` (CRC-32 as in zlib/PNG: "
                      "polynomial 0xEDB88320, initial and final XOR 0xFFFFFFFF, unsigned).",
                      f"For n = 1 .. {cfg.word_ngrams}: for each run of n consecutive tokens, append "
                      "`bucket(\"w\" + n + \"\\u001f\" + tokens joined by \"\\u001f\")`. After each n, if "
                      f"{cfg.max_ngrams} or more ids were appended, stop."]
            if chars:
                lo, hi = cfg.char_ngrams
                steps.append(f"Then for each token t: m = \"<\" + t + \">\"; for n = {lo} .. {hi}, for each start i, "
                             "g = the n code points of m from i; skip g when it is \"<\", \">\" or m itself; append "
                             "`bucket(\"c\\u001f\" + g)`. After each token, stop if "
                             f"{cfg.max_ngrams} or more ids were appended.")
            steps.append(f"Keep the first {cfg.max_ngrams} ids; pad with 0 to {cfg.max_ngrams}.")
        else:
            steps += [f"Each token's id is its index in `vocab_{name}.json` (a list); a token not in it is 1.",
                      f"Pad with 0 to {cfg.max_length}."]
        parts.append("\n".join(f"{k}. {s}" for k, s in enumerate(steps, 1)) + "\n")
    return "".join(parts)

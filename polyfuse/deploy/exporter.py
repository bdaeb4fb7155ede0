"""`polyfuse export`: write verified deployment builds into an artifact directory.

Every build is written under a temporary name, verified against torch on the validation rows
(run from raw records through the shared preprocessing), and only then renamed into place. The
verification figures go into ``exports.json``, the manifest and the model card.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from polyfuse import artifact
from polyfuse.data.io import Table, read_table
from polyfuse.deploy.onnx import (
    OPSET,
    Check,
    ExportError,
    batch1_latency,
    check_fp32,
    check_int8,
    example_batch,
    metadata,
    onnx_probabilities,
    temp_path,
    torch_probabilities,
    write_onnx,
)
from polyfuse.errors import ArtifactError
from polyfuse.preprocess.pipeline import Decoded, decode_table
from polyfuse.runtime import LITERT, PT2, PTE, VARIANTS, open_session


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def verification_table(model: Any, data: str | Path | None = None) -> Table:
    """The validation split of training, rebuilt from ``data.json`` (or a labelled table given by the user)."""
    info = model.data_info
    if data is not None:
        return read_table(data)
    if info.get("valid"):
        return read_table(info["valid"], Path(info["base"]))
    if info.get("train") and info.get("valid_rows"):
        table = read_table(info["train"], Path(info["base"]))
        wanted = set(info["valid_rows"])
        keep = [i for i, r in enumerate(table.rows) if r in wanted]
        table.columns = {c: [v[i] for i in keep] for c, v in table.columns.items()}
        table.rows = [table.rows[i] for i in keep]
        return table
    raise ExportError("no validation rows to verify the export on (the model was trained from a DataFrame "
                      "or without a validation split); pass a labelled table with --data")


def verification_rows(model: Any, data: str | Path | None = None, limit: int | None = None,
                      table: Table | None = None) -> Decoded:
    """The rows of :func:`verification_table` (or ``table``) decoded, at most ``limit``."""
    decoded = decode_table(model.spec, table or verification_table(model, data), with_targets=True)
    if len(decoded) == 0:
        raise ExportError("the verification table has no usable rows; pass another with --data")
    if limit and len(decoded) > limit:
        decoded = decoded.subset(list(range(limit)))
    return decoded


def calibration_batches(model: Any, table: str | Path | None, rows: int = 256, batch: int = 32) -> list[dict]:
    info = model.data_info
    if table is None:
        if not info.get("train"):
            raise ExportError("static quantisation needs calibration rows: pass --calibration TABLE")
        table = Path(info["base"]) / info["train"]
    decoded = decode_table(model.spec, read_table(table), with_targets=False)
    if len(decoded) == 0:
        raise ExportError(f"calibration table {table} has no usable rows")
    pick = np.random.default_rng(0).permutation(len(decoded))[:rows]
    return [model.preprocessor.collate(decoded, pick[s : s + batch]) for s in range(0, len(pick), batch)]


def _gate(check: Check, what: str, force: bool, hint: str = "") -> None:
    if check.passed:
        log(f"{what}: verified — {check.message}")
        return
    if force:
        log(f"{what}: FAILED verification but written because of --force — {check.message}")
        return
    raise ExportError(f"{what} failed verification, not written: {check.message}.{hint} (--force writes it anyway, "
                      "and the model card records that)")


def _record(folder: Path, model: Any, name: str, entry: dict[str, Any]) -> None:
    """Add one build to exports.json, refresh the model card, and re-hash the manifest."""
    from polyfuse.evaluate import card

    path = folder / "exports.json"
    exports = json.loads(path.read_text()) if path.exists() else {}
    exports[name] = entry
    artifact.atomic_write_text(path, json.dumps(exports, indent=1))
    artifact.atomic_write_text(folder / "MODEL_CARD.md", card.render(model, exports))
    summary = {k: {"passed": v["verification"]["passed"], "forced": v.get("forced", False)} for k, v in exports.items()}
    artifact.refresh_manifest(folder, {"exports": summary})


def export(model_dir: str | Path, to: str = "onnx", quantize: str | None = None, calibration: str | Path | None = None,
           data: str | Path | None = None, force: bool = False, per_channel: bool = True,
           with_preprocessing: bool = False) -> dict[str, Any]:
    """Export, verify and record one build; returns its entry in exports.json."""
    from polyfuse.estimator import load

    folder = Path(model_dir)
    if artifact.ENCRYPTION in artifact.verify(folder):  # a plain model.onnx beside sealed files would leak the weights
        raise ArtifactError(f"{folder} is encrypted: export the plain model first, then run `polyfuse encrypt`")
    if with_preprocessing and to not in ("onnx", "executorch", "litert"):  # before the rows are decoded for nothing
        raise ExportError(f"--with-preprocessing exports to onnx, executorch or litert, not {to!r}")
    if with_preprocessing and quantize is not None:
        raise ExportError("--with-preprocessing builds are fp32 (int8 rounding would reach the resize and STFT "
                          "weights inside the graph); drop --quantize, or export int8 without --with-preprocessing")
    model = load(folder)
    table = verification_table(model, data)
    rows = verification_rows(model, table=table)
    batch, target = model.preprocessor.collate(rows), model.preprocessor.targets(rows)
    reference = torch_probabilities(model, batch)
    log(f"verifying on {len(rows)} validation rows, run from raw records through the shared preprocessing")
    if with_preprocessing:
        return _export_bundle(folder, model, table, rows, reference, to, force)
    if to == "torch-export":
        return _export_pt2(folder, model, rows, batch, reference, force)
    if to == "executorch":
        return _export_executorch(folder, model, rows, batch, reference, target, quantize, calibration, force)
    if to == "litert":
        return _export_litert(folder, model, rows, batch, reference, target, quantize, force)
    if to != "onnx":
        raise ExportError(f"unknown export target {to!r}; expected 'onnx', 'torch-export', 'executorch' or 'litert'")

    fp32 = folder / VARIANTS["fp32"]
    if quantize is None or not fp32.exists():
        entry = _export_fp32(folder, model, rows, batch, reference, force)
        if quantize is None:
            return entry
    if quantize not in ("dynamic", "static"):
        raise ExportError(f"unknown quantisation {quantize!r}; expected 'dynamic' or 'static'")
    return _export_int8(folder, model, rows, batch, reference, target, quantize, calibration, force, per_channel)


def _export_fp32(folder: Path, model: Any, rows: Decoded, batch: dict, reference: dict, force: bool) -> dict[str, Any]:
    fp32 = folder / VARIANTS["fp32"]
    t0 = time.perf_counter()
    tmp = temp_path(folder, fp32.name)
    try:
        write_onnx(model, example_batch(model, rows), tmp, metadata(model, folder))
        check = check_fp32(reference, onnx_probabilities(open_session(tmp), batch))
        _gate(check, "ONNX fp32", force)
        os.replace(tmp, fp32)
    finally:
        tmp.unlink(missing_ok=True)
    entry = {"format": "onnx", "opset": OPSET, "precision": "fp32", "bytes": fp32.stat().st_size,
             "verification": check.as_dict(), "forced": not check.passed, "rows": len(rows),
             "seconds": round(time.perf_counter() - t0, 2)}
    _record(folder, model, fp32.name, entry)
    return entry


def _export_int8(folder: Path, model: Any, rows: Decoded, batch: dict, reference: dict, target: dict, quantize: str,
                 calibration: str | Path | None, force: bool, per_channel: bool) -> dict[str, Any]:
    from polyfuse.deploy.quantize import quantize_static
    from polyfuse.nn.onnx_int8 import quantize_dynamic

    fp32 = folder / VARIANTS["fp32"]
    target_file = folder / VARIANTS[f"int8-{quantize}"]
    tmp = temp_path(folder, target_file.name)
    t0 = time.perf_counter()
    try:
        if quantize == "dynamic":
            quantize_dynamic(fp32, tmp, per_channel=per_channel)
        else:
            quantize_static(fp32, tmp, calibration_batches(model, calibration), per_channel=per_channel)
        session = open_session(tmp)
        check = check_int8(model, reference, onnx_probabilities(session, batch), target)
        fp32_session = open_session(fp32)
        speed = (batch1_latency(lambda b: onnx_probabilities(fp32_session, b), batch)
                 / batch1_latency(lambda b: onnx_probabilities(session, b), batch))
        if speed < 1.0:  # reported, never hidden: dynamic int8 convolutions are often slower on CPUs
            log(f"note: this int8 build runs batch-1 at {speed:.2f}x the fp32 model's speed (slower); "
                f"{'try --quantize static' if quantize == 'dynamic' else 'keep fp32 for latency'}")
        other = "static --calibration TABLE" if quantize == "dynamic" else "dynamic"
        _gate(check, f"ONNX int8 ({quantize})", force, f" Try --quantize {other}, or keep the fp32 model.")
        os.replace(tmp, target_file)
    finally:
        tmp.unlink(missing_ok=True)
    entry = {"format": "onnx", "opset": OPSET, "precision": f"int8-{quantize}", "per_channel": per_channel,
             "bytes": target_file.stat().st_size, "fp32_bytes": fp32.stat().st_size, "verification": check.as_dict(),
             "batch1_speed_vs_fp32": round(speed, 3),
             "forced": not check.passed, "rows": len(rows), "seconds": round(time.perf_counter() - t0, 2)}
    if quantize == "static":
        entry["calibration"] = str(calibration or "training table")
    _record(folder, model, target_file.name, entry)
    return entry


def _export_pt2(folder: Path, model: Any, rows: Decoded, batch: dict, reference: dict, force: bool) -> dict[str, Any]:
    """torch.export program (.pt2) for mobile/edge toolchains, loaded back and checked like ONNX."""
    import torch

    from polyfuse.deploy.onnx import ProbabilityModel

    t0 = time.perf_counter()
    example = example_batch(model, rows)
    dim = torch.export.Dim("batch", min=1, max=1 << 16)
    program = torch.export.export(ProbabilityModel(model.net, model.spec).eval(), (), kwargs={"inputs": example},
                                  dynamic_shapes={"inputs": {k: {0: dim} for k in example}})
    target = folder / PT2
    tmp = temp_path(folder, PT2)
    try:
        torch.export.save(program, str(tmp))
        loaded = load_pt2(tmp)
        with torch.inference_mode():
            got = {}
            for s in range(0, len(rows), 256):
                out = loaded(inputs={k: torch.from_numpy(v[s : s + 256]) for k, v in batch.items()})
                for name, p in zip(model.spec.outputs, out):
                    got.setdefault(name, []).append(p.numpy())
        check = check_fp32(reference, {k: np.concatenate(v) for k, v in got.items()})
        _gate(check, "torch.export (.pt2)", force)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    entry = {"format": "torch.export", "precision": "fp32", "bytes": target.stat().st_size,
             "verification": check.as_dict(), "forced": not check.passed, "rows": len(rows),
             "seconds": round(time.perf_counter() - t0, 2), "torch": torch.__version__}
    _record(folder, model, PT2, entry)
    return entry


def _export_executorch(folder: Path, model: Any, rows: Decoded, batch: dict, reference: dict, target: dict,
                       quantize: str | None, calibration: str | Path | None, force: bool) -> dict[str, Any]:
    """An XNNPACK-delegated ExecuTorch program (.pte), fp32 or int8, checked in ExecuTorch's runtime."""
    from polyfuse.deploy import pte
    from polyfuse.extras import require

    require("edge", "polyfuse export --to executorch", modules=("executorch", "torchao"))
    if quantize not in (None, "dynamic", "static"):
        raise ExportError(f"unknown quantisation {quantize!r}; expected 'dynamic' or 'static'")
    cal = calibration_batches(model, calibration) if quantize is not None else None
    tmp, entry, check = pte.export_pte(folder, model, rows, batch, reference, target, quantize, cal)
    name = PTE["fp32" if quantize is None else f"int8-{quantize}"]
    try:
        _gate(check, f"ExecuTorch {entry['precision']} (.pte)", force,
              " Try the other --quantize, or keep the fp32 program." if quantize else "")
        os.replace(tmp, folder / name)
    finally:
        tmp.unlink(missing_ok=True)
    if quantize == "static":
        entry["calibration"] = str(calibration or "training table")
    _record(folder, model, name, entry)
    return entry


def _export_litert(folder: Path, model: Any, rows: Decoded, batch: dict, reference: dict, target: dict,
                   quantize: str | None, force: bool) -> dict[str, Any]:
    """A LiteRT flatbuffer (.tflite), fp32 or with dynamic int8 weights, checked in LiteRT's interpreter."""
    from polyfuse.deploy import litert
    from polyfuse.extras import require

    require("edge", "polyfuse export --to litert", modules=("ai_edge_litert", "ai_edge_quantizer"))
    tmp, entry, check = litert.export_litert(folder, model, rows, batch, reference, target, quantize)
    name = LITERT[entry["precision"]]
    try:
        _gate(check, f"LiteRT {entry['precision']} (.tflite)", force, " Keep the fp32 build." if quantize else "")
        os.replace(tmp, folder / name)
    finally:
        tmp.unlink(missing_ok=True)
    _record(folder, model, name, entry)
    return entry


def _export_bundle(folder: Path, model: Any, table: Table, rows: Decoded, reference: dict, to: str,
                   force: bool) -> dict[str, Any]:
    """mobile/<to>/: the graph with the preprocessing inside, its contract and labels (polyfuse.deploy.mobile)."""
    from polyfuse.deploy import mobile

    from polyfuse.extras import require

    if to == "executorch":
        require("edge", "polyfuse export --to executorch", modules=("executorch", "torchao"))
    if to == "litert":
        require("edge", "polyfuse export --to litert", modules=("ai_edge_litert",))
    staging, entry, check = mobile.export_bundle(folder, model, table, rows, reference, to)
    try:
        _gate(check, f"{to} with preprocessing in the graph", force)
        name = mobile.install(staging, folder, to)
    finally:
        if staging.exists():
            import shutil

            shutil.rmtree(staging, ignore_errors=True)
    _record(folder, model, name, entry)
    return entry


def load_pt2(data: bytes | Path, path: Path | None = None) -> Any:
    """The callable module of a saved torch.export program, from its bytes (as the artifact's manifest
    checked them) or a file; ``path`` names it in errors."""
    import io

    import torch

    path = path or (data if isinstance(data, Path) else Path("model.pt2"))
    try:
        return torch.export.load(io.BytesIO(data) if isinstance(data, bytes) else str(data)).module()
    except (RuntimeError, ValueError, KeyError, OSError) as e:
        raise ArtifactError(f"{path}: not a loadable torch.export program ({e}); re-export it") from None

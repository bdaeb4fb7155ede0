"""LiteRT builds (`polyfuse export m --to litert [--quantize dynamic]`): the model as a `.tflite` flatbuffer for
Android's and iOS's LiteRT (TensorFlow Lite) interpreter, fp32 or with int8 weights, checked through LiteRT's
own interpreter on the validation rows with the same gates as ONNX.

The converter, `litert-torch`, pins typing-extensions < 4.13 (through xdsl), which the rest of polyfuse's
environment cannot share (selenium, cattrs and FastAPI's stack need newer), so it runs in a process of its
own: ``POLYFUSE_LITERT_PYTHON`` names a Python that has it (`make litert` builds `.venv-litert`, a small
environment layered on this one), else this Python when it has it. The interpreter (`ai-edge-litert`) and
the int8 quantizer (`ai-edge-quantizer`) pin nothing of the kind and live in the edge extra.

LiteRT's converter lowers fixed shapes (symbolic sizes fail in its JAX lowering), so a build takes one row
per call, with each input at the size the preprocessor collates it to; with the preprocessing inside, a clip
comes zero-padded to a fixed length (its ``__length`` says how much is sound), and pictures, which come at
their own size, are refused.
"""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from polyfuse.deploy.onnx import ExportError, batch1_latency, check_fp32, check_int8, sequence_inputs, temp_path
from polyfuse.runtime import LITERT

CONVERTER_ENV = "POLYFUSE_LITERT_PYTHON"
SIGNATURE = "serving_default"


def converter_python() -> str:
    """The Python that runs litert-torch's converter."""
    named = os.environ.get(CONVERTER_ENV)
    if named:
        if not Path(named).exists():
            raise ExportError(f"{CONVERTER_ENV}={named} does not exist; run `make litert` or point it at a Python "
                              "with litert-torch")
        return named
    if importlib.util.find_spec("litert_torch") is not None:
        return sys.executable
    raise ExportError("LiteRT's converter (litert-torch) is not installed. It pins typing-extensions < 4.13, which "
                      "polyfuse's other extras cannot share, so it lives in an environment layered on this one: "
                      f"`make litert` builds .venv-litert; then set {CONVERTER_ENV}=.venv-litert/bin/python")


def check_supported(model: Any, with_preprocessing: bool) -> None:
    varying = sequence_inputs(model)
    if varying:
        raise ExportError(f"LiteRT builds have fixed shapes, and {', '.join(map(repr, varying))} take token ids or "
                          "waveforms as long as each row; export to onnx or executorch instead")
    pictures = [n for n, c in model.spec.inputs.items() if c.type == "image"]
    if with_preprocessing and pictures:
        raise ExportError(f"LiteRT's converter cannot lower the any-size pictures that {', '.join(map(repr, pictures))} "
                          "take with the preprocessing inside (symbolic sizes fail in litert-torch 0.10); use "
                          "--to onnx or --to executorch with --with-preprocessing, or --to litert without it")


def convert(folder: Path, out: Path, with_preprocessing: bool = False) -> None:
    """Run the converter on the artifact in ``folder`` (its own process, see the module's docstring)."""
    args = [converter_python(), "-m", "polyfuse.deploy.litert_convert", str(folder), str(out)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[2]),
                                                                     os.environ.get("PYTHONPATH")]))}
    done = subprocess.run(args + (["--with-preprocessing"] if with_preprocessing else []), capture_output=True,
                          text=True, env=env)
    if done.returncode != 0 or not out.exists():
        tail = "\n".join(line for line in done.stderr.splitlines() if line.strip())[-1500:]
        raise ExportError(f"LiteRT's converter failed on {folder}:\n{tail}")


def quantize_dynamic(fp32: Path, out: Path) -> None:
    """int8 weights, float activations (ai-edge-quantizer's dynamic_wi8_afp32 recipe)."""
    from ai_edge_quantizer import quantizer, recipe

    q = quantizer.Quantizer(str(fp32))
    q.load_quantization_recipe(recipe.dynamic_wi8_afp32())
    q.quantize().export_model(str(out), overwrite=True)


def open_runner(data: bytes | Path, names: list[str],
                threads: int | None = None) -> Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]:
    """One row's arrays -> each output's values, through LiteRT's interpreter on ``threads`` threads (default:
    the interpreter's own choice); inputs cast to the file's dtypes (the converter narrows int64 to int32)."""
    from ai_edge_litert.interpreter import Interpreter

    source = {"model_content": data} if isinstance(data, bytes) else {"model_path": str(data)}
    try:
        interp = Interpreter(**source, num_threads=threads)
        runner = interp.get_signature_runner(SIGNATURE)
    except (RuntimeError, ValueError) as e:
        raise ExportError(f"LiteRT cannot load the model ({e})") from None
    dtypes = {k: v["dtype"] for k, v in runner.get_input_details().items()}
    outs = sorted(runner.get_output_details(), key=lambda k: int(k.rsplit("_", 1)[-1]))

    def run(row: dict[str, np.ndarray], keep: Any = (data, interp)) -> dict[str, np.ndarray]:
        got = runner(**{f"inputs_{k}": np.ascontiguousarray(v, dtype=dtypes[f"inputs_{k}"]) for k, v in row.items()})
        return {n: got[o] for n, o in zip(names, outs)}

    return run


def probabilities(run: Callable, names: list[str], batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Each output over ``batch``, one row per call (the build's fixed batch)."""
    rows = len(next(iter(batch.values())))
    parts = [run({k: v[i : i + 1] for k, v in batch.items()}) for i in range(rows)]
    return {n: np.concatenate([p[n] for p in parts]) for n in names}


def export_litert(folder: Path, model: Any, rows: Any, batch: dict, reference: dict, target: dict,
                  quantize: str | None) -> tuple[Path, dict[str, Any], Any]:
    """Write the build to a temporary file and check it; returns (temporary path, entry, check)."""
    check_supported(model, with_preprocessing=False)
    if quantize not in (None, "dynamic"):
        raise ExportError("LiteRT int8 here is --quantize dynamic (int8 weights, float activations): static int8 "
                          "LiteRT models take int8 inputs an app would have to quantise itself")
    names = list(model.spec.outputs)
    t0 = time.perf_counter()
    fp32 = temp_path(folder, LITERT["fp32"])
    tmp = fp32 if quantize is None else temp_path(folder, LITERT["int8-dynamic"])
    try:
        convert(folder, fp32)
        if quantize is not None:
            quantize_dynamic(fp32, tmp)
        run = open_runner(tmp, names)
        got = probabilities(run, names, batch)
        check = check_fp32(reference, got) if quantize is None else check_int8(model, reference, got, target)
        ms = 1000 * batch1_latency(lambda b: probabilities(run, names, b), batch)
    except Exception:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        if tmp != fp32:
            fp32.unlink(missing_ok=True)
    entry = {"format": "litert", "precision": "fp32" if quantize is None else "int8-dynamic", "max_batch": 1,
             "bytes": tmp.stat().st_size, "batch1_ms": round(ms, 3), "verification": check.as_dict(),
             "forced": not check.passed, "rows": len(rows), "seconds": round(time.perf_counter() - t0, 2)}
    return tmp, entry, check

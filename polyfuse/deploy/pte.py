"""ExecuTorch builds (`polyfuse export m --to executorch [--quantize static|dynamic]`): the model as a
`.pte` program for phones and embedded Linux, its operators delegated to XNNPACK, fp32 or int8 (the
XNNPACK quantizer through torchao's PT2E flow, calibrated on training rows), checked through
ExecuTorch's own runtime on the validation rows with the same gates as ONNX.

Max pools that XNNPACK would leave to ExecuTorch's portable kernels (a 1-D pool, a ceil-mode pool under a
dynamic batch) are lowered as equivalent 2-D pools for the export: each one left out split the graph into
another delegate call, and together they made the int8 program 3x slower than ONNX Runtime's at batch 1.

ExecuTorch plans memory ahead of time, so every axis needs an upper bound: batches of up to
``MAX_BATCH`` rows (or fewer where lowering narrows it; exports.json records the bound found by
trying, and larger batches run in chunks), token ids up to the input's ``max_length``, waveforms up to
``max_seconds``.
"""
from __future__ import annotations

import contextlib
import os
import time
import warnings
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from polyfuse.deploy.onnx import ExportError, ProbabilityModel, example_batch, sequence_inputs
from polyfuse.runtime import PTE

MAX_BATCH = 64


def _shapes(model: Any, example: dict[str, torch.Tensor]) -> dict[str, dict]:
    """Dynamic axes with the upper bounds ExecuTorch's memory planning needs."""
    from polyfuse.spec.inputs import hf_encoder

    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    shapes = {k: {0: batch} for k in example}
    for name in sequence_inputs(model):
        cfg = model.spec.inputs[name]
        proc = hf_encoder(cfg)._processor or {}
        bound = cfg.max_length if cfg.type == "text" else int(cfg.max_seconds * proc.get("sampling_rate", 16000))
        shapes[name] = {0: batch, 1: torch.export.Dim(f"{name}_steps", min=1, max=max(2, int(bound)))}
    return shapes


class _Pool1dAs2d(nn.Module):
    """``MaxPool1d`` over a height-1 image: XNNPACK takes max_pool2d, not max_pool1d's decomposition."""

    def __init__(self, pool: nn.MaxPool1d):
        super().__init__()
        self.kernel, self.stride = _single(pool.kernel_size), _single(pool.stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(x.unsqueeze(2), (1, self.kernel), (1, self.stride)).squeeze(2)


class _CeilPoolPadded(nn.Module):
    """A ceil-mode ``MaxPool2d`` as its input padded with -inf up to the last window, then a floor-mode pool:
    the same windows, and XNNPACK refuses ceil mode once any axis (the batch) is dynamic."""

    def __init__(self, pool: nn.MaxPool2d):
        super().__init__()
        self.kernel, self.stride = _pair(pool.kernel_size), _pair(pool.stride or pool.kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = [_ceil_pad(n, k, s) for n, k, s in zip(x.shape[-2:], self.kernel, self.stride)]  # static sizes
        if any(pads):
            x = F.pad(x, (0, pads[1], 0, pads[0]), value=float("-inf"))
        return F.max_pool2d(x, self.kernel, self.stride)


def _single(v: Any) -> int:
    return int(v[0] if isinstance(v, (tuple, list)) else v)


def _pair(v: Any) -> tuple[int, int]:
    return (int(v[0]), int(v[1])) if isinstance(v, (tuple, list)) else (int(v), int(v))


def _ceil_pad(n: int, k: int, s: int) -> int:
    """Padding after ``n`` that makes a floor-mode pool give ceil mode's windows (PyTorch's rule: the last
    window must start inside the input)."""
    out = -(-(n - k) // s) + 1
    if (out - 1) * s >= n:
        out -= 1
    return max(0, (out - 1) * s + k - n)


def _plain(pool: nn.Module) -> bool:
    padding, dilation = pool.padding, pool.dilation
    return not pool.return_indices and all(p == 0 for p in _pair(padding)) and all(d == 1 for d in _pair(dilation))


@contextlib.contextmanager
def delegable_pools(module: nn.Module) -> Iterator[None]:
    """``module``'s max pools swapped in place for the equivalents XNNPACK delegates, then put back (pools
    hold no weights, so nothing is copied)."""
    swapped: list[tuple[nn.Module, str, nn.Module]] = []
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.MaxPool1d) and _plain(child) and not child.ceil_mode:
                swapped.append((parent, name, child))
                setattr(parent, name, _Pool1dAs2d(child))
            elif isinstance(child, nn.MaxPool2d) and _plain(child) and child.ceil_mode:
                swapped.append((parent, name, child))
                setattr(parent, name, _CeilPoolPadded(child))
    try:
        yield
    finally:
        for parent, name, child in swapped:
            setattr(parent, name, child)


def use_threads(threads: int | None) -> None:
    """ExecuTorch's (process-wide) XNNPACK threadpool on ``threads`` (default: the usable CPUs). Its own
    default is every core of the machine: at batch 1 on 2 busy cores the second thread only waited
    (int8 avdigits 0.48 ms on 2 threads, 0.29 on 1)."""
    from executorch.extension.pybindings import portable_lib

    from polyfuse.threads import usable_cpus

    wanted = threads or usable_cpus()
    if portable_lib._threadpool_get_thread_count() != wanted:  # a reset while a program runs would break it
        portable_lib._unsafe_reset_threadpool(wanted)


def _quantized(program: Any, batches: list[dict[str, np.ndarray]], dynamic: bool) -> torch.nn.Module:
    """The exported graph with int8 weights and activations (XNNPACK's symmetric scheme), calibrated."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True, is_dynamic=dynamic))
    prepared = prepare_pt2e(program.module(), quantizer)
    for b in batches:
        for s in range(0, len(next(iter(b.values()))), MAX_BATCH):
            prepared(inputs={k: torch.from_numpy(v[s : s + MAX_BATCH]) for k, v in b.items()})
    return convert_pt2e(prepared)


def lower(model: Any, rows: Any, path: Path, quantize: str | None, calibration: list[dict] | None) -> None:
    """torch.export -> (int8) -> XNNPACK-delegated ExecuTorch program written to ``path``."""
    # fresh strides: a [B, 1] column collated as x[:, None] has stride 0, which ExecuTorch refuses
    example = {k: v.clone(memory_format=torch.contiguous_format) for k, v in example_batch(model, rows).items()}
    wrapper = ProbabilityModel(model.net, model.spec).eval()
    lower_module(wrapper, example, _shapes(model, example), path, quantize, calibration)


def lower_module(wrapper: torch.nn.Module, example: dict[str, torch.Tensor], shapes: dict[str, dict], path: Path,
                 quantize: str | None = None, calibration: list[dict] | None = None) -> None:
    """``wrapper(inputs=...)`` exported with ``shapes`` (bounded axes), (int8,) lowered to XNNPACK, written."""
    from executorch.exir import ExecutorchBackendConfig
    from executorch.exir.passes.sym_shape_eval_pass import ConstraintBasedSymShapeEvalPass

    edge = delegated(wrapper, example, shapes, quantize, calibration)
    # buffers sized for the axes' upper bounds (the default sizes them for the example batch)
    config = ExecutorchBackendConfig(sym_shape_eval_pass=ConstraintBasedSymShapeEvalPass())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path.write_bytes(edge.to_executorch(config).buffer)


def delegated(wrapper: torch.nn.Module, example: dict[str, torch.Tensor], shapes: dict[str, dict],
              quantize: str | None = None, calibration: list[dict] | None = None) -> Any:
    """The edge program with what XNNPACK takes delegated to it (the rest runs on ExecuTorch's portable kernels)."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    with warnings.catch_warnings(), delegable_pools(wrapper):
        warnings.simplefilter("ignore")
        program = torch.export.export(wrapper, (), kwargs={"inputs": example}, dynamic_shapes={"inputs": shapes})
        if quantize is not None:
            graph = _quantized(program, calibration or [], quantize == "dynamic")
            program = torch.export.export(graph, (), kwargs={"inputs": example}, dynamic_shapes={"inputs": shapes})
        return to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])


def open_method(path: Path, threads: int | None = None) -> Any:
    """The program's ``forward`` in ExecuTorch's runtime (the C++ one, through its Python binding)."""
    from executorch.runtime import Runtime

    use_threads(threads)
    try:
        return Runtime.get().load_program(str(path)).load_method("forward")
    except (RuntimeError, ValueError) as e:
        raise ExportError(f"{path}: ExecuTorch cannot load it ({e})") from None


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """ExecuTorch's C++ logger writes a refused resize to file descriptor 2; the probe expects refusals."""
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def largest_batch(method: Any, batch: dict[str, np.ndarray]) -> int:
    """The most rows the program's planned memory takes (<= MAX_BATCH), found by trying: the bound the
    exporter asks for can come out smaller (15 rather than 64 for avdigits' CNNs), and the program
    records no per-axis bound to read back."""
    def runs(n: int) -> bool:
        try:
            method.execute([torch.from_numpy(np.repeat(v[:1], n, axis=0)) for v in batch.values()])
            return True
        except RuntimeError:
            return False

    lo, hi = 1, MAX_BATCH
    with _quiet_stderr():
        while lo < hi:
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if runs(mid) else (lo, mid - 1)
    return lo


def probabilities(method: Any, names: list[str], batch: dict[str, np.ndarray], chunk: int) -> dict[str, np.ndarray]:
    """Each output's probabilities over ``batch`` (flattened in the graph's input order), ``chunk`` rows at
    a time (the program's largest batch)."""
    got: dict[str, list[np.ndarray]] = {}
    rows = len(next(iter(batch.values())))
    for s in range(0, rows, chunk):
        out = method.execute([torch.from_numpy(np.ascontiguousarray(v[s : s + chunk])) for v in batch.values()])
        for name, p in zip(names, out):
            got.setdefault(name, []).append(p.numpy())
    return {k: v[0] if len(v) == 1 else np.concatenate(v) for k, v in got.items()}


def export_pte(folder: Path, model: Any, rows: Any, batch: dict, reference: dict, target: dict, quantize: str | None,
               calibration: list[dict] | None) -> tuple[Path, dict[str, Any], Any]:
    """Write the build to a temporary file and check it; returns (temporary path, entry, check)."""
    from polyfuse.deploy.onnx import batch1_latency, check_fp32, check_int8, temp_path

    name = PTE["fp32" if quantize is None else f"int8-{quantize}"]
    tmp = temp_path(folder, name)
    t0 = time.perf_counter()
    try:
        lower(model, rows, tmp, quantize, calibration)
        method = open_method(tmp)
        largest = largest_batch(method, batch)
        got = probabilities(method, list(model.spec.outputs), batch, largest)
        check = check_fp32(reference, got) if quantize is None else check_int8(model, reference, got, target)
        ms = 1000 * batch1_latency(lambda b: probabilities(method, list(model.spec.outputs), b, 1), batch)
    except Exception:
        tmp.unlink(missing_ok=True)
        raise
    entry = {"format": "executorch", "delegate": "xnnpack", "precision": "fp32" if quantize is None else f"int8-{quantize}",
             "bytes": tmp.stat().st_size, "batch1_ms": round(ms, 3), "max_batch": largest,
             "verification": check.as_dict(), "forced": not check.passed, "rows": len(rows),
             "seconds": round(time.perf_counter() - t0, 2)}
    return tmp, entry, check

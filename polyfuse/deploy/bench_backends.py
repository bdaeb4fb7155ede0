"""The runtimes `polyfuse bench` compares: how each loads in-process (torch eager, ONNX Runtime
through the torch-free Runtime, the torch.export program, ExecuTorch programs) and how a fresh
process cold-starts it.
Importing this module never imports torch."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import yaml

from polyfuse import artifact
from polyfuse.runtime import LITERT, PT2, PTE, VARIANTS, listed_files

WEIGHTS = "weights.safetensors"


@dataclass
class Loaded:
    """One runtime ready to run: the model alone on collated arrays, and end to end on raw records."""

    run: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]
    predict: Callable[[list[dict], Path], Any]


@dataclass
class Backend:
    """How to load a runtime in-process and how a fresh process cold-starts it."""

    name: str
    file: Path
    load: Callable[[], Loaded]
    child: str  # Python source run by the cold-start subprocess
    child_args: dict[str, Any]


# The cold-start children time themselves from their first statement, so interpreter spawn is
# excluded; each prints one JSON line. The ONNX child goes through the torch-free Runtime only.
_CHILD_HEAD = "import time\nt0 = time.perf_counter()\nimport json, sys\na = json.loads(sys.argv[1])\n"
_CHILD_TAIL = ("t3 = time.perf_counter()\n"
               "print(json.dumps({'import_s': t1 - t0, 'load_s': t2 - t1, 'predict_s': t3 - t2,"
               " 'torch_imported': 'torch' in sys.modules}))\n")
CHILD_ONNX = _CHILD_HEAD + """\
from polyfuse.runtime import Runtime
t1 = time.perf_counter()
rt = Runtime(a['folder'], a['variant'], a['threads'])
t2 = time.perf_counter()
rt.predict([a['record']], folder=a['record_folder'])
""" + _CHILD_TAIL
CHILD_TORCH = _CHILD_HEAD + """\
import torch, polyfuse, polyfuse.estimator
torch.set_num_threads(a['threads'])
t1 = time.perf_counter()
model = polyfuse.load(a['folder'])
t2 = time.perf_counter()
model.predict([a['record']], folder=a['record_folder'])
""" + _CHILD_TAIL
CHILD_PT2 = _CHILD_HEAD + """\
import torch
from pathlib import Path
from polyfuse.deploy.bench_backends import load_pt2_runtime
torch.set_num_threads(a['threads'])
t1 = time.perf_counter()
loaded = load_pt2_runtime(Path(a['folder']))
t2 = time.perf_counter()
loaded.predict([a['record']], Path(a['record_folder']))
""" + _CHILD_TAIL


CHILD_PTE = _CHILD_HEAD + """\
from pathlib import Path
from polyfuse.deploy.bench_backends import load_pte_runtime
t1 = time.perf_counter()
loaded = load_pte_runtime(Path(a['folder']), a['file'], a['threads'])
t2 = time.perf_counter()
loaded.predict([a['record']], Path(a['record_folder']))
""" + _CHILD_TAIL


CHILD_LITERT = CHILD_PTE.replace("load_pte_runtime", "load_litert_runtime")


def load_torch_runtime(folder: Path) -> Loaded:
    """torch eager from weights.safetensors, through polyfuse.load (verifies the manifest)."""
    import torch

    from polyfuse.deploy.onnx import ProbabilityModel
    from polyfuse.estimator import load

    model = load(folder)
    wrapper = ProbabilityModel(model.net, model.spec).eval()
    names = list(model.spec.outputs)

    def run(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with torch.inference_mode():
            out = wrapper({k: torch.from_numpy(v) for k, v in batch.items()})
        return {n: p.numpy() for n, p in zip(names, out)}

    return Loaded(run, lambda records, base: model.predict(records, folder=base))


def load_onnx_runtime(folder: Path, variant: str, threads: int) -> Loaded:
    """ONNX Runtime through the torch-free ``polyfuse.runtime.Runtime``."""
    from polyfuse.runtime import Runtime

    rt = Runtime(folder, variant, threads)
    return Loaded(rt.run_arrays, lambda records, base: rt.predict(records, folder=base))


def _with_preprocessing(folder: Path, program: str, run_on: Callable[[Any, list[str]], Callable]) -> Loaded:
    """A program file of the artifact with its preprocessing; read and verified through the manifest like the
    other runtimes (a program must not get a cheaper load for free). ``run_on(opened, output names)``
    returns the function from collated arrays to probabilities."""
    from polyfuse.preprocess.pipeline import Preprocessor
    from polyfuse.preprocess.targets import decode_outputs
    from polyfuse.spec.schema import load_spec

    opened = artifact.open_artifact(folder, prefetch=("spec.yaml", "preprocess.json", program))
    spec, _ = load_spec(yaml.safe_load(opened.read("spec.yaml")))
    pre = Preprocessor.from_json(spec, opened.text("preprocess.json"))
    run = run_on(opened, list(spec.outputs))

    def predict(records: list[dict], base: Path) -> Any:
        batch, _ = pre.transform(records, base)
        return decode_outputs(spec, pre.state, run(batch))

    return Loaded(run, predict)


def load_pt2_runtime(folder: Path) -> Loaded:
    """The torch.export program with the artifact's preprocessing."""
    import torch

    from polyfuse.deploy.exporter import load_pt2

    def run_on(opened: Any, names: list[str]) -> Callable:
        module = load_pt2(opened.read(PT2), folder / PT2)

        def run(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            with torch.inference_mode():
                out = module(inputs={k: torch.from_numpy(v) for k, v in batch.items()})
            return {n: p.numpy() for n, p in zip(names, out)}

        return run

    return _with_preprocessing(folder, PT2, run_on)


def load_pte_runtime(folder: Path, name: str, threads: int | None = None) -> Loaded:
    """An ExecuTorch program (.pte) in ExecuTorch's runtime on ``threads`` threads, batches cut to the largest
    it was planned for."""
    import json

    from executorch.runtime import Runtime

    from polyfuse.deploy.pte import probabilities, use_threads

    use_threads(threads)

    def run_on(opened: Any, names: list[str]) -> Callable:
        data = opened.read(name)  # the checked bytes; the program points into them, so they live with it
        program = Runtime.get().load_program(data)
        method = program.load_method("forward")
        largest = json.loads(opened.read("exports.json"))[name]["max_batch"]

        def run(batch: dict[str, np.ndarray], keep: tuple = (data, program)) -> dict[str, np.ndarray]:
            return probabilities(method, names, batch, largest)

        return run

    return _with_preprocessing(folder, name, run_on)


def load_litert_runtime(folder: Path, name: str, threads: int | None = None) -> Loaded:
    """A LiteRT flatbuffer (.tflite) in LiteRT's interpreter on ``threads`` threads, one row per call (its fixed
    batch)."""
    from polyfuse.deploy.litert import open_runner, probabilities

    def run_on(opened: Any, names: list[str]) -> Callable:
        one = open_runner(opened.read(name), names, threads)
        return lambda batch: probabilities(one, names, batch)

    return _with_preprocessing(folder, name, run_on)


def backends(folder: Path, threads: int) -> list[Backend]:
    """The runtimes present in the artifact, torch eager first (the reference for speed-ups)."""
    found = []
    common = {"folder": str(folder.resolve()), "threads": threads}
    listed = listed_files(folder)  # what is present means what the manifest lists
    if WEIGHTS in listed:
        found.append(Backend("torch", folder / WEIGHTS, lambda: load_torch_runtime(folder), CHILD_TORCH, common))
    for variant, name in VARIANTS.items():
        if name in listed:
            found.append(Backend(f"onnx-{variant}", folder / name,
                                 lambda v=variant: load_onnx_runtime(folder, v, threads),
                                 CHILD_ONNX, {**common, "variant": variant}))
    if PT2 in listed:
        found.append(Backend("torch-export", folder / PT2, lambda: load_pt2_runtime(folder), CHILD_PT2, common))
    for precision, name in PTE.items():
        if name in listed:
            found.append(Backend(f"executorch-{precision}", folder / name, lambda n=name: load_pte_runtime(folder, n, threads),
                                 CHILD_PTE, {**common, "file": name}))
    for precision, name in LITERT.items():
        if name in listed:
            found.append(Backend(f"litert-{precision}", folder / name, lambda n=name: load_litert_runtime(folder, n, threads),
                                 CHILD_LITERT, {**common, "file": name}))
    return found

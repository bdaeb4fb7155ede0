"""The runtimes `polyfuse bench` compares: how each loads in-process (torch eager, ONNX Runtime
through the torch-free Runtime, the torch.export program) and how a fresh process cold-starts it.
Importing this module never imports torch."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import yaml

from polyfuse import artifact
from polyfuse.runtime import PT2, VARIANTS, listed_files

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


def load_pt2_runtime(folder: Path) -> Loaded:
    """The torch.export program with the artifact's preprocessing (verified like the others)."""
    import torch

    from polyfuse.deploy.exporter import load_pt2
    from polyfuse.preprocess.pipeline import Preprocessor
    from polyfuse.preprocess.targets import decode_outputs
    from polyfuse.spec.schema import load_spec

    # verified and read through the manifest like the other runtimes: pt2 must not get a cheaper load for free
    opened = artifact.open_artifact(folder, prefetch=("spec.yaml", "preprocess.json", PT2))
    spec, _ = load_spec(yaml.safe_load(opened.read("spec.yaml")))
    pre = Preprocessor.from_json(spec, opened.text("preprocess.json"))
    module = load_pt2(opened.read(PT2), folder / PT2)
    names = list(spec.outputs)

    def run(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with torch.inference_mode():
            out = module(inputs={k: torch.from_numpy(v) for k, v in batch.items()})
        return {n: p.numpy() for n, p in zip(names, out)}

    def predict(records: list[dict], base: Path) -> Any:
        batch, _ = pre.transform(records, base)
        return decode_outputs(spec, pre.state, run(batch))

    return Loaded(run, predict)


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
    return found

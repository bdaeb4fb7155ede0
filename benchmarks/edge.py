"""To the phone, figures from one run (the edge issue's targets): distillation and pruning.

    .venv/bin/python benchmarks/edge.py [--parts distill prune graph] [--sets mvsa zhtext] [--prune-set avdigits] [--rows 100]

Distillation:
For each real set (../shared/data), no hand edits:
1. the teacher: `polyfuse init` (medium, the zoo's pretrained encoders beside the from-scratch ones, the
   ensemble) -> train;
2. the student: `polyfuse distill TEACHER` (init's fast preset on the same table, the teacher's softened
   outputs mixed with the labels); the same fast spec trained on the labels alone beside it;
3. test accuracy of all three (target: student >= teacher - 1.5 points), the artifacts' weight files'
   sizes (target: the student >= 10x smaller) and batch-1 latency of each exported fp32 model in the
   torch-free runtime on ``--rows`` test records (target: the student >= 10x faster), interleaved.

Pruning, on ``--prune-set`` (avdigits): init's fast spec trained, then `polyfuse compress --prune 0.5`;
MACs per row and parameters before/after (target >= 50 % fewer MACs), test accuracy of both (target
<= 1 point lost), both exported to fp32 ONNX and timed at batch 1 in the torch-free runtime on
``--rows`` test records, interleaved (target: the pruned one >= 1.4x faster), end to end from records and
the model alone on preprocessed rows (on 1 thread: what pruning changes).

ExecuTorch and LiteRT, on the unpruned model: fp32 and static int8 .pte, fp32 and dynamic int8 .tflite
(LiteRT's interpreter; its converter in POLYFUSE_LITERT_PYTHON, `make litert`) and static int8 ONNX, their parity gates,
file sizes and batch-1 latency of the model alone on preprocessed rows (ONNX Runtime on one thread,
ExecuTorch with its default threadpool), interleaved
(target: int8 .pte within 1.5x of int8 ONNX Runtime).

Preprocessing in the graph, on ``--prune-set`` (init's fast spec): `polyfuse export --with-preprocessing`
beside the plain fp32 ONNX export; both fed the same decoded pictures (RGB uint8) and waveforms, one
record at a time, interleaved: the torch-free runtime (numpy/Pillow preprocessing, then ONNX Runtime)
against the bundle's graph alone in ONNX Runtime, both on one thread (target: the graph <= the numpy path).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import pandas as pd
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DATA, cli, interleaved_ms  # noqa: E402


def accuracy(model: Path, name: str, tmp: Path) -> float:
    cli("evaluate", model, DATA / name / "test.csv", "--out", tmp / f"{model.name}.json")
    return json.loads((tmp / f"{model.name}.json").read_text())["outputs"]["label"]["accuracy"]


def weight_mb(model: Path) -> float:
    return sum(p.stat().st_size for p in model.glob("weights*.safetensors")) / 2**20


def run_set(name: str, tmp: Path, rows: int) -> dict:
    folder = DATA / name
    teacher, student, alone = tmp / f"{name}-teacher", tmp / f"{name}-student", tmp / f"{name}-labels"
    spec = yaml.safe_load(cli("init", folder / "train.csv", "--target", "label").stdout)
    spec["data"]["train"] = str(folder / "train.csv")
    (tmp / f"{name}.yaml").write_text(yaml.safe_dump(spec))
    cli("train", tmp / f"{name}.yaml", "--out", teacher, "--quiet")
    cli("distill", teacher, "--out", student, "--quiet")
    fast = yaml.safe_load(cli("init", folder / "train.csv", "--target", "label", "--preset", "fast").stdout)
    fast["data"]["train"] = str(folder / "train.csv")
    (tmp / f"{name}-fast.yaml").write_text(yaml.safe_dump(fast))
    cli("train", tmp / f"{name}-fast.yaml", "--out", alone, "--quiet")
    out = {"set": name, **{k: accuracy(m, name, tmp) for k, m in (("teacher", teacher), ("student", student),
                                                                   ("labels alone", alone))}}
    out["teacher_mb"], out["student_mb"] = weight_mb(teacher), weight_mb(student)
    return {**out, **batch1_ms({"teacher": teacher, "student": student}, folder, rows)}


def batch1_ms(models: dict[str, Path], folder: Path, rows: int) -> dict[str, float]:
    """Each model exported to fp32 ONNX, then timed at batch 1 in the torch-free runtime, interleaved."""
    from polyfuse.runtime import Runtime

    for m in models.values():
        cli("export", m, "--data", folder / "test.csv")
    records = pd.read_csv(folder / "test.csv").head(rows).drop(columns=["label"]).to_dict("records")
    runtimes = {k: Runtime(m) for k, m in models.items()}
    return {f"{k}_ms": v for k, v in interleaved_ms(
        {k: (lambda r, rt=rt: rt.predict_proba([r], folder=folder)) for k, rt in runtimes.items()},
        records, rounds=3).items()}


def model_ms(models: dict[str, Path], folder: Path, rows: int) -> dict[str, float]:
    """fp32 ONNX at batch 1 on 1 thread, the model alone on preprocessed rows (what pruning changes;
    batch1_ms's end-to-end figure also holds the preprocessing, which it does not), interleaved."""
    from polyfuse.runtime import Runtime

    records = pd.read_csv(folder / "test.csv").head(rows).drop(columns=["label"]).to_dict("records")
    runtimes = {k: Runtime(m, "fp32", 1) for k, m in models.items()}
    pre = next(iter(runtimes.values())).preprocessor
    singles = [pre.transform([r], folder)[0] for r in records]
    return {f"{k}_model_ms": v for k, v in interleaved_ms(
        {k: (lambda b, rt=rt: rt.run_arrays(b)) for k, rt in runtimes.items()}, singles, rounds=3).items()}


def prune_set(name: str, tmp: Path, rows: int) -> dict:
    folder = DATA / name
    full, small = tmp / f"{name}-full", tmp / f"{name}-pruned"
    spec = yaml.safe_load(cli("init", folder / "train.csv", "--target", "label", "--preset", "fast").stdout)
    spec["data"]["train"], spec["data"]["test"] = str(folder / "train.csv"), str(folder / "test.csv")
    (tmp / f"{name}-prune.yaml").write_text(yaml.safe_dump(spec))
    cli("train", tmp / f"{name}-prune.yaml", "--out", full, "--quiet")
    cli("compress", full, "--prune", "0.5", "--out", small, "--max-loss", "100")  # the target is judged here
    p = json.loads((small / "metrics.json").read_text())["pruning"]
    out = {"macs": p["macs_per_row"], "parameters": p["parameters"], "left_whole": p["left_whole"],
           "full": accuracy(full, name, tmp), "pruned": accuracy(small, name, tmp)}
    out.update(batch1_ms({"full": full, "pruned": small}, folder, rows))
    out.update(model_ms({"full": full, "pruned": small}, folder, rows))
    out["executorch"] = executorch_figures(full, folder, rows)
    return out


def executorch_figures(model: Path, folder: Path, rows: int) -> dict:
    """fp32 and static int8 .pte beside static int8 ONNX: sizes, parity, batch-1 latency of the model alone on
    preprocessed rows (interleaved), in ExecuTorch's runtime and in ONNX Runtime."""
    from polyfuse.deploy.bench_backends import backends
    from polyfuse.runtime import Runtime

    cli("export", model, "--quantize", "static", "--data", folder / "test.csv")
    for extra in ([], ["--quantize", "static"]):
        cli("export", model, "--to", "executorch", *extra, "--data", folder / "test.csv")
    for extra in ([], ["--quantize", "dynamic"]):  # the converter: POLYFUSE_LITERT_PYTHON (`make litert`)
        cli("export", model, "--to", "litert", *extra, "--data", folder / "test.csv")
    exports = json.loads((model / "exports.json").read_text())
    found = {b.name: b for b in backends(model, 1)}
    runs = {"pte-fp32": found["executorch-fp32"].load().run, "pte-int8": found["executorch-int8-static"].load().run,
            "tflite-fp32": found["litert-fp32"].load().run, "tflite-int8": found["litert-int8-dynamic"].load().run,
            "onnx-int8": Runtime(model, "int8-static", 1).run_arrays}
    records = pd.read_csv(folder / "test.csv").head(rows).drop(columns=["label"]).to_dict("records")
    pre = Runtime(model).preprocessor
    singles = [pre.transform([r], folder)[0] for r in records]
    ms = interleaved_ms({k: (lambda b, f=f: f(b)) for k, f in runs.items()}, singles, rounds=3)
    files = {"pte-fp32": "model.pte", "pte-int8": "model.int8-static.pte", "tflite-fp32": "model.tflite",
             "tflite-int8": "model.int8-dynamic.tflite", "onnx-int8": "model.int8-static.onnx"}
    return {k: {"ms": ms[k], "kb": exports[f]["bytes"] / 1024, "passed": exports[f]["verification"]["passed"]}
            for k, f in files.items()}


def graph_set(name: str, tmp: Path, rows: int) -> dict:
    """End-to-end batch-1 ms from decoded inputs: numpy preprocessing + ONNX vs the graph with preprocessing."""
    import numpy as np

    from polyfuse.data.io import read_table
    from polyfuse.deploy import device_graph
    from polyfuse.estimator import load
    from polyfuse.preprocess.pipeline import decode_table
    from polyfuse.runtime import Runtime, open_session

    folder, model_dir = DATA / name, tmp / f"{name}-graph"
    spec = yaml.safe_load(cli("init", folder / "train.csv", "--target", "label", "--preset", "fast").stdout)
    spec["data"]["train"] = str(folder / "train.csv")
    (tmp / f"{name}-graph.yaml").write_text(yaml.safe_dump(spec))
    cli("train", tmp / f"{name}-graph.yaml", "--out", model_dir, "--quiet")
    cli("export", model_dir, "--data", folder / "test.csv")
    cli("export", model_dir, "--with-preprocessing", "--data", folder / "test.csv")
    model, table = load(model_dir), read_table(folder / "test.csv")
    table.columns = {c: v[:rows] for c, v in table.columns.items()}
    table.rows = table.rows[:rows]
    decoded = decode_table(model.spec, table, with_targets=False)
    device = [device_graph.device_row(model, decoded, i, device_graph.decode_pixels(model, table, i))
              for i in range(len(decoded))]
    records = []
    for i, row in enumerate(device):  # the same decoded values, as records the runtime preprocesses
        records.append({model.spec.column(n): row[n][0] if c.type == "image" else decoded.inputs[n][i]
                        for n, c in model.spec.inputs.items()})
    runtime, session = Runtime(model_dir, threads=1), open_session(model_dir / "mobile/onnx/model.onnx", threads=1)
    pairs = list(zip(records, device))
    ms = interleaved_ms({"numpy+onnx": lambda p: runtime.predict_proba([p[0]]),
                         "graph": lambda p: session.run(None, p[1])}, pairs, rounds=3)
    entry = json.loads((model_dir / "exports.json").read_text())["mobile/onnx/model.onnx"]
    agree = float(np.mean([runtime.predict_proba([r])["label"].argmax() == session.run(None, d)[0].argmax()
                           for r, d in pairs]))
    return {**ms, "passed": entry["verification"]["passed"], "gaps": entry["verification"]["feature_gaps"],
            "agree": agree, "kb": entry["bytes"] / 1024}


def print_graph(name: str, r: dict) -> None:
    ratio = r["graph"] / r["numpy+onnx"]
    print("\n| set | numpy preprocessing + ONNX, batch-1 ms | graph with preprocessing, batch-1 ms | ratio (target <= 1) "
          "| top-1 agreement | verification | feature gaps |\n| --- | --- | --- | --- | --- | --- | --- |")
    print(f"| {name} | {r['numpy+onnx']:.3f} | {r['graph']:.3f} | {ratio:.2f}x ({'PASS' if ratio <= 1 else 'FAIL'}) | "
          f"{r['agree']:.2%} | {'pass' if r['passed'] else 'FAIL'} | {r['gaps']} |", flush=True)


def print_prune(name: str, r: dict) -> None:
    (m0, m1), (p0, p1) = r["macs"], r["parameters"]
    fewer, lost, speed = 1 - m1 / m0, round(100 * (r["full"] - r["pruned"]), 6), r["full_ms"] / r["pruned_ms"]
    print("| set | MACs per row before / after (target >= 50 % fewer) | parameters | test accuracy before / after "
          "(target <= 1 pt lost) | ONNX batch-1 ms before / after, end to end (target >= 1.4x); model alone | left whole |")
    print("| --- | --- | --- | --- | --- | --- |")
    print(f"| {name} | {m0:,} / {m1:,} = {fewer:.0%} fewer ({'PASS' if fewer >= 0.5 else 'FAIL'}) | {p0:,} / {p1:,} | "
          f"{r['full']:.4f} / {r['pruned']:.4f} = {lost:+.1f} pt lost ({'PASS' if lost <= 1 else 'FAIL'}) | "
          f"{r['full_ms']:.2f} / {r['pruned_ms']:.2f} = {speed:.2f}x ({'PASS' if speed >= 1.4 else 'FAIL'}); model "
          f"alone {r['full_model_ms']:.3f} / {r['pruned_model_ms']:.3f} = {r['full_model_ms'] / r['pruned_model_ms']:.2f}x | "
          f"{', '.join(r['left_whole']) or '-'} |", flush=True)
    e = r["executorch"]
    ratio = e["pte-int8"]["ms"] / e["onnx-int8"]["ms"]
    print("\n| build | parity | size KB | batch-1 ms (model alone; every runtime on 1 thread) |\n| --- | --- | --- | --- |")
    for k, v in e.items():
        print(f"| {k} | {'pass' if v['passed'] else 'FAIL'} | {v['kb']:.0f} | {v['ms']:.3f} |")
    print(f"int8 .pte / int8 ONNX Runtime batch-1 = {ratio:.2f}x (target <= 1.5x: {'PASS' if ratio <= 1.5 else 'FAIL'})",
          flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", nargs="*", default=["mvsa", "zhtext"])
    parser.add_argument("--rows", type=int, default=100)
    parser.add_argument("--parts", nargs="*", default=["distill", "prune", "graph"], choices=["distill", "prune", "graph"])
    parser.add_argument("--prune-set", default="avdigits")
    args = parser.parse_args()
    if "prune" in args.parts:
        if (DATA / args.prune_set / "train.csv").exists():
            with tempfile.TemporaryDirectory() as t:
                print_prune(args.prune_set, prune_set(args.prune_set, Path(t), args.rows))
        else:
            print(f"{args.prune_set}: absent ({DATA / args.prune_set}); pruning skipped")
    if "graph" in args.parts and (DATA / args.prune_set / "train.csv").exists():
        with tempfile.TemporaryDirectory() as t:
            print_graph(args.prune_set, graph_set(args.prune_set, Path(t), args.rows))
    if "distill" not in args.parts:
        return
    print("| set | teacher acc | student acc (distilled) | same fast spec, labels alone | student - teacher "
          "(target >= -1.5 pt) | weights MB teacher / student (target >= 10x) | batch-1 ms teacher / student "
          "(target >= 10x) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory() as t:
        for name in args.sets:
            if not (DATA / name / "train.csv").exists():
                print(f"| {name} | absent ({DATA / name}) | | | | | |")
                continue
            r = run_set(name, Path(t), args.rows)
            gap = 100 * (r["student"] - r["teacher"])
            size, speed = r["teacher_mb"] / r["student_mb"], r["teacher_ms"] / r["student_ms"]
            print(f"| {name} | {r['teacher']:.4f} | {r['student']:.4f} | {r['labels alone']:.4f} | {gap:+.1f} "
                  f"({'PASS' if gap >= -1.5 else 'FAIL'}) | {r['teacher_mb']:.1f} / {r['student_mb']:.1f} = "
                  f"{size:.0f}x ({'PASS' if size >= 10 else 'FAIL'}) | {r['teacher_ms']:.1f} / {r['student_ms']:.1f} = "
                  f"{speed:.1f}x ({'PASS' if speed >= 10 else 'FAIL'}) |", flush=True)


if __name__ == "__main__":
    main()

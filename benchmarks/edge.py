"""To the phone, figures from one run (the edge issue's targets); so far: distillation.

    .venv/bin/python benchmarks/edge.py [--sets mvsa zhtext] [--rows 100]

For each real set (../shared/data), no hand edits:
1. the teacher: `polyfuse init` (medium, the zoo's pretrained encoders beside the from-scratch ones, the
   ensemble) -> train;
2. the student: `polyfuse distill TEACHER` (init's fast preset on the same table, the teacher's softened
   outputs mixed with the labels); the same fast spec trained on the labels alone beside it;
3. test accuracy of all three (target: student >= teacher - 1.5 points), the artifacts' weight files'
   sizes (target: the student >= 10x smaller) and batch-1 latency of each exported fp32 model in the
   torch-free runtime on ``--rows`` test records (target: the student >= 10x faster), interleaved.
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
    from polyfuse.runtime import Runtime

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
    for m in (teacher, student):
        cli("export", m, "--data", folder / "test.csv")
    out["teacher_mb"], out["student_mb"] = weight_mb(teacher), weight_mb(student)
    records = pd.read_csv(folder / "test.csv").head(rows).drop(columns=["label"]).to_dict("records")
    runtimes = {"teacher": Runtime(teacher), "student": Runtime(student)}
    out.update({f"{k}_ms": v for k, v in interleaved_ms(
        {k: (lambda r, rt=rt: rt.predict_proba([r], folder=folder)) for k, rt in runtimes.items()},
        records, rounds=3).items()})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", nargs="*", default=["mvsa", "zhtext"])
    parser.add_argument("--rows", type=int, default=100)
    args = parser.parse_args()
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

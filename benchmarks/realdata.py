"""Real tables with no hand edits: `polyfuse init` -> `train` -> `evaluate`, each beside a linear
baseline measured in the same run (char+word TF-IDF + logistic regression on the text columns,
as in ../shared/data/README.md), the ensemble's members and the floor (test accuracy at least the best
linear member's less half a point), plus the speed targets of `init` and the image encoder.

    .venv/bin/python benchmarks/realdata.py [--sets mvsa zhtext avdigits] [--threads N]

Every figure comes from this one run; targets are printed beside each and judged PASS/FAIL.
Sets that are absent are skipped with a message.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DATA, cli  # noqa: E402
TEXT = {"mvsa": ["text"], "zhtext": ["text", "keywords"], "avdigits": []}  # what the TF-IDF baseline reads


def tfidf_baseline(name: str) -> float | None:
    """Char 1-2 (CJK) / char_wb 2-5 + word 1-2 TF-IDF + logistic regression on the text columns."""
    from scipy.sparse import hstack
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    columns = TEXT[name]
    if not columns:
        return None
    train, test = (pd.read_csv(DATA / name / f"{p}.csv") for p in ("train", "test"))
    join = lambda f: f[columns].fillna("").astype(str).agg(" ".join, axis=1)  # noqa: E731
    cjk = name == "zhtext"
    vecs = [TfidfVectorizer(analyzer="char", ngram_range=(1, 2), sublinear_tf=True, min_df=1)] if cjk else [
        TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True, min_df=2),
        TfidfVectorizer(analyzer="word", ngram_range=(1, 2), sublinear_tf=True, min_df=1)]
    x_train = hstack([v.fit_transform(join(train)) for v in vecs]).tocsr()
    x_test = hstack([v.transform(join(test)) for v in vecs]).tocsr()
    clf = LogisticRegression(C=10.0, max_iter=3000).fit(x_train, train["label"].astype(str))
    return float((clf.predict(x_test) == test["label"].astype(str)).mean())


def run_set(name: str, tmp: Path) -> dict:
    folder = DATA / name
    t = time.perf_counter()
    spec_text = cli("init", folder / "train.csv", "--target", "label").stdout
    init_s = time.perf_counter() - t
    (tmp / f"{name}.yaml").write_text(spec_text)
    out = tmp / name
    t = time.perf_counter()
    cli("train", tmp / f"{name}.yaml", "--out", out, "--quiet")
    wall = time.perf_counter() - t
    cli("evaluate", out, folder / "test.csv", "--out", tmp / f"{name}.json")
    result = json.loads((tmp / f"{name}.json").read_text())["outputs"]["label"]
    metrics = json.loads((out / "metrics.json").read_text())
    history = json.loads((out / "history.json").read_text())
    return {"set": name, "accuracy": result["accuracy"], "f1_macro": result["f1_macro"], "init_s": init_s,
            "train_wall_s": wall, "train_s": metrics["train_seconds"], "epochs": len(history),
            "rows_per_s": float(np.median([h["rows_per_s"] for h in history])),
            "baseline_s": metrics.get("baseline", {}).get("seconds", float("nan")),
            "own_baseline": metrics.get("baseline", {}), "warnings": metrics.get("baseline_warnings", []),
            "ensemble": metrics.get("ensemble", {}),
            "tfidf": tfidf_baseline(name), "spec": spec_text}


def best_preset(name: str, limit: float, tmp: Path) -> dict:
    """`polyfuse init --preset best` with train.time_limit ``limit``: the run's own clock against the limit
    (target within 10 %), the wall time of the whole command, and the test accuracy it reaches."""
    import yaml

    folder = DATA / name
    spec = yaml.safe_load(cli("init", folder / "train.csv", "--target", "label", "--preset", "best").stdout)
    spec["data"]["train"] = str(folder / "train.csv")
    spec["train"]["time_limit"] = limit
    (tmp / f"{name}-best.yaml").write_text(yaml.safe_dump(spec))
    out = tmp / f"{name}-best"
    t = time.perf_counter()
    cli("train", tmp / f"{name}-best.yaml", "--out", out, "--quiet")
    wall = time.perf_counter() - t
    cli("evaluate", out, folder / "test.csv", "--out", tmp / f"{name}-best.json")
    metrics = json.loads((out / "metrics.json").read_text())
    return {"set": name, "limit": limit, "run_s": metrics["total_seconds"], "wall_s": wall,
            "skipped": metrics.get("time_limit", {}).get("skipped", []),
            "networks": metrics.get("ensemble", {}).get("networks", []),
            "accuracy": json.loads((tmp / f"{name}-best.json").read_text())["outputs"]["label"]["accuracy"]}


def mix_latency(name: str, model_dir: Path, tmp: Path, rows: int = 100) -> dict:
    """Batch-1 latency in the torch-free runtime (ONNX Runtime, fp32) of the saved ensemble against the same
    network alone (a copy with the mix's weight all on the network, so its graph has no member path),
    interleaved rounds over ``rows`` test records."""
    import shutil

    import polyfuse
    from common import interleaved_ms
    from polyfuse.deploy.exporter import export
    from polyfuse.runtime import Runtime

    model = polyfuse.load(model_dir)
    if model.net.members is None or not model.net.members.active:
        return {"set": name, "skipped": "no ensemble in this model"}
    alone_dir = tmp / f"{name}-network-alone"
    shutil.rmtree(alone_dir, ignore_errors=True)
    with __import__("torch").no_grad():
        model.net.members.weight.zero_()
        model.net.members.weight[:, 0] = 1.0
    model.net.members.active = False
    model.save(alone_dir)
    for folder in (model_dir, alone_dir):
        export(folder, data=DATA / name / "test.csv")
    records = pd.read_csv(DATA / name / "test.csv").head(rows).drop(columns=["label"]).to_dict("records")
    runtimes = {"ensemble": Runtime(model_dir), "network alone": Runtime(alone_dir)}
    folder = DATA / name
    ms = interleaved_ms({k: (lambda r, rt=rt: rt.predict_proba([r], folder=folder)) for k, rt in runtimes.items()},
                        records, rounds=3)
    return {"set": name, **ms, "ratio": ms["ensemble"] / ms["network alone"]}


def init_speed(tmp: Path, rows: int = 50_000) -> float:
    """`polyfuse init` on a 50k-row table of image paths, text, numbers and categories."""
    mvsa = pd.read_csv(DATA / "mvsa" / "train.csv") if (DATA / "mvsa").exists() else None
    rng = np.random.default_rng(0)
    if mvsa is not None:
        big = mvsa.sample(rows, replace=True, random_state=0).reset_index(drop=True)
        big["image"] = [str(DATA / "mvsa" / p) for p in big["image"]]
    else:
        big = pd.DataFrame({"text": [f"row {i} says {rng.integers(100)}" for i in range(rows)],
                            "label": rng.choice(["a", "b"], rows)})
    big["amount"] = rng.normal(size=rows)
    big["shop"] = rng.choice(["north", "south", "east"], rows)
    big.to_csv(tmp / "big.csv", index=False)
    t = time.perf_counter()
    cli("init", tmp / "big.csv", "--target", "label")
    return time.perf_counter() - t


def image_speed(spec_text: str, tmp: Path) -> float | None:
    """Rows/s of the default image encoder alone at init's chosen size (mvsa photos, 2 epochs)."""
    import yaml

    spec = yaml.safe_load(spec_text)
    image = next((k for k, v in spec["inputs"].items() if v["type"] == "image"), None)
    if image is None:
        return None
    spec["inputs"] = {image: spec["inputs"][image]}
    spec["train"].update(epochs=2, early_stopping=None)
    spec["data"].pop("test", None)
    (tmp / "img.yaml").write_text(yaml.safe_dump(spec))
    cli("train", tmp / "img.yaml", "--out", tmp / "img", "--quiet")
    history = json.loads((tmp / "img" / "history.json").read_text())
    return float(max(h["rows_per_s"] for h in history))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sets", nargs="*", default=["mvsa", "zhtext", "avdigits"])
    parser.add_argument("--best", default="zhtext", help="set for the best preset under a time limit ('' skips)")
    parser.add_argument("--best-limit", type=float, default=300.0, help="its train.time_limit, seconds")
    parser.add_argument("--latency", nargs="*", default=["mvsa", "zhtext"],
                        help="sets whose ensemble's batch-1 latency is timed against the network alone")
    args = parser.parse_args()
    # the ensemble issue's targets (25); the floor: test accuracy >= the best linear member's - 0.5 point
    targets = {"mvsa": lambda r: r["accuracy"] >= 0.69, "avdigits": lambda r: r["accuracy"] >= 0.99,
               "zhtext": lambda r: r["accuracy"] >= 0.605}
    rows = []
    with tempfile.TemporaryDirectory() as tmp_:
        tmp = Path(tmp_)
        for name in args.sets:
            if not (DATA / name / "train.csv").exists():
                print(f"{name}: skipped, {DATA / name} is absent")
                continue
            r = run_set(name, tmp)
            rows.append(r)
            print(f"\n== {name}: init's spec ==\n{r['spec']}")
            for w in r["warnings"]:
                print(f"  baseline warning: {w}")
        latency = [mix_latency(n, tmp / n, tmp) for n in args.latency if (tmp / n).exists()]
        best = (best_preset(args.best, args.best_limit, tmp)
                if args.best and (DATA / args.best / "train.csv").exists() else None)
        big_s = init_speed(tmp)
        mvsa = next((r for r in rows if r["set"] == "mvsa"), None)
        img = image_speed(mvsa["spec"], tmp) if mvsa else None
    print("\n| set | init -> train -> evaluate (test acc) | macro-F1 | TF-IDF+LR (same run) | ratio | target | "
          "train s (epochs) | baseline fit s (share of train) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        tf = r["tfidf"]
        ratio = f"{r['accuracy'] / tf:.3f}x" if tf else "-"
        verdict = "PASS" if targets[r["set"]](r) else "FAIL"
        goal = {"mvsa": ">= 0.69", "zhtext": ">= 0.605", "avdigits": ">= 0.99"}[r["set"]]
        print(f"| {r['set']} | {r['accuracy']:.4f} | {r['f1_macro']:.4f} | {tf if tf is None else round(tf, 4)} | "
              f"{ratio} | {goal}: {verdict} | {r['train_s']:.1f} ({r['epochs']}) | "
              f"{r['baseline_s']:.2f} ({r['baseline_s'] / max(r['train_s'], 1e-9):.1%}, target <= 10%: "
              f"{'PASS' if r['baseline_s'] <= 0.1 * r['train_s'] else 'FAIL'}) |")
    print("\n| set | ensemble weights | best linear member (test acc) | floor: test acc >= it - 0.005 | "
          "ensemble s (share of train) |")
    print("| --- | --- | --- | --- | --- |")
    for r in rows:
        ens = (r["ensemble"].get("outputs") or {}).get("label")
        if not ens:
            print(f"| {r['set']} | off: {r['ensemble'].get('off', '?')} | - | - | - |")
            continue
        weights = ", ".join(f"{m['member']} {m['weight']:.2f}" for m in ens["members"] if m["weight"])
        linear = max((m for m in ens["members"] if m["member"].startswith("linear")), key=lambda m: m.get("test", 0))
        ok = r["accuracy"] >= linear.get("test", 0) - 0.005
        seconds = r["ensemble"].get("seconds", float("nan"))
        print(f"| {r['set']} | {weights} | {linear['member']} {linear.get('test', float('nan')):.4f} | "
              f"{'PASS' if ok else 'FAIL'} | {seconds:.1f} ({seconds / max(r['train_s'], 1e-9):.0%}) |")
    for r in latency:
        if "skipped" in r:
            print(f"\n{r['set']}: batch-1 latency not timed ({r['skipped']})")
        else:
            print(f"\n{r['set']}: batch-1 latency in ONNX Runtime, ensemble {r['ensemble']:.2f} ms / network alone "
                  f"{r['network alone']:.2f} ms = {r['ratio']:.2f}x (target <= 1.3x: {'PASS' if r['ratio'] <= 1.3 else 'FAIL'})")
    if best is not None:
        ratio = best["run_s"] / best["limit"]
        print(f"\npreset best on {best['set']}, time_limit {best['limit']:g} s: the run took {best['run_s']:.0f} s "
              f"({ratio:.2f}x the limit; target <= 1.10x: {'PASS' if ratio <= 1.1 else 'FAIL'}), the command "
              f"{best['wall_s']:.0f} s; test accuracy {best['accuracy']:.4f}; networks {best['networks']}; "
              f"skipped {best['skipped']}")
    print(f"\ninit on a 50,000-row table: {big_s:.2f} s (target <= 10 s: {'PASS' if big_s <= 10 else 'FAIL'})")
    if img is not None:
        print(f"default image encoder at init's size on mvsa: {img:.0f} rows/s (target >= 300: "
              f"{'PASS' if img >= 300 else 'FAIL'})")


if __name__ == "__main__":
    main()

"""The scenario examples at full size: each README's commands, one run, the figures its README quotes.

    .venv/bin/python benchmarks/examples.py [--only traffic --only smarthome ...] [--out runs/examples]

Per example: the data step, `polyfuse train` of the example's spec (unedited), the test figures of each
output from metrics.json against the same run's linear baseline on all inputs (logistic or ridge
regression, polyfuse's own floor), and the wall time of the whole example (target <= 15 minutes). The
chatbot also chooses its out-of-scope threshold (abstain.py) and answers a spoken sample of its test queries
(speak.py: eSpeak NG, then Whisper tiny.en); the smart home streams 600 minutes to the
served model over /v2/stream; the medical example also trains its DP-SGD variant. Prints a table and
writes examples.json under --out.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from common import REPO, cli, log, running_server

EXAMPLES = REPO / "examples"
XRAY_WHEEL = REPO / ".cache" / "wheels" / "torchxrayvision-1.5.7-py3-none-any.whl"


def script(path: Path, *args: object) -> str:
    done = subprocess.run([sys.executable, str(path), *map(str, args)], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{path.name} failed:\n{done.stderr[-3000:]}")
    return done.stdout


def figures(model: Path) -> dict:
    """Each output's test figures, the network's (or the ensemble's) and the linear baseline's."""
    metrics = json.loads((model / "metrics.json").read_text())
    base = metrics.get("baseline", {}).get("outputs", {})
    out = {}
    for name, entry in base.items():
        headline = entry["metric"]
        out[name] = {"metric": headline, "model": metrics["test"]["outputs"][name].get(headline),
                     "baseline": entry.get("all", {}).get("test", {}).get(headline)}
    out["train_seconds"] = metrics.get("total_seconds")
    if "privacy" in metrics:
        out["epsilon"] = metrics["privacy"].get("epsilon")
    return out


def trained(example: str, spec: str, data: Path, out: Path) -> dict:
    """Train the example's spec with its data folder in place of examples/<x>/data (via a copy of the spec)."""
    import yaml

    body = yaml.safe_load((EXAMPLES / example / spec).read_text())
    for split in ("train", "valid", "test"):
        if split in body["data"]:
            body["data"][split] = str(data / Path(body["data"][split]).name)
    path = out.parent / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(body))
    cli("train", path, "--out", out, "--quiet")
    return figures(out)


def chatbot(work: Path) -> dict:
    here = EXAMPLES / "chatbot"
    script(here / "build_data.py", "--out", work / "data")
    result = trained("chatbot", "spec.yaml", work / "data", work / "m")
    script(here / "abstain.py", work / "m", work / "data", "--min-oos-recall", 0.5, "--spec", work / "m.yaml")
    result["abstain"] = json.loads((work / "m.abstain.json").read_text())
    script(here / "speak.py", work / "m", work / "data", "--abstain-below", result["abstain"]["abstain_below"])
    result["spoken"] = json.loads((work / "m.spoken.json").read_text())
    return result


def traffic(work: Path) -> dict:
    script(EXAMPLES / "traffic" / "build_data.py", "--out", work / "data")
    return trained("traffic", "spec.yaml", work / "data", work / "m")


def smarthome(work: Path) -> dict:
    here = EXAMPLES / "smarthome"
    script(here / "build_data.py", "--out", work / "data")
    result = trained("smarthome", "spec.yaml", work / "data", work / "m")
    with running_server(work / "m") as (_, url):
        result["stream"] = json.loads(script(here / "stream.py", "--url", url.replace("http", "ws") + "/v2/stream",
                                             "--minutes", 600).strip().splitlines()[-1])
    return result


def telephone(work: Path) -> dict:
    script(EXAMPLES / "telephone" / "build_data.py", "--out", work / "data")
    return trained("telephone", "spec.yaml", work / "data", work / "m")


def medical(work: Path) -> dict:
    if not XRAY_WHEEL.is_file():
        return {"skipped": f"{XRAY_WHEEL} missing: `make examples-data` downloads it"}
    script(EXAMPLES / "medical" / "build_data.py", "--wheel", XRAY_WHEEL, "--out", work / "data")
    result = trained("medical", "spec.yaml", work / "data", work / "m")
    result["private"] = trained("medical", "spec.dp.yaml", work / "data", work / "dp")
    return result


RUNS = {"chatbot": chatbot, "traffic": traffic, "smarthome": smarthome, "medical": medical, "telephone": telephone}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", choices=sorted(RUNS), help="run these examples (default: all)")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "examples")
    args = parser.parse_args()
    results = {}
    for name in args.only or list(RUNS):
        log(f"{name} ...")
        work = args.out / name
        work.mkdir(parents=True, exist_ok=True)
        t = time.perf_counter()
        results[name] = {**RUNS[name](work), "wall_s": round(time.perf_counter() - t, 1)}
        log(json.dumps(results[name], indent=1))
    (args.out / "examples.json").write_text(json.dumps(results, indent=1))
    print("\n| example | output | metric | model (test) | linear baseline (test) | wall (target <= 900 s) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, r in results.items():
        for output, f in r.items():
            if isinstance(f, dict) and "metric" in f:
                print(f"| {name} | {output} | {f['metric']} | {f['model']:.4f} | {f['baseline']:.4f} | {r['wall_s']:.0f} s |")


if __name__ == "__main__":
    main()

"""Choose the chatbot's out-of-scope threshold on validation and report CLINC150's figures on test.

    python examples/chatbot/abstain.py runs/chatbot examples/chatbot/data [--min-oos-recall R] [--spec spec.yaml]

The model never saw an out-of-scope query. A query is answered "out of scope" when the model's top
probability is below the threshold (`outputs.intent.abstain_below`). Two operating points are chosen on
the validation rows (CLINC150's in-scope validation and its 100 out-of-scope validation queries):
"balanced" maximises in-scope accuracy + out-of-scope recall; with ``--min-oos-recall R``, "min recall"
keeps the best in-scope accuracy whose out-of-scope recall is at least R (a product's requirement: refuse
at least that share of what it cannot answer) with ``--confidence`` (0.95): the one-sided Wilson lower
bound of the validation recall must reach R, not the validation share itself, because the requirement is
about queries nobody has seen and CLINC150's validation holds only 100 out-of-scope ones (a share of
0.51 there is as likely to be 0.45 as 0.57 on the next hundred). The test figures are read once per point, as the CLINC
paper reports them: in-scope accuracy (an abstention counts as wrong) and out-of-scope recall. With
``--spec``, writes ``spec.abstain.yaml`` beside it with the threshold of the last point chosen, to train
the model that serves.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

import polyfuse


def top(model, table: Path | pd.DataFrame) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Each query's top probability, its intent, and the true intent (a CSV path or a frame)."""
    frame = table if isinstance(table, pd.DataFrame) else pd.read_csv(table, keep_default_na=False)
    probs = model.predict_proba(frame[["text"]].to_dict("records"))
    return probs.to_numpy().max(1), np.asarray(probs.columns)[probs.to_numpy().argmax(1)], frame["intent"].tolist()


def figures(threshold: float, conf_in, pred_in, truth_in, conf_oos) -> dict[str, float]:
    answered = conf_in >= threshold
    return {"in_scope_accuracy": float(np.mean(answered & (pred_in == np.asarray(truth_in)))),
            "oos_recall": float(np.mean(conf_oos < threshold)) if len(conf_oos) else 0.0}


def wilson_lower(hits: int, n: int, confidence: float) -> float:
    """The one-sided Wilson score lower bound of ``hits`` of ``n`` (SciPy's two-sided interval at 2c - 1)."""
    from scipy.stats import binomtest

    return float(binomtest(hits, n).proportion_ci(2 * confidence - 1, method="wilson").low) if n else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("data", type=Path)
    parser.add_argument("--min-oos-recall", type=float, default=None)
    parser.add_argument("--confidence", type=float, default=0.95,
                        help="how sure the out-of-scope recall's lower bound must be (0.5: the validation share itself)")
    parser.add_argument("--spec", type=Path, default=None)
    args = parser.parse_args()
    if not 0.0 < args.confidence < 1.0:
        parser.error(f"--confidence must be between 0 and 1 (exclusive), got {args.confidence:g}")
    model = polyfuse.load(args.model)
    valid, oos_valid = top(model, args.data / "valid.csv"), top(model, args.data / "oos_valid.csv")
    test, oos_test = top(model, args.data / "test.csv"), top(model, args.data / "oos_test.csv")
    grid = np.round(np.arange(0.02, 0.99, 0.01), 2)
    on_valid = [figures(t, *valid, oos_valid[0]) for t in grid]
    points = {"balanced": float(grid[int(np.argmax([sum(f.values()) for f in on_valid]))])}
    if args.min_oos_recall is not None:
        n = len(oos_valid[0])
        allowed = [i for i, f in enumerate(on_valid)
                   if wilson_lower(round(f["oos_recall"] * n), n, args.confidence) >= args.min_oos_recall]
        if allowed:
            points["min recall"] = float(grid[max(allowed, key=lambda i: on_valid[i]["in_scope_accuracy"])])
    result = {name: {"abstain_below": t, "validation": figures(t, *valid, oos_valid[0]),
                     "test": figures(t, *test, oos_test[0])} for name, t in points.items()}
    if "min recall" in result:
        n = len(oos_valid[0])
        hits = round(result["min recall"]["validation"]["oos_recall"] * n)
        result["min recall"]["validation"]["oos_recall_lower_bound"] = wilson_lower(hits, n, args.confidence)
    result["test_without_threshold"] = figures(0.0, *test, oos_test[0])
    best = points["min recall" if "min recall" in points else "balanced"]
    result["abstain_below"] = best
    args.model.with_name(f"{args.model.name}.abstain.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    if args.spec:
        spec = yaml.safe_load(args.spec.read_text())
        spec["outputs"]["intent"]["abstain_below"] = best
        out = args.spec.with_name("spec.abstain.yaml")
        out.write_text(yaml.safe_dump(spec, sort_keys=False))
        print(f"wrote {out}")


if __name__ == "__main__":
    main()

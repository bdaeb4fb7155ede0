"""What a person reads after training: PNG plots (learning curves, confusion matrices) and the
summary table printed on the terminal."""
from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path
from typing import Any, Iterator

from polyfuse.evaluate import metrics as M


@contextlib.contextmanager
def plots(model: Any) -> Iterator[dict[str, Path]]:
    """Render the plots into a temporary folder; yields {artifact file name: path}."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with tempfile.TemporaryDirectory() as tmp:
        files: dict[str, Path] = {}
        if model.history:
            fig, ax = plt.subplots(1, 2, figsize=(10, 3.5))
            epochs = [h["epoch"] for h in model.history]
            ax[0].plot(epochs, [h["train_loss"] for h in model.history], label="train")
            if "valid_loss" in model.history[0]:
                ax[0].plot(epochs, [h["valid_loss"] for h in model.history], label="valid")
            ax[0].set(title="loss", xlabel="epoch")
            ax[0].legend()
            for key in model.history[0]:
                if key.startswith("valid_") and key != "valid_loss":
                    ax[1].plot(epochs, [h[key] for h in model.history], label=key[6:])
            ax[1].set(title="validation metrics", xlabel="epoch")
            ax[1].legend()
            fig.tight_layout()
            files["learning_curves.png"] = Path(tmp) / "learning_curves.png"
            fig.savefig(files["learning_curves.png"], dpi=100)
            plt.close(fig)
        split = model.metrics.get("test") or model.metrics.get("valid") or {}
        for name, m in split.get("outputs", {}).items():
            cm = m.get("confusion_matrix")
            if not cm:
                continue
            n = len(cm["labels"])
            fig, ax = plt.subplots(figsize=(1.0 + 0.45 * n, 0.8 + 0.45 * n))
            ax.imshow(cm["matrix"], cmap="Blues")
            ax.set_xticks(range(n), cm["labels"], rotation=90)
            ax.set_yticks(range(n), cm["labels"])
            for i, row in enumerate(cm["matrix"]):
                for j, v in enumerate(row):
                    if v:
                        ax.text(j, i, str(v), ha="center", va="center", fontsize=7)
            ax.set(xlabel="predicted", ylabel="true", title=f"{name}: confusion matrix")
            fig.tight_layout()
            files[f"confusion_{name}.png"] = Path(tmp) / f"confusion_{name}.png"
            fig.savefig(files[f"confusion_{name}.png"], dpi=100)
            plt.close(fig)
        yield files


def summary(result: dict[str, Any], spec: Any, title: str = "") -> str:
    """A plain-text table: the headline metric per output, fused and with inputs removed."""
    lines = [title] if title else []
    ablation = result.get("ablation")
    labels = ["all inputs"] + [f"{how} {name}" for how in ("only", "without") for name in (ablation or {}).get(how, {})]
    width = max(28, max(len(label) for label in labels) + 2)  # any input name keeps the columns aligned
    for out, cfg in spec.outputs.items():
        m = result["outputs"][out]
        head = M.headline(cfg)
        lines.append(f"{out} ({cfg.type}, {m['n']} rows)")
        extras = [k for k in ("f1_macro", "roc_auc_ovr_macro", "roc_auc", "mae", "rmse") if m.get(k) is not None]
        lines.append(f"  {'all inputs':<{width}}{head} {m[head]:.4f}   " + "  ".join(f"{k} {m[k]:.4f}" for k in extras))
        if ablation:
            for name, scores in ablation["only"].items():
                lines.append(f"  {'only ' + name:<{width}}{head} {scores[out]:.4f}")
            if len(spec.inputs) > 2:
                for name, scores in ablation["without"].items():
                    lines.append(f"  {'without ' + name:<{width}}{head} {scores[out]:.4f}")
    return "\n".join(lines)


def baseline_tables(metrics: dict[str, Any], spec: Any) -> list[tuple[str, list[str], list[tuple[str, list[str]]]]]:
    """(output, column names, rows of (label, cells)): network vs baseline per output; [] without a baseline."""
    outputs = (metrics.get("baseline") or {}).get("outputs") or {}
    return [(out, *_baseline_rows(metrics, out)) for out in spec.outputs if out in outputs]


def _baseline_rows(metrics: dict[str, Any], out: str) -> tuple[list[str], list[tuple[str, list[str]]]]:
    entry = metrics["baseline"]["outputs"][out]
    splits = [s for s in ("valid", "test") if s in entry["prior"]]  # the splits the baseline was scored on
    keys = [entry["metric"]] + (["f1_macro"] if entry["metric"] == "accuracy" else [])
    columns = [f"{s} {k}" for s in splits for k in keys]

    def cells(scores: dict[str, dict]) -> list[str]:
        return [f"{v:.4f}" if (v := (scores.get(s) or {}).get(k)) is not None else "-" for s in splits for k in keys]

    def network(name: str | None) -> dict[str, dict]:
        if name is None:
            return {s: metrics[s]["outputs"][out] for s in splits if s in metrics}
        return {s: {entry["metric"]: metrics[s]["ablation"]["only"][name][out]} for s in splits
                if name in ((metrics.get(s) or {}).get("ablation") or {}).get("only", {})}

    def baseline(label: str, scores: dict) -> tuple[str, list[str]]:
        return (f"{label} (skipped: {scores['skipped']})", ["-"] * len(columns)) if "skipped" in scores \
            else (label, cells(scores))

    rows = [("network, all inputs", cells(network(None))), baseline("baseline, all inputs", entry["all"])]
    if len(entry["only"]) > 1:
        for name, scores in entry["only"].items():
            rows += [(f"network, only {name}", cells(network(name))), baseline(f"baseline, only {name}", scores)]
    rows.append(("baseline, no input (prior)", cells(entry["prior"])))
    return columns, rows


def baseline_table(metrics: dict[str, Any], spec: Any) -> str:
    """Plain-text network vs linear baseline per output and split, then the warnings; '' without one."""
    tables = baseline_tables(metrics, spec)
    if not tables:
        return ""
    base = metrics["baseline"]
    lines = [f"network vs linear baseline (fitted in {base['seconds']:.1f} s: {base['method']})"]
    for out, columns, rows in tables:
        width = max(len(label) for label, _ in rows) + 2
        lines.append(f"{out:<{width}}" + "".join(f"{c:>16}" for c in columns))
        lines += [f"  {label:<{width - 2}}" + "".join(f"{c:>16}" for c in cells) for label, cells in rows]
    lines += [f"!! {w}" for w in metrics.get("baseline_warnings", [])]
    return "\n".join(lines)


def ensemble_rows(metrics: dict[str, Any]) -> list[tuple[str, str, list[tuple[str, str, str, str]]]]:
    """(output, metric, rows of (member, weight, valid, test)): each member and the mix; [] without one."""
    outputs = (metrics.get("ensemble") or {}).get("outputs") or {}
    tables = []
    for out, entry in outputs.items():
        show = lambda v: f"{v:.4f}" if v is not None else "-"  # noqa: E731
        rows = [(r["member"], f"{r['weight']:.2f}", show(r.get("valid")), show(r.get("test"))) for r in entry["members"]]
        mix = entry["ensemble"]
        rows.append((f"ensemble (best member: {entry['best_member']})", "", show(mix.get("valid")), show(mix.get("test"))))
        tables.append((out, entry["metric"], rows))
    return tables


def ensemble_table(metrics: dict[str, Any]) -> str:
    """Plain text: the ensemble's members, weights and scores per output; why there is none, or ''."""
    ens = metrics.get("ensemble") or {}
    if "off" in ens:
        return f"ensemble: off ({ens['off']})"
    lines = []
    for out, metric, rows in ensemble_rows(metrics):
        width = max(len(r[0]) for r in rows) + 2
        lines.append(f"ensemble {out}: members chosen on the validation rows ({ens.get('seconds', 0):.1f} s)")
        lines.append(f"  {'member':<{width}}{'weight':>8}{'valid ' + metric:>18}{'test ' + metric:>18}")
        lines += [f"  {m:<{width}}{w:>8}{v:>18}{t:>18}" for m, w, v, t in rows]
    return "\n".join(lines)

"""What a person reads after training: PNG plots (learning curves, confusion matrices) and the
summary table printed on the terminal."""
from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path
from typing import Any, Iterator

from polyfuse import metrics as M


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
    for out, cfg in spec.outputs.items():
        m = result["outputs"][out]
        head = M.headline(cfg)
        lines.append(f"{out} ({cfg.type}, {m['n']} rows)")
        extras = [k for k in ("f1_macro", "roc_auc_ovr_macro", "roc_auc", "mae", "rmse") if m.get(k) is not None]
        lines.append(f"  {'all inputs':<28}{head} {m[head]:.4f}   " + "  ".join(f"{k} {m[k]:.4f}" for k in extras))
        if ablation:
            for name, scores in ablation["only"].items():
                lines.append(f"  {'only ' + name:<28}{head} {scores[out]:.4f}")
            if len(spec.inputs) > 2:
                for name, scores in ablation["without"].items():
                    lines.append(f"  {'without ' + name:<28}{head} {scores[out]:.4f}")
    return "\n".join(lines)

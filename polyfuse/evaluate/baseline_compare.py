"""The network against its linear floor (:mod:`polyfuse.evaluate.baseline`): when a scikit-learn model on
cheap features beats the network on validation, say so loudly, with the likely causes (an input
the network reads worse, underfitting, a prior it cannot beat)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from polyfuse.spec.inputs import hf_encoder

MARGIN = 0.005  # half a point: smaller gaps are noise on a few hundred validation rows


def _valid(entry: dict | None, metric: str) -> float | None:
    return ((entry or {}).get("valid") or {}).get(metric)


def _input_cause(name: str, cfg: Any, info: dict, rows: int) -> str:
    """What in one input's handling most likely makes a linear model read it better than the network."""
    enc = hf_encoder(cfg)  # a transformers folder, hub id or zoo name
    if enc is not None:
        how = ("its frozen features may miss what this task needs: train_last: 2 or lora: {r: 8} adapts it"
               if enc.cached else "it may over- or underfit: adjust encoder.lr or train fewer layers")
        return (f"the pretrained '{Path(enc.name).name}' on {cfg.type} '{name}' trails a linear model on {rows} rows; {how}"
                + ("; or encoder: ngram, what the linear model reads" if cfg.type == "text" else ""))
    if cfg.type == "text":
        if cfg.tokenizer == "word" and info.get("cjk_share", 0) > 0.3:
            return (f"text '{name}' is {info['cjk_share']:.0%} Chinese/Japanese/Korean characters but its tokenizer "
                    f"is 'word', so a row is ~{info['tokens_per_row']:g} tokens of whole phrases: use tokenizer: char "
                    "(or jieba)")
        if info.get("cut_share", 0) > 0.2:
            return f"max_length {cfg.max_length} cuts {info['cut_share']:.0%} of the '{name}' texts: raise it"
        if cfg.encoder != "ngram":
            return (f"the '{cfg.encoder}' encoder learns '{name}' from scratch on {rows} rows: encoder: ngram (hashed "
                    "word + char n-grams, what the linear model reads) suits this little data")
        return (f"the n-gram encoder reads '{name}' worse than TF-IDF + a linear model reads the same n-grams: more "
                "epochs or a higher learning rate if it underfits, a lower dim or more dropout if it overfits")
    if cfg.type == "image":
        return (f"the '{cfg.encoder}' encoder on image '{name}' ({cfg.size[0]}x{cfg.size[1]}) trails an 8x8 thumbnail "
                f"and colour histogram: on {rows} rows a CNN from scratch under- or overfits; try augment "
                "(random_crop, flip), a smaller size or dim, or more epochs")
    if cfg.type == "audio":
        return (f"MFCC mean/std of '{name}' beat the '{cfg.encoder}' audio encoder: train longer, or augment "
                "(speed, random_crop) if it overfits")
    return (f"{cfg.type} '{name}' is read better by a linear model: its {cfg.encoder} branch is undertrained (more "
            "epochs, a higher learning rate)")


def _fitting(history: list[dict] | None, spec: Any, rows: int) -> str | None:
    """Over- or underfitting, as the per-epoch losses show it; None when they do not say."""
    losses = [(h["epoch"], h["train_loss"], h["valid_loss"]) for h in history or [] if "valid_loss" in h]
    if len(losses) < 2:
        return None
    best = min(losses, key=lambda e: e[2])
    last = losses[-1]
    # a rise of a few per cent is noise, not overfitting (the demo once rose 0.1628 -> 0.1634)
    if last[0] - best[0] >= 2 and last[2] > 1.05 * best[2] and last[1] < best[1]:
        return (f"the network overfits: validation loss was lowest at epoch {best[0]} ({best[2]:.4f}) and rose to "
                f"{last[2]:.4f} while the training loss fell to {last[1]:.4f}; its encoders are too big for {rows} "
                "training rows (lower dim, more dropout or augmentation, simpler encoders)")
    if best[0] == last[0] and last[0] >= spec.train.epochs:
        return (f"the network underfits: validation loss was still falling at the last epoch ({last[0]}); train "
                f"longer or raise the learning rate (lr {spec.train.lr:g})")
    return None


def _causes(out: str, cfg: Any, net: dict, entry: dict, baseline: dict, spec: Any, suspects: list[str],
            history: list[dict] | None) -> list[str]:
    """The likely causes the figures point to, most specific first."""
    metric, rows = entry["metric"], baseline.get("train_rows", 0)
    causes = [_input_cause(n, spec.inputs[n], baseline.get("inputs", {}).get(n, {}), rows) for n in suspects]
    prior = _valid(entry.get("prior"), metric)
    fitting = _fitting(history, spec, rows)
    if prior is not None and net[metric] <= prior + MARGIN:
        what = "the most frequent class" if cfg.type in ("category", "binary") else "the training mean"
        causes.insert(0, f"the network does no better than always answering {what} ({metric} {prior:.4f}); " + (
            fitting or f"it has barely learned: in learning_curves.png, a training loss still falling means too "
                       f"few epochs ({spec.train.epochs}) or too low a learning rate ({spec.train.lr:g}), a "
                       "validation loss rising early means overfitting"))
    elif fitting:
        causes.append(fitting)
    elif spec.train.epochs < 10:
        causes.append(f"only {spec.train.epochs} epoch(s): the network is likely underfitting; train longer")
    base_f1, net_f1 = _valid(entry.get("all"), "f1_macro"), net.get("f1_macro")
    if (cfg.type in ("category", "binary") and cfg.class_weights is None and prior is not None and prior >= 0.5
            and base_f1 is not None and net_f1 is not None and net_f1 < base_f1 - MARGIN):
        causes.append(f"classes are imbalanced (the largest holds {prior:.0%} of rows) and the network's macro-F1 "
                      f"{net_f1:.4f} trails the baseline's {base_f1:.4f}: set outputs.{out}.class_weights: balanced")
    return causes or ["the network under- or overfits: compare train and valid loss in learning_curves.png"]


def compare(network: dict | None, baseline: dict | None, spec: Any, history: list[dict] | None = None) -> list[str]:
    """Loud warnings where a linear baseline beats the network on validation, with the likely causes.

    ``network`` is training's ``metrics["valid"]`` (``outputs`` and, when present, ``ablation``);
    ``history``, the per-epoch records, tells over- from underfitting. A baseline must win by more
    than half a point (``MARGIN``) to count.
    """
    found: list[str] = []
    for out, cfg in spec.outputs.items():
        entry = ((baseline or {}).get("outputs") or {}).get(out)
        net = ((network or {}).get("outputs") or {}).get(out)
        if not entry or not net or net.get(entry["metric"]) is None:
            continue
        metric, score = entry["metric"], net[entry["metric"]]
        alone = {n: s for n, e in entry["only"].items() if (s := _valid(e, metric)) is not None}
        net_only = ((network.get("ablation") or {}).get("only") or {})
        prior = _valid(entry.get("prior"), metric)
        # an input is suspect when its linear model beats the network's own use of it (or, without an
        # ablation, the whole network) and finds something in it (beats the prior); strongest first
        suspects = sorted((n for n, s in alone.items() if s > (net_only[n][out] if n in net_only else score) + MARGIN
                           and (prior is None or s > prior + MARGIN)), key=lambda n: -alone[n])
        best = [("all inputs", s)] if (s := _valid(entry["all"], metric)) is not None else []
        if len(spec.inputs) > 1:  # with one input, "alone" is "all"
            best += [(f"{n} alone", s) for n, s in alone.items()]
        best = sorted(((label, s) for label, s in best if s > score + MARGIN), key=lambda x: -x[1])
        if best:
            figures = ", ".join(f"{label} {s:.4f}" for label, s in best)
            head = (f"BASELINE BEATS THE NETWORK on '{out}': a linear model scores validation {metric} {figures}; "
                    f"the network {score:.4f} ({100 * (best[0][1] - score):+.1f} points for the baseline)")
        else:
            head = "; ".join(f"BASELINE BEATS THE NETWORK'S '{n}' BRANCH on '{out}': a linear model on {n} alone "
                             f"scores validation {metric} {alone[n]:.4f}, the network with only {n} "
                             f"{net_only[n][out]:.4f}" for n in suspects)
            if not head:
                continue
        causes = _causes(out, cfg, net, entry, baseline, spec, suspects, history)
        found.append(f"{head}. Likely causes: " + "; ".join(f"({i}) {c}" for i, c in enumerate(causes, 1)) + ".")
    return found

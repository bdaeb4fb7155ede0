"""The floor every network must clear: scikit-learn linear models on cheap features of the same rows.

For each output, a linear model is fitted on the training rows for each input alone and for all
inputs together (TF-IDF word + char n-grams for text, a downsampled grey image and colour
histogram for images, MFCC mean/std for audio, standardised numbers, one-hot categories), and
scored on the validation and test rows with the metric the network reports.
:func:`polyfuse.evaluate.baseline_compare.compare` says, loudly and with the likely causes, when such a
model beats the network.
"""
from __future__ import annotations

import time
import warnings
from typing import Any, Callable

import numpy as np
from scipy import sparse

from polyfuse.evaluate import metrics
from polyfuse.preprocess.pipeline import Decoded, Preprocessor

GREY_SIDE = 8  # 8x8 grey pixels: measured on mvsa, 16x16 was slower and no more accurate
HIST_BINS = 8  # per channel
WORD_FEATURES, CHAR_FEATURES = 20_000, 30_000
# saga stops within ~30 epochs at tol 1e-3 on unit-scaled features: on zhtext's two text inputs
# (15 classes, 50k features each) 1.2 s against lbfgs' 13 s and newton-cg's 6.8 s, as accurate
MAX_ITER, TOL = 100, 1e-3
C = 2.0  # inverse regularisation; 1 to 4 were within noise of each other on mvsa

Features = Callable[[list], Any]  # decoded values of one input -> a (sparse or dense) feature matrix


# ----------------------------------------------------------------------------- features per modality
def _pick(values: Any, idx: list[int]) -> Any:
    """Rows ``idx`` of ``values``: a view of a packed or on-disk column (read as ``rows`` goes), else a list."""
    return values.take(idx) if hasattr(values, "take") else [values[i] for i in idx]


def _dense(values: list, rows: Callable[[list], np.ndarray]) -> Features:
    """Standardise ``rows(present values)`` on the training rows; a missing row gets zeros + an indicator."""
    present = _pick(values, [i for i, v in enumerate(values) if v is not None])
    stack = rows(present) if len(present) else np.zeros((1, 1))
    mean, std = stack.mean(0), stack.std(0)
    std[std < 1e-8] = 1.0

    def transform(vals: list) -> np.ndarray:
        out = np.zeros((len(vals), len(mean) + 1), dtype=np.float32)
        keep = [i for i, v in enumerate(vals) if v is not None]
        out[[i for i, v in enumerate(vals) if v is None], -1] = 1.0
        if keep:
            out[keep, :-1] = (rows(_pick(vals, keep)) - mean) / std
        return out

    return transform


def _chunked(rows: Callable[[list], np.ndarray], size: int = 256) -> Callable[[list], np.ndarray]:
    """``rows`` over ``size`` values at a time: a table of large images never sits in memory as floats twice."""
    return lambda values: np.concatenate([rows(values[i : i + size]) for i in range(0, len(values), size)])


def image_rows(images: list[np.ndarray]) -> np.ndarray:
    """Per image [C, H, W]: an 8x8 grey thumbnail (area means), per-channel histograms, means and stds."""
    x = np.stack(images)
    if x.dtype == np.uint8:  # a pretrained encoder's decoded pixels: 0-255 until its collate rescales them
        x = x.astype(np.float32) / 255.0
    n, c, h, w = x.shape
    ys = np.linspace(0, h, min(GREY_SIDE, h) + 1).astype(int)
    xs = np.linspace(0, w, min(GREY_SIDE, w) + 1).astype(int)
    sums = np.add.reduceat(np.add.reduceat(x.mean(1), ys[:-1], axis=1), xs[:-1], axis=2)
    thumb = sums / np.outer(np.diff(ys), np.diff(xs))
    bins = np.minimum((x * HIST_BINS).astype(np.int64), HIST_BINS - 1).reshape(n * c, h * w)
    hist = np.apply_along_axis(np.bincount, 1, bins, minlength=HIST_BINS).reshape(n, c * HIST_BINS) / (h * w)
    return np.concatenate([thumb.reshape(n, -1), hist, x.mean((2, 3)), x.std((2, 3))], axis=1)


def _image(values: list, cfg: Any) -> Features:
    return _dense(values, _chunked(image_rows))


def _video(values: list, cfg: Any) -> Features:
    """The image features of each clip's mean frame (uint8 [frames, H, W, 3] -> [3, H, W] in [0, 1])."""
    def mean_frames(clips: list[np.ndarray]) -> np.ndarray:
        return image_rows([c.mean(0).transpose(2, 0, 1) / 255.0 for c in clips])

    return _dense(values, _chunked(mean_frames))


def _audio(values: list, cfg: Any) -> Features:
    from polyfuse.preprocess.audio import AudioFeatureConfig, features_batch

    fcfg = AudioFeatureConfig.from_spec(cfg)

    def rows(waves: list[np.ndarray]) -> np.ndarray:
        """MFCC (or log-mel) mean and std over each clip's real frames (the network's feature settings)."""
        feats, lengths = features_batch(waves, fcfg)
        valid = (np.arange(feats.shape[1])[None, :] < lengths[:, None])[:, :, None]
        n = np.maximum(lengths, 1)[:, None]
        mean = (feats * valid).sum(1) / n
        return np.concatenate([mean, np.sqrt(np.maximum((feats**2 * valid).sum(1) / n - mean**2, 0))], 1)

    return _dense(values, _chunked(rows))


def _number(values: list, cfg: Any) -> Features:
    clean = lambda vals: [None if v is None or np.isnan(v) else v for v in vals]  # noqa: E731
    fitted = _dense(clean(values), lambda vals: np.asarray(vals, dtype=np.float64)[:, None])
    return lambda vals: fitted(clean(vals))


def _timeseries(values: list, cfg: Any) -> Features:
    def rows(series: list[np.ndarray]) -> np.ndarray:
        """Per channel: mean, std, min, max, mean absolute step change and the latest reading (gaps ignored).
        The latest reading is what a forecaster starts from: without it, a linear floor on "the previous
        hours" scored r2 0.11 where the last hour alone carries most of the signal."""
        out = []
        for x in series:
            with np.errstate(all="ignore"):
                feats = [np.nanmean(x, 0), np.nanstd(x, 0), np.nanmin(x, 0), np.nanmax(x, 0),
                         np.nanmean(np.abs(np.diff(x, axis=0)), 0) if len(x) > 1 else np.zeros(x.shape[1]),
                         _latest(x)]
            out.append(np.nan_to_num(np.concatenate(feats)))
        return np.asarray(out, dtype=np.float64)

    return _dense(values, rows)


def _latest(x: np.ndarray) -> np.ndarray:
    """Each channel's last reading that is not a gap (NaN where a channel has none)."""
    seen = ~np.isnan(x)
    last = np.where(seen.any(0), len(x) - 1 - np.argmax(seen[::-1], 0), 0)
    return np.where(seen.any(0), x[last, np.arange(x.shape[1])], np.nan)


def _category(values: list, cfg: Any) -> Features:
    from sklearn.preprocessing import OneHotEncoder

    missing = "\0missing"  # its own level, so a missing cell is never confused with a real one
    enc = OneHotEncoder(handle_unknown="ignore", dtype=np.float32)
    enc.fit(np.array([missing if v is None else v for v in values], dtype=object)[:, None])
    return lambda vals: enc.transform(np.array([missing if v is None else v for v in vals], dtype=object)[:, None])


def as_tokens(values: list) -> list:
    """Token lists as they are; whole strings (a pretrained encoder's decoded text) split into words."""
    from polyfuse.preprocess.text import tokenize

    return [tokenize(v, "word") if isinstance(v, str) else v for v in values]


def _word_ngrams(tokens: list[str]) -> list[str]:
    return tokens + [f"{a} {b}" for a, b in zip(tokens, tokens[1:])]


def _text(values: list, cfg: Any) -> Features:
    from sklearn.feature_extraction.text import TfidfVectorizer

    # Chinese/Japanese (or char/jieba tokens): spaces are no boundaries, so characters are joined and
    # single characters count; measured on zhtext's headlines, 0.48 against 0.39 with spaced 2-4-grams
    unsegmented = cfg.tokenizer != "word" or text_info(values, cfg)["cjk_share"] > 0.3
    sep = "" if unsegmented else " "
    word = TfidfVectorizer(analyzer=_word_ngrams, max_features=WORD_FEATURES, sublinear_tf=True, dtype=np.float32)
    char = TfidfVectorizer(analyzer="char_wb", ngram_range=(1, 3) if unsegmented else (2, 4), lowercase=False,
                           max_features=CHAR_FEATURES, sublinear_tf=True, dtype=np.float32)
    word.fit([v or [] for v in values])
    char.fit([sep.join(v or []) for v in values])

    def transform(vals: list) -> sparse.csr_matrix:
        missing = sparse.csr_matrix(np.array([[0.0 if v else 1.0] for v in vals], dtype=np.float32))
        return sparse.hstack([word.transform([v or [] for v in vals]),
                              char.transform([sep.join(v or []) for v in vals]), missing], format="csr")

    return transform


FEATURES: dict[str, Callable[[list, Any], Features]] = {
    "image": _image, "audio": _audio, "text": _text, "number": _number, "category": _category,
    "timeseries": _timeseries, "video": _video,
}
DESCRIBE = {"image": "8x8 grey pixels + colour histograms", "audio": "MFCC mean/std", "number": "standardised numbers",
            "text": "TF-IDF word 1-2-grams + char n-grams", "category": "one-hot categories",
            "timeseries": "per-channel mean/std/min/max/mean step change/latest reading",
            "video": "8x8 grey pixels + colour histograms of the mean frame"}


def text_info(values: list, cfg: Any) -> dict[str, float]:
    """Figures ``compare`` uses to name a tokenizer problem: tokens per row, CJK share, rows cut."""
    rows = [v for v in values if v]
    chars = "".join(t for v in rows for t in v)
    cjk = sum(1 for c in chars if "\u3040" <= c <= "\u30ff" or "\u3400" <= c <= "\u9fff" or "\uac00" <= c <= "\ud7af")
    lengths = [len(v) for v in rows] or [0]
    return {"tokens_per_row": round(float(np.mean(lengths)), 2), "cjk_share": round(cjk / max(len(chars), 1), 3),
            "cut_share": round(float(np.mean([n > cfg.max_length for n in lengths])), 3)}


# ----------------------------------------------------------------------------- fitting and scoring
def _unit_rows(block: dict[str, Any]) -> dict[str, sparse.csr_matrix]:
    """Scale an input's features so its training rows have unit norm on average.

    Standardised dense blocks have row norms near sqrt(width), ~10x a TF-IDF row. Unbalanced, on mvsa's
    photo + text, lbfgs took 300+ iterations (4.6 s) and saga stopped short (valid 0.63); balanced,
    lbfgs took 54 (1.3 s) and saga 31 (0.4 s), both at 0.67.
    """
    train = sparse.csr_matrix(block["train"], dtype=np.float64)
    norm = float(np.sqrt(np.asarray(train.multiply(train).sum(1))).mean()) or 1.0
    return {k: sparse.csr_matrix(v, dtype=np.float64) / norm for k, v in block.items()}


def _model(cfg: Any) -> Any:
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.multiclass import OneVsRestClassifier

    if cfg.type == "number":
        return Ridge(alpha=1.0)
    logistic = LogisticRegression(C=C, solver="saga", max_iter=MAX_ITER, tol=TOL, random_state=0)
    return OneVsRestClassifier(logistic) if cfg.type == "multilabel" else logistic


def _check_target(cfg: Any, y: np.ndarray) -> str | None:
    """Why no model can be fitted on these training targets, or None."""
    if cfg.type in ("category", "binary") and len(np.unique(y)) < 2:
        return f"only one class in the training rows ({len(y)} rows)"
    if cfg.type == "number" and np.ptp(y) == 0:
        return "the target is constant in the training rows"
    if cfg.type == "multilabel" and not ((y == 1).any(0) & (y == 0).any(0)).any():
        return "no label is both present and absent in the training rows"
    return None


def _probs(cfg: Any, model: Any, x: Any, n_classes: int) -> np.ndarray:
    """Scores in the shape the network's head gives them (all classes, even ones the model never saw)."""
    if cfg.type == "number":
        return model.predict(x).astype(np.float32)
    p = model.predict_proba(x)
    if cfg.type == "multilabel":
        return p
    full = np.zeros((p.shape[0], n_classes), dtype=np.float64)
    full[:, model.classes_.astype(int)] = p
    return full


def _score(cfg: Any, state: dict, probs: np.ndarray, target: np.ndarray) -> dict[str, float]:
    """The network's headline metric (and macro-F1, MAE) on the same encoded targets."""
    m = metrics.compute(cfg, state, probs, target, full=False)
    if cfg.type in ("category", "binary") and len(target):
        from sklearn.metrics import f1_score

        m["f1_macro"] = f1_score(target.astype(int), probs.argmax(-1), labels=list(range(probs.shape[1])),
                                 average="macro", zero_division=0)
    keep = [metrics.headline(cfg), "f1_macro", "mae"]
    return {"n": m["n"], **{k: round(float(m[k]), 6) for k in keep if m.get(k) is not None}}


def _prior(cfg: Any, y: np.ndarray, n: int, n_classes: int) -> np.ndarray:
    """The answer a model that ignores every input gives: class shares, label rates or the mean."""
    if cfg.type == "number":
        return np.full(n, y.mean(), dtype=np.float32)
    if cfg.type == "multilabel":
        return np.tile(y.mean(0), (n, 1))
    return np.tile(np.bincount(y.astype(int), minlength=n_classes) / len(y), (n, 1))


def _twins(spec: Any) -> dict[str, str]:
    """Inputs that read the same column as an earlier input of the same type (a zoo encoder beside the
    n-gram or CNN input): their baseline features would be that input's again."""
    first: dict[tuple[str, str], str] = {}
    twins = {}
    for name, cfg in spec.inputs.items():
        key = (spec.column(name), cfg.type)
        if key in first:
            twins[name] = first[key]
        else:
            first[key] = name
    return twins


def _features(spec: Any, train: Decoded, splits: dict[str, Decoded]) -> tuple[dict, dict]:
    """Per input: unit-scaled feature blocks for train and each split, and figures about the input."""
    blocks: dict[str, dict[str, Any]] = {}
    info: dict[str, dict] = {}
    twins = _twins(spec)
    for name, cfg in spec.inputs.items():
        if name in twins:
            info[name] = {"type": cfg.type, "same_features_as": twins[name]}
            continue
        values = as_tokens(train.inputs[name]) if cfg.type == "text" else train.inputs[name]
        info[name] = {"type": cfg.type, "train_rows_present": sum(v is not None for v in values)}
        if cfg.type == "text":
            info[name].update(text_info(values, cfg))
        if not info[name]["train_rows_present"]:
            info[name]["skipped"] = "the input is missing in every training row"
            continue
        started = time.perf_counter()
        try:
            make = FEATURES[cfg.type](values, cfg)
            blocks[name] = _unit_rows({"train": make(values), **{
                k: make(as_tokens(d.inputs[name]) if cfg.type == "text" else d.inputs[name]) for k, d in splits.items()}})
        except Exception as e:  # advisory figures: a failure here must never lose a trained network
            info[name]["skipped"] = f"features failed: {type(e).__name__}: {e}"
            continue
        info[name]["features"] = int(blocks[name]["train"].shape[1])
        info[name]["seconds"] = round(time.perf_counter() - started, 3)
    return blocks, info


def _fit_output(cfg: Any, state: dict, blocks: dict, y: dict[str, np.ndarray], names: list[str]) -> dict[str, Any]:
    """Fit one output on the named inputs' train features; scores per split, or why it was skipped."""
    reason = _check_target(cfg, y["train"])
    if reason or not names:
        return {"skipped": reason or "no input has usable features"}
    stack = lambda split: sparse.hstack([blocks[n][split] for n in names], format="csr")  # noqa: E731
    n_classes = len(state.get("classes", []))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # convergence and label warnings: the scores tell
            target = y["train"].astype(int) if cfg.type in ("category", "binary") else y["train"]
            model = _model(cfg).fit(stack("train"), target)
            return {k: _score(cfg, state, _probs(cfg, model, stack(k), n_classes), y[k]) for k in y if k != "train"}
    except Exception as e:  # advisory, as above: report it and carry on
        return {"skipped": f"{type(e).__name__}: {e}"}


def fit_baselines(spec: Any, pre: Preprocessor, train: Decoded, valid: Decoded | None,
                  test: Decoded | None) -> dict[str, Any]:
    """Fit linear baselines on ``train`` and score them on ``valid``/``test`` (JSON-ready).

    Returns ``{"outputs": {output: {"metric", "prior", "all", "only": {input: ...}}}, "inputs": {...},
    "seconds", ...}``; each entry holds ``{"valid": scores, "test": scores}`` or ``{"skipped": reason}``.
    ``prior`` answers without looking at any input (the majority class, the mean). Rows missing an
    input keep their place (zeros plus a missing indicator): the baseline is scored on the network's rows.
    """
    import sklearn.linear_model  # noqa: F401  (loads scipy's BLAS before it is limited below)
    from threadpoolctl import threadpool_limits

    started = time.perf_counter()
    splits = {k: d for k, d in (("valid", valid), ("test", test)) if d is not None and len(d)}
    if not splits:
        return {"skipped": "no validation or test rows to score a baseline on", "outputs": {}, "seconds": 0.0}
    # scipy's OpenBLAS is loaded after training pins BLAS to one thread, so it is not pinned: on two
    # busy cores its threads made each lbfgs fit 5x slower in CPU time
    with threadpool_limits(limits=1, user_api="blas"):
        blocks, info = _features(spec, train, splits)
        targets = {"train": pre.targets(train), **{k: pre.targets(d) for k, d in splits.items()}}
        outputs: dict[str, Any] = {}
        for out, cfg in spec.outputs.items():
            state, y = pre.state[out], {k: t[out] for k, t in targets.items()}
            n_classes = len(state.get("classes", []))
            result: dict[str, Any] = {"metric": metrics.headline(cfg), "prior": {
                k: _score(cfg, state, _prior(cfg, y["train"], len(y[k]), n_classes), y[k]) for k in splits}}
            result["all"] = _fit_output(cfg, state, blocks, y, list(blocks))
            result["only"] = {}
            for name in spec.inputs:
                if "same_features_as" in info[name]:  # the same model as its twin's: not fitted twice
                    result["only"][name] = result["only"][info[name]["same_features_as"]]
                elif name not in blocks:
                    result["only"][name] = {"skipped": info[name].get("skipped", "no features")}
                elif len(blocks) == 1:  # the one input alone is "all": no second fit
                    result["only"][name] = result["all"]
                else:
                    result["only"][name] = _fit_output(cfg, state, blocks, y, [name])
            outputs[out] = result
    models = sorted({"Ridge regression" if c.type == "number" else "logistic regression"
                     for c in spec.outputs.values()})
    read = dict.fromkeys(DESCRIBE[c.type] for c in spec.inputs.values())
    method = f"scikit-learn {' and '.join(models)} on {', '.join(read)}"
    if spec.train.privacy is not None:  # the comparison must not read as a private model
        method += "; NOT PRIVATE: fitted without noise on the training rows, a comparison only, not part of the model"
    return {"method": method, "private": False,
            "train_rows": len(train), "outputs": outputs, "inputs": info,
            "seconds": round(time.perf_counter() - started, 3)}

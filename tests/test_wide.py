"""Wide and deep text: the linear half equals its scikit-learn fit, is blended on validation, and
contributes nothing for a missing text."""
import numpy as np
import pandas as pd
import torch

import polyfuse
from polyfuse.data.io import read_table
from polyfuse.nn.model import FusionModel, to_tensors
from polyfuse.preprocess.pipeline import Preprocessor, decode_table
from polyfuse.spec.schema import load_spec
from polyfuse.training import wide


def _table(n: int = 150, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    words = {"pos": ["great", "lovely", "superb"], "neg": ["awful", "boring", "poor"], "mid": ["okay", "fine", "average"]}
    filler = ["the", "film", "was", "plot", "acting", "really"]
    rows = []
    for i in range(n):
        label = list(words)[i % 3]
        text = " ".join(list(rng.choice(filler, 3)) + [rng.choice(words[label])] + list(rng.choice(filler, 2)))
        rows.append({"review": text, "stars": float(i % 3 + rng.normal(0, 2)), "label": label})
    return pd.DataFrame(rows)


def _spec(**train):
    return {"inputs": {"review": {"type": "text", "buckets": 2048, "max_ngrams": 96, "dim": 16},
                       "stars": {"type": "number", "dim": 4}},
            "fusion": {"dim": 16}, "outputs": {"label": {"type": "category"}},
            "data": {"split": {"valid": 0.2, "seed": 0}},
            "train": {"epochs": 3, "batch_size": 16, "threads": 1, **train}}


def test_wide_half_equals_its_logistic_regression_and_ignores_missing_text():
    from sklearn.linear_model import LogisticRegression

    spec, _ = load_spec(_spec())
    decoded = decode_table(spec, read_table(_table()), with_targets=True)
    pre = Preprocessor.fit(spec, decoded)
    net = FusionModel(spec, pre.state).eval()
    report = wide.fit_wide(spec, pre, net, decoded, None)
    assert report["label"]["C"] == wide.STRENGTHS[1] and report["inputs"] == ["review"]
    x = wide.features(net, pre, decoded, ["review"])
    ref = LogisticRegression(solver="saga", tol=1e-3, max_iter=100, random_state=0, C=report["label"]["C"])
    want = ref.fit(x, pre.targets(decoded)["label"].astype(int)).decision_function(x)
    batch = to_tensors(pre.collate(decoded))
    with torch.no_grad():
        got = net.wide["review"](batch["review"]) + net.wide_bias
    assert np.abs(got.numpy() - want).max() < 1e-3
    assert (want.argmax(1) == pre.targets(decoded)["label"]).mean() > 0.9  # the keyword is linear
    # a missing text adds nothing: only the deep half (and the bias) answer
    net.wide_weight.fill_(1.0)
    with torch.no_grad():
        batch["review__present"][:] = False
        out = net(batch)["label"]
        net.wide_weight.zero_()
        deep = net(batch)["label"]
    assert torch.allclose(out - deep, net.wide_bias.expand_as(out), atol=1e-5)


def test_blend_weights_the_wide_half_on_validation_and_saves_it(tmp_path):
    model = polyfuse.train(_spec(epochs=1, lr=1e-5), data=_table(), out=tmp_path / "m", show_progress=False)
    blend = model.metrics["wide"]["blend"]["label"]
    assert blend["valid_accuracy_wide"] > 0.9 and blend["valid_accuracy_deep"] < 0.6  # an untrained deep half
    assert blend["weight"] > 1.0 and blend["valid_accuracy_blend"] >= blend["valid_accuracy_wide"] - 0.05
    assert model.metrics["valid"]["outputs"]["label"]["accuracy"] > 0.9
    loaded = polyfuse.load(tmp_path / "m")
    assert float(loaded.net.wide_weight[0]) == blend["weight"] or abs(float(loaded.net.wide_weight[0]) - blend["weight"]) < 1e-3
    records = [{"review": "the plot was superb"}, {"stars": 1.0}]
    assert np.allclose(loaded.predict_proba(records).to_numpy(), model.predict_proba(records).to_numpy(), atol=1e-6)


def test_wide_can_be_turned_off():
    spec, _ = load_spec({**_spec(), "inputs": {"review": {"type": "text", "wide": False, "buckets": 2048}}})
    decoded = decode_table(spec, read_table(_table(30)), with_targets=True)
    net = FusionModel(spec, Preprocessor.fit(spec, decoded).state)
    assert len(net.wide) == 0 and not net.wide_slices


def test_a_multilabel_output_gets_a_wide_half_per_label(tmp_path):
    """Labels named by words: the network barely trained (one epoch at a tiny rate, no ensemble) still
    answers them through its per-label wide half, blended on validation."""
    rng = np.random.default_rng(5)
    words = {"cough": "lung", "fracture": "bone", "murmur": "heart"}
    rows = []
    for _ in range(200):
        on = [w for w in words if rng.random() < 0.4]
        rows.append({"note": " ".join([*rng.choice(["seen", "today", "patient", "with"], 3), *on]),
                     "tags": "|".join(words[w] for w in on) or "none"})
    spec = {"inputs": {"note": {"type": "text", "tokenizer": "word", "buckets": 2048, "max_ngrams": 64, "dim": 16}},
            "fusion": {"dim": 16}, "outputs": {"tags": {"type": "multilabel"}},
            "data": {"split": {"valid": 0.25, "test": 0.25, "seed": 0}},
            "train": {"epochs": 1, "batch_size": 16, "lr": 1e-5, "threads": 1, "ensemble": "off", "baseline": False}}
    table = tmp_path / "tags.csv"
    pd.DataFrame(rows).to_csv(table, index=False)
    spec["data"]["train"] = str(table)
    model = polyfuse.train(spec, show_progress=False)
    fitted = model.metrics["wide"]
    assert len(fitted["tags"]["C"]) == 4 and fitted["tags"]["valid_accuracy"] > 0.95  # bone, heart, lung, none
    assert fitted["blend"]["tags"]["weight"] > 0.5
    assert fitted["blend"]["tags"]["valid_accuracy_blend"] > fitted["blend"]["tags"]["valid_accuracy_deep"]
    assert model.metrics["test"]["outputs"]["tags"]["f1_micro"] > 0.9
    spec["inputs"]["note"]["wide"] = False
    alone = polyfuse.train(spec, show_progress=False)
    assert alone.metrics["test"]["outputs"]["tags"]["f1_micro"] < 0.6  # the deep half alone, as trained here

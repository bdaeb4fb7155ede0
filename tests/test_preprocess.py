import io
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

from polyfuse.errors import BadInputError
from polyfuse.preprocess import image, tabular, text
from polyfuse.spec.schema import load_spec


def _cfg(**inputs):
    spec, _ = load_spec({"inputs": inputs, "outputs": {"y": {"type": "category"}}})
    return spec.inputs


def test_image_decode_gray_rgb_resize_and_scale(tmp_path):
    arr = np.zeros((10, 20, 3), np.uint8)
    arr[:, :10] = [255, 0, 0]
    path = tmp_path / "a.png"
    Image.fromarray(arr).save(path)
    rgb = image.decode_image(path, (5, 10), 3)
    assert rgb.shape == (3, 5, 10) and rgb.dtype == np.float32
    assert rgb[0, 2, 1] == pytest.approx(1.0) and rgb[1, 2, 1] == 0.0 and rgb[0, 2, 8] == 0.0
    gray = image.decode_image(path.read_bytes(), (10, 20), 1)
    assert gray.shape == (1, 10, 20)
    assert gray[0, 0, 0] == pytest.approx(0.299, abs=0.01)  # ITU-R 601 luma of pure red
    assert np.allclose(image.decode_image(arr, (10, 20), 3), image.decode_image(path, (10, 20), 3))


def test_corrupt_image_is_named(tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    cfg = _cfg(x={"type": "image", "size": [8, 8]})["x"]
    with pytest.raises(BadInputError, match="broken.png.*could not be decoded"):
        image.decode("broken.png", cfg, tmp_path)
    with pytest.raises(BadInputError, match="missing.png.*not found"):
        image.decode("missing.png", cfg, tmp_path)


def _saved(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


def _mode_images() -> dict[str, tuple[bytes, float]]:
    """name -> (file bytes, the grey level in [0, 1] its left half should decode to)."""
    grey = np.zeros((6, 8), np.uint8)
    grey[:, :4] = 200
    rgb = np.stack([grey] * 3, axis=-1)
    rgba = np.concatenate([rgb, np.full((6, 8, 1), 128, np.uint8)], axis=-1)
    pal = Image.fromarray(grey).convert("P")
    pal_transparent = pal.copy()
    pal_transparent.info["transparency"] = 0
    wide = (grey.astype(np.uint16) * 257)  # 200/255 of the 16-bit range
    return {
        "RGBA": (_saved(Image.fromarray(rgba), "PNG"), 200 / 255),
        "P": (_saved(pal, "PNG"), 200 / 255),
        "P with transparency": (_saved(pal_transparent, "PNG"), 200 / 255),
        "L": (_saved(Image.fromarray(grey), "PNG"), 200 / 255),
        "LA": (_saved(Image.fromarray(rgba).convert("LA"), "PNG"), 200 / 255),
        "1": (_saved(Image.fromarray(grey > 100), "PNG"), 1.0),
        "CMYK": (_saved(Image.fromarray(rgb).convert("CMYK"), "TIFF"), 200 / 255),
        "LAB": (_saved(_lab(grey), "TIFF"), None),
        "I;16": (_saved(Image.fromarray(wide), "PNG"), 200 / 255),
        "I;16 TIFF": (_saved(Image.fromarray(wide), "TIFF"), 200 / 255),
        "I": (_saved(Image.fromarray(wide.astype(np.int32)), "TIFF"), 200 / 255),
        "F": (_saved(Image.fromarray(grey.astype(np.float32) / 255), "TIFF"), 200 / 255),
    }


def _lab(grey: np.ndarray) -> Image.Image:
    """A LAB image whose lightness is high on the left (Pillow cannot convert RGB to LAB itself)."""
    lab = np.zeros(grey.shape + (3,), np.uint8)
    lab[..., 0] = grey
    lab[..., 1:] = 128  # a = b = 0: no colour
    return Image.frombytes("LAB", (grey.shape[1], grey.shape[0]), lab.tobytes())


@pytest.mark.parametrize("mode", list(_mode_images()))
def test_images_in_every_mode_decode_to_the_inputs_channels(mode):
    data, level = _mode_images()[mode]
    for channels in (1, 3):
        out = image.decode_image(data, (6, 8), channels)
        assert out.shape == (channels, 6, 8) and out.dtype == np.float32
        assert np.isfinite(out).all() and out.min() >= 0.0 and out.max() <= 1.0
        left, right = out[:, :, :4].mean(), out[:, :, 4:].mean()
        assert left > right + 0.3, (mode, channels, left, right)  # the bright half stays the bright half
        if level is not None:
            assert left == pytest.approx(level, abs=0.02), (mode, channels)


def test_images_outside_the_allowed_formats_are_refused_before_decoding():
    ico = _saved(Image.new("RGBA", (16, 16)), "ICO")
    with pytest.raises(BadInputError, match="could not be decoded"):
        image.decode_image(ico, (8, 8), 1)
    from polyfuse.errors import MediaTooLarge
    from polyfuse.preprocess.budget import DecodeBudget

    png = _saved(Image.new("L", (300, 200)), "PNG")
    with pytest.raises(MediaTooLarge, match="300x200 = 60000 pixels, over the limit of 1000"):
        image.decode_image(png, (8, 8), 1, budget=DecodeBudget(max_pixels=1000))


def test_image_normalise_and_train_only_augmentation():
    cfg = _cfg(x={"type": "image", "size": [8, 8], "channels": 1,
                  "augment": {"random_crop": 0.75, "flip": True, "noise": 0.1}})["x"]
    imgs = [np.random.default_rng(i).uniform(size=(1, 8, 8)).astype(np.float32) for i in range(4)] + [None]
    state = image.fit(imgs, cfg)
    plain = image.collate(imgs, cfg, state, train=False, rng=None)
    assert plain["present"].tolist() == [True] * 4 + [False]
    assert abs(plain[""][:4].mean()) < 1e-5 and plain[""][:4].std() == pytest.approx(1.0, abs=1e-4)
    assert not plain[""][4].any()
    a = image.collate(imgs, cfg, state, train=True, rng=np.random.default_rng(0))
    b = image.collate(imgs, cfg, state, train=True, rng=np.random.default_rng(0))
    assert np.array_equal(a[""], b[""]) and not np.allclose(a[""], plain[""])


def test_image_noise_p_leaves_a_share_of_images_clean():
    cfg = _cfg(x={"type": "image", "size": [8, 8], "channels": 1, "augment": {"noise": 0.5, "noise_p": 0.25}})["x"]
    img = np.full((1, 8, 8), 0.5, np.float32)
    rng = np.random.default_rng(0)
    clean = sum(np.array_equal(image.augment(img, cfg.augment, rng), img) for _ in range(400))
    assert 250 < clean < 350  # ~75 % untouched
    with pytest.raises(Exception, match="noise_p"):
        _cfg(x={"type": "image", "augment": {"noise": 0.5, "noise_p": 0}})


def test_word_and_char_tokenisers():
    assert text.tokenize("Hello, World!") == ["hello", ",", "world", "!"]
    assert text.tokenize("我爱北京 天安门", "char") == ["我", "爱", "北", "京", "天", "安", "门"]
    assert text.tokenize("Ça va", "word", lowercase=False) == ["Ça", "va"]


def test_vocab_min_count_max_size_unknown_and_padding():
    cfg = _cfg(t={"type": "text", "min_count": 2, "max_vocab": 4, "max_length": 3, "encoder": "bigru"})["t"]
    docs = [text.decode(s, cfg, None) for s in ["a b c", "a b", "a d", "b"]]
    state = text.fit(docs, cfg)
    assert state["vocab"] == ["<pad>", "<unk>", "a", "b"]
    out = text.collate([["a", "zzz", "b", "a"], None, []], cfg, state, False, None)
    assert out[""].tolist() == [[2, 1, 3], [0, 0, 0], [0, 0, 0]]
    assert out["length"].tolist() == [3, 0, 0] and out["present"].tolist() == [True, False, False]


def test_number_impute_standardise_and_bad_value():
    cfg = _cfg(n={"type": "number", "impute": "median"})["n"]
    values = [tabular.decode_number(v, cfg, None) for v in ["1", 2, 3.0, "10"]]
    state = tabular.fit_number(values + [None], cfg)
    assert state["mean"] == pytest.approx(4.0) and state["impute"] == pytest.approx(2.5)
    out = tabular.collate_number([4.0, None], cfg, state, False, None)
    assert out[""][0, 0] == pytest.approx(0.0) and out["present"].tolist() == [True, False]
    assert out[""][1, 0] == pytest.approx((2.5 - 4.0) / state["std"], rel=1e-5)
    with pytest.raises(BadInputError, match="expected a number, got text of 3 characters"):
        tabular.decode_number("abc", cfg, None)


def test_numbers_beyond_float32_are_refused_and_outliers_stay_finite():
    """3.8e261 parses as a Python float but is inf in float32: refused with the range named. A huge but
    representable outlier is clipped after standardising, so no layer can overflow into NaN answers."""
    cfg = _cfg(n={"type": "number"})["n"]
    with pytest.raises(BadInputError, match="out of range.*largest float32"):
        tabular.decode_number(3.8e261, cfg, None)
    state = {"mean": 0.0, "std": 1.0, "impute": 0.0}
    out = tabular.collate_number([3e38, -3e38, 1.5], cfg, state, False, None)[""][:, 0]
    assert np.isfinite(out).all()
    assert out.tolist() == [tabular.CLIP_STD, -tabular.CLIP_STD, 1.5]


def test_category_vocab_and_unknown_bucket():
    cfg = _cfg(c={"type": "category"})["c"]
    state = tabular.fit_category(["red", "blue", "red", None], cfg)
    assert state["vocab"] == ["<unk>", "red", "blue"]
    out = tabular.collate_category(["blue", "purple", None], cfg, state, False, None)
    assert out[""].tolist() == [2, 0, 0] and out["present"].tolist() == [True, True, False]
    assert tabular.decode_category(3.0, cfg, None) == "3"


def test_preprocess_and_audio_import_without_torch():
    code = textwrap.dedent("""
        import sys
        sys.modules['torch'] = None  # any 'import torch' now fails
        import polyfuse.preprocess.pipeline, polyfuse.preprocess.audio, polyfuse.spec.schema
        assert 'torch' not in [m for m in sys.modules if sys.modules[m] is not None and m.startswith('torch')]
        print('ok')
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"

"""Image metadata (EXIF GPS, camera, owner) never gets past decoding; the EXIF orientation is applied."""
from __future__ import annotations

import io

import numpy as np
from PIL import Image

from polyfuse.preprocess.image import decode_image, load_image, to_channels

OWNER, MAKE = "Jane Q. Owner", "PhoneMaker X1"


def phone_jpeg() -> tuple[bytes, np.ndarray]:
    """A 24x12 JPEG stored sideways with Orientation 6 (turn 90 degrees clockwise to view), GPS, camera and
    owner tags; and the upright pixels a viewer shows."""
    upright = np.zeros((24, 12), dtype=np.uint8)
    upright[:6] = 255  # bright top rows: where they end up shows the turn
    stored = np.rot90(upright, 1)  # what a camera held in portrait writes, plus "rotate 90 CW" in EXIF
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation
    exif[0x010F] = MAKE  # Make
    exif[0x013B] = OWNER  # Artist
    exif[0x8298] = OWNER  # Copyright
    gps = exif.get_ifd(0x8825)
    gps.update({1: "N", 2: (52.0, 31.0, 12.5), 3: "E", 4: (13.0, 24.0, 3.0)})
    buf = io.BytesIO()
    Image.fromarray(stored).save(buf, "JPEG", quality=95, exif=exif.tobytes(), comment=OWNER.encode())
    return buf.getvalue(), upright


def test_jpeg_with_gps_exif_decodes_to_upright_pixels_only():
    data, upright = phone_jpeg()
    assert OWNER.encode() in data and Image.open(io.BytesIO(data)).getexif().get_ifd(0x8825)  # the test is real

    img = load_image(data, lambda im: to_channels(im, 1))
    assert img.size == (12, 24)  # turned upright: width 12, height 24
    assert img.info == {} and dict(img.getexif()) == {} and not img.getexif().get_ifd(0x8825)

    pixels = decode_image(data, (24, 12), channels=1)
    assert isinstance(pixels, np.ndarray) and pixels.shape == (1, 24, 12) and pixels.dtype == np.float32
    assert np.abs(pixels[0] - upright / 255.0).mean() < 0.03  # JPEG is lossy; a wrong turn is off by ~0.5

    same_mode = load_image(data, lambda im: im)  # no conversion needed: still no metadata
    assert same_mode.info == {} and dict(same_mode.getexif()) == {}


def test_images_without_orientation_are_unchanged():
    arr = np.arange(48, dtype=np.uint8).reshape(6, 8) * 5
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    out = decode_image(buf.getvalue(), (6, 8), channels=1)
    assert np.array_equal((out[0] * 255).round().astype(np.uint8), arr)


def test_init_profiles_the_upright_size():
    from polyfuse.preprocess.image import upright_size

    data, upright = phone_jpeg()
    with Image.open(io.BytesIO(data)) as img:
        assert img.size == (24, 12) and upright_size(img) == (12, 24)

"""Preprocessing: every Pillow mode, every size, and one tensor checked by hand."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from fer_edge.errors import ImageError
from fer_edge.preprocess import (
    PreprocessSpec,
    checked_gray,
    load_image,
    normalize,
    preprocess,
    preprocess_gray,
    to_gray,
)


def _uniform(mode: str, size=(6, 4)) -> Image.Image:
    """A uniform image of ``mode`` whose luma is exactly 100."""
    if mode == "L":
        return Image.new("L", size, 100)
    if mode == "LA":
        return Image.new("LA", size, (100, 7))
    if mode == "RGB":
        return Image.new("RGB", size, (100, 100, 100))
    if mode == "RGBA":
        # Fully transparent: the colour under the alpha is what counts.
        return Image.new("RGBA", size, (100, 100, 100, 0))
    if mode == "P":
        img = Image.new("P", size, 3)
        palette = [0, 0, 0] * 256
        palette[9:12] = [100, 100, 100]
        img.putpalette(palette)
        return img
    if mode == "I;16":
        return Image.frombytes("I;16", size, np.full(size[::-1], 100 * 257, "<u2").tobytes())
    if mode == "I":
        return Image.frombytes("I", size, np.full(size[::-1], 100 * 257, "=i4").tobytes())
    if mode == "F":
        return Image.frombytes("F", size, np.full(size[::-1], 100 / 255, "=f4").tobytes())
    if mode == "CMYK":
        # Pillow: R = 255 - (C + K), so K = 155 with C = M = Y = 0 gives grey 100.
        return Image.new("CMYK", size, (0, 0, 0, 155))
    if mode == "1":
        return Image.new("1", size, 1)
    raise AssertionError(mode)


@pytest.mark.parametrize("mode", ["L", "LA", "RGB", "RGBA", "P", "I;16", "I", "F", "CMYK"])
def test_every_mode_becomes_the_same_grey(mode):
    gray = to_gray(_uniform(mode))
    assert gray.mode == "L"
    assert np.asarray(gray).tolist() == np.full((4, 6), 100).tolist()


@pytest.mark.parametrize(("top", "saved_as"), [(65535, "png"), (65535, None), (2**31 - 1, "tiff")])
def test_a_32_bit_integer_image_is_scaled_to_8_bits_not_clipped(tmp_path, top, saved_as):
    # A ramp over the range: 16-bit (a 16-bit PNG read as "I") or 32-bit (an integer TIFF).
    levels = np.arange(256, dtype=np.int64)
    ramp = (levels * top // 255).reshape(16, 16)
    if saved_as == "png":
        Image.fromarray(ramp.astype(np.uint16)).save(tmp_path / "ramp.png")
        img = Image.open(tmp_path / "ramp.png").convert("I")
    else:
        img = Image.frombytes("I", (16, 16), ramp.astype("=i4").tobytes())
        if saved_as == "tiff":
            img.save(tmp_path / "ramp.tif")
            img = Image.open(tmp_path / "ramp.tif")
    assert img.mode == "I" and np.asarray(img).max() == top
    gray = np.asarray(to_gray(img)).astype(int)
    assert np.abs(gray - levels.reshape(16, 16)).max() <= 1  # the whole contrast, in order


def test_bilevel_image_is_black_and_white():
    assert set(np.asarray(to_gray(_uniform("1"))).ravel()) == {255}


@pytest.mark.parametrize("size", [(1, 1), (1, 500), (500, 1), (48, 48), (97, 13), (2000, 3)])
@pytest.mark.parametrize("input_size", [8, 32, 96])
def test_any_size_gives_the_model_shape(size, input_size):
    spec = PreprocessSpec(input_size=input_size)
    x = preprocess(Image.new("RGB", size, (100, 100, 100)), spec)
    assert x.shape == (3, input_size, input_size)
    assert x.dtype == np.float32
    # A uniform image stays uniform through the resize.
    assert np.allclose(x, (100 / 255 - 0.5) / 0.5, atol=1e-6)


def test_exact_tensor_for_a_tiny_image_computed_by_hand():
    # 8x8 RGB (no resize at input_size 8): columns 0-1 red, 2-3 green, 4-5
    # blue, 6-7 white. Pillow's luma is (R*19595 + G*38470 + B*7471 + 32768) >> 16:
    #   red   (255,0,0): (4996725 + 32768) >> 16 = 76
    #   green (0,255,0): (9809850 + 32768) >> 16 = 150
    #   blue  (0,0,255): (1905105 + 32768) >> 16 = 29
    #   white: 255
    rgb = np.zeros((8, 8, 3), dtype=np.uint8)
    rgb[:, 0:2] = (255, 0, 0)
    rgb[:, 2:4] = (0, 255, 0)
    rgb[:, 4:6] = (0, 0, 255)
    rgb[:, 6:8] = (255, 255, 255)
    spec = PreprocessSpec(input_size=8, mean=(0.5, 0.4, 0.3), std=(0.5, 0.25, 0.2))
    x = preprocess(rgb, spec)
    # (grey / 255 - mean[c]) / std[c], worked out on paper to 6 decimals:
    by_hand = {
        # grey: (channel 0, channel 1, channel 2)
        76: (-0.403922, -0.407843, -0.009804),
        150: (0.176471, 0.752941, 1.441176),
        29: (-0.772549, -1.145098, -0.931373),
        255: (1.0, 2.4, 3.5),
    }
    for col, grey in zip((0, 2, 4, 6), (76, 150, 29, 255)):
        for c in range(3):
            assert np.allclose(x[c, :, col:col + 2], by_hand[grey][c], atol=1e-6), (grey, c)


def test_normalize_works_on_a_batch():
    spec = PreprocessSpec(input_size=8)
    batch = np.stack([np.zeros((8, 8), np.uint8), np.full((8, 8), 255, np.uint8)])
    x = normalize(batch, spec)
    assert x.shape == (2, 3, 8, 8)
    assert x[0].max() == -1.0 and x[1].min() == 1.0


@pytest.mark.parametrize("arr, expected", [
    (np.full((5, 5), 100, np.uint8), 100),
    (np.full((5, 5, 3), 100, np.uint8), 100),
    (np.full((5, 5, 4), 100, np.uint8), 100),
    (np.full((5, 5, 1), 100, np.uint8), 100),
    (np.full((5, 5), 100 / 255, np.float32), 100),
    (np.full((5, 5), 100 * 257, np.uint16), 100),
])
def test_arrays_of_each_layout_and_dtype(arr, expected):
    assert (preprocess_gray(arr, 8) == expected).all()


@pytest.mark.parametrize("arr", [
    np.zeros((5,), np.uint8),
    np.zeros((5, 5, 2), np.uint8),
    np.zeros((0, 5), np.uint8),
    np.full((5, 5), np.nan, np.float32),
    np.zeros((5, 5), np.complex64),
])
def test_unusable_arrays_raise_image_error(arr):
    with pytest.raises(ImageError, match="<ndarray>"):
        load_image(arr)


def test_unsupported_input_type_names_the_accepted_ones():
    with pytest.raises(ImageError, match="give a path, a PIL image or a numpy array"):
        load_image(3.5)


def test_modes_pillow_cannot_convert_raise_image_error(monkeypatch):
    img = Image.new("RGB", (4, 4))

    def refuse(*_args, **_kwargs):
        raise ValueError("conversion from XYZ to L not supported")

    monkeypatch.setattr(img, "convert", refuse)
    with pytest.raises(ImageError, match=r"face\.png: cannot convert RGB image to grayscale"):
        checked_gray(img, 8, "face.png")

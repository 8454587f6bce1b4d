"""Tests for bcop.preprocess: a user's image of a digit to MNIST's format."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from bcop import preprocess


def _draw(shape: str, size: int = 200, mode: str = "L") -> Image.Image:
    """Black strokes on white: "zero" (ring, centred mass) or "seven" (off-centre mass)."""
    image = Image.new(mode, (size, size), "white")
    draw = ImageDraw.Draw(image)
    scale = size / 200
    if shape == "zero":
        draw.ellipse([s * scale for s in (60, 30, 140, 170)], outline="black", width=round(12 * scale))
    elif shape == "seven":
        draw.line([s * scale for s in (20, 20, 110, 20, 50, 120)], fill="black", width=round(10 * scale))
    else:
        draw.rectangle([s * scale for s in (40, 90, 160, 110)], fill="black")
    return image


def _centre_of_mass(digit: torch.Tensor) -> tuple[float, float]:
    pixels = digit[0].double()
    index = torch.arange(28, dtype=torch.float64)
    mass = pixels.sum()
    centre_y = (pixels.sum(1) * index).sum() / mass
    return centre_y.item(), ((pixels.sum(0) * index).sum() / mass).item()


def test_black_on_white_digit_becomes_white_on_black_in_central_20x20_box() -> None:
    digit = preprocess.to_mnist_format(_draw("zero"))
    assert digit.shape == (1, 28, 28) and digit.dtype == torch.float32
    assert digit.min().item() >= 0.0 and digit.max().item() == pytest.approx(1.0, abs=0.05)
    rows = torch.nonzero(digit[0].gt(0.1).any(1)).flatten()
    cols = torch.nonzero(digit[0].gt(0.1).any(0)).flatten()
    assert rows.min() >= 4 and rows.max() <= 23 and cols.min() >= 4 and cols.max() <= 23
    assert rows.max() - rows.min() + 1 >= 19
    assert digit[0, 14, 14].item() < 0.1


def test_off_centre_digit_has_centre_of_mass_within_1px_of_14_14() -> None:
    centre_y, centre_x = _centre_of_mass(preprocess.to_mnist_format(_draw("seven")))
    assert abs(centre_y - 14) <= 1 and abs(centre_x - 14) <= 1


def test_transparent_background_sketch_matches_white_background() -> None:
    ink = np.asarray(_draw("seven")) < 128
    rgba = np.zeros((*ink.shape, 4), dtype=np.uint8)
    rgba[ink] = (0, 0, 0, 255)
    expected = preprocess.to_mnist_format(_draw("seven"))
    torch.testing.assert_close(preprocess.to_mnist_format(rgba), expected, atol=1e-6, rtol=0)
    sketch = {"background": None, "layers": [rgba], "composite": rgba}
    torch.testing.assert_close(preprocess.to_mnist_format(sketch), expected, atol=1e-6, rtol=0)


def test_16_bit_png_is_scaled_not_clipped(tmp_path: Path) -> None:
    ink = np.asarray(_draw("seven")) < 128
    pixels = np.where(ink, 20_000, 60_000).astype(np.uint16)
    path = tmp_path / "digit16.png"
    Image.fromarray(pixels).save(path)
    assert Image.open(path).mode.startswith("I")
    expected = preprocess.to_mnist_format(pixels.astype(np.float64) / 65535)
    torch.testing.assert_close(preprocess.to_mnist_format(path), expected, atol=0.02, rtol=0)


def test_animated_gif_uses_first_frame(tmp_path: Path) -> None:
    first, second = _draw("seven", size=100), _draw("bar", size=100)
    path = tmp_path / "digit.gif"
    first.save(path, save_all=True, append_images=[second], duration=100, loop=0)
    assert Image.open(path).is_animated
    got = preprocess.to_mnist_format(str(path))
    torch.testing.assert_close(got, preprocess.to_mnist_format(first), atol=1e-6, rtol=0)
    assert not torch.allclose(got, preprocess.to_mnist_format(second), atol=0.1)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_a_10000x10000_image_is_reduced_before_any_full_size_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A JPEG is decoded at a reduced scale (draft: at most 1/8 of each side, so <= 1250 px here)
    and every image reaches the ink analysis with its longer side <= MAX_SIDE, which is what
    keeps a huge upload fast; the digit is still centred within 1 px."""
    pixels = np.full((10_000, 10_000), 255, dtype=np.uint8)
    pixels[2_000:8_000, 4_600:5_400] = 0
    path = tmp_path / "huge.jpg"
    Image.fromarray(pixels).save(path, quality=90)
    shrunk, analysed = [], []
    shrink, ink_on_black = preprocess._shrink, preprocess._ink_on_black
    monkeypatch.setattr(preprocess, "_shrink", lambda image: shrunk.append(image.size) or shrink(image))
    monkeypatch.setattr(
        preprocess, "_ink_on_black", lambda gray: analysed.append(gray.shape) or ink_on_black(gray)
    )
    from_file = preprocess.to_mnist_format(path)
    assert shrunk and max(shrunk[0]) <= 10_000 // 8, f"the JPEG was decoded at {shrunk[0]}"
    from_array = preprocess.to_mnist_format(pixels)
    assert len(analysed) == 2 and all(max(shape) <= preprocess.MAX_SIDE for shape in analysed), analysed
    for digit in (from_file, from_array):
        assert digit.shape == (1, 28, 28)
        centre_y, centre_x = _centre_of_mass(digit)
        assert abs(centre_y - 14) <= 1 and abs(centre_x - 14) <= 1


def test_image_over_pil_pixel_limit_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "digit.png"
    _draw("seven", size=100).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000)
    with pytest.raises(ValueError, match="too large"):
        preprocess.to_mnist_format(path)


def _blank_rgba() -> np.ndarray:
    return np.zeros((50, 50, 4), dtype=np.uint8)


@pytest.mark.parametrize(
    ("make_input", "match"),
    [
        (lambda tmp: Image.new("L", (50, 50), "white"), "the image is blank: draw or upload"),
        (lambda tmp: np.zeros((50, 50), dtype=np.uint8), "the image is blank"),
        (lambda tmp: {"background": None, "layers": [], "composite": None}, "the image is blank"),
        (lambda tmp: {"background": None, "layers": [], "composite": _blank_rgba()}, "blank"),
        (lambda tmp: np.zeros((2, 3, 4, 5)), r"image must be 2-D \(H, W\) or 3-D \(H, W, C\)"),
        (lambda tmp: np.zeros((5, 5, 2)), r"image must be 2-D \(H, W\) or 3-D"),
        (lambda tmp: np.full((5, 5), 7.0), r"must lie in \[0, 1\]"),
        (lambda tmp: tmp / "missing.png", "no such file"),
    ],
)
def test_bad_inputs_raise_value_error_with_readable_message(
    tmp_path: Path, make_input: object, match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        preprocess.to_mnist_format(make_input(tmp_path))


def test_non_image_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "notes.png"
    path.write_text("not pixels")
    with pytest.raises(ValueError, match="could not read .* as an image") as info:
        preprocess.to_mnist_format(path)
    assert str(path) in str(info.value)

"""A user's image of a digit to MNIST's format: (1, 28, 28) in [0, 1], white ink on black,
the digit fitted to 20 px and centred by mass, the way MNIST itself was made.

Accepts PIL images, numpy arrays, image files and the dict of a Gradio Sketchpad; every input it
cannot use raises a ``ValueError`` that says what was wrong (:data:`BLANK_MESSAGE` for a blank
image).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

__all__ = ["BLANK_MESSAGE", "ImageInput", "MAX_SIDE", "to_mnist_format", "unreadable_image_message"]

MNIST_SIZE = 28  # the canvas's side
MNIST_BOX = 20  # the side the digit's longer extent is fitted to
MAX_SIDE = 1024  # larger images are downscaled first
INK_THRESHOLD = 0.1  # a pixel above this (in [0, 1], background 0) is ink
MIN_CONTRAST = 0.1  # brightest ink minus background below this: a blank image
BLANK_MESSAGE = "the image is blank: draw or upload a digit"


def unreadable_image_message(name: str, err: BaseException) -> str:
    """What to tell someone whose image file ``name`` could not be read (``err`` is why): the
    one wording for the library, the demo's page and its API."""
    if Path(name).suffix.lower() == ".svg":
        return f"{name} is a vector (SVG) image: export it as a PNG and upload that"
    if isinstance(err, Image.DecompressionBombError):
        return f"{name} is too large to open safely: scale it down (a digit needs at most 1000×1000 pixels)"
    if isinstance(err, OSError) and not isinstance(err, UnidentifiedImageError):
        return f"{name} is damaged or incomplete ({err}): upload the whole image file again"
    return f"could not read {name} as an image: upload a PNG, JPEG or GIF of a digit"


ImageInput = Image.Image | np.ndarray | str | os.PathLike | dict


def _to_uint8(array: np.ndarray) -> np.ndarray:
    """bool / uint8 / uint16 / float in [0, 1] -> uint8 with the same brightness."""
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * 255
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.uint16:
        return ((array.astype(np.uint32) + 128) // 257).astype(np.uint8)
    if np.issubdtype(array.dtype, np.floating):
        low, high = float(np.min(array)), float(np.max(array))
        if not (0.0 <= low and high <= 1.0):
            raise ValueError(
                f"float image values must lie in [0, 1], got [{low}, {high}]: "
                f"divide by 255 if they are 0-255 pixel values"
            )
        return np.rint(array * 255.0).astype(np.uint8)
    raise ValueError(f"unsupported pixel type {array.dtype}: use uint8, uint16 or float in [0, 1]")


def _array_to_pil(array: np.ndarray) -> Image.Image:
    """(H, W) or (H, W, 1|3|4) array -> PIL image in mode L, RGB or RGBA."""
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (1, 3, 4)):
        raise ValueError(
            f"image must be 2-D (H, W) or 3-D (H, W, C) with C in 1, 3 or 4, got shape {array.shape}"
        )
    if array.size == 0:
        raise ValueError(f"the image is empty (shape {array.shape})")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    return Image.fromarray(np.ascontiguousarray(_to_uint8(array)))


def _shrink(image: Image.Image) -> Image.Image:
    """Antialiased downscale so the longer side is at most MAX_SIDE (never upscales)."""
    if max(image.size) <= MAX_SIDE:
        return image
    scale = MAX_SIDE / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.Resampling.LANCZOS, reducing_gap=2.0)


def _backdrop(rgba: Image.Image) -> tuple[int, int, int, int]:
    """What fills the transparency of an RGBA image: white, unless its visible pixels are light
    on average (a white digit on a transparent background), then black, so the ink contrasts."""
    pixels = np.asarray(rgba, dtype=np.float64)
    alpha = pixels[..., 3]
    light = alpha.sum() > 0 and (pixels[..., :3].mean(axis=2) * alpha).sum() / alpha.sum() > 127.5
    return (0, 0, 0, 255) if light else (255, 255, 255, 255)


def _pil_to_gray(image: Image.Image, name: str = "the image") -> np.ndarray:
    """PIL image -> (H, W) float64 in [0, 1], longer side at most MAX_SIDE, transparency
    composited onto white (onto black for light ink, see _backdrop). Animated images use frame 0."""
    if getattr(image, "is_animated", False):
        image.seek(0)
    image.draft(None, (MAX_SIDE, MAX_SIDE))  # JPEG: decode at a reduced scale; else no-op
    try:
        if image.mode in ("I", "I;16", "I;16L", "I;16B", "I;16N", "F"):
            pixels = np.asarray(_shrink(image))
            if image.mode == "I":  # 16-bit PNGs open as "I" in older Pillow
                pixels = np.clip(pixels, 0, 65535).astype(np.uint16)
            image = _array_to_pil(pixels)
        if image.has_transparency_data:
            image = _shrink(image.convert("RGBA"))
            image = Image.alpha_composite(Image.new("RGBA", image.size, _backdrop(image)), image)
        image = _shrink(image.convert("L"))
    except OSError as err:
        raise ValueError(unreadable_image_message(name, err)) from err
    return np.asarray(image, dtype=np.float64) / 255.0


def _file_to_gray(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as image:
            return _pil_to_gray(image, str(path))
    except FileNotFoundError as err:
        raise ValueError(f"no such file: {path}") from err
    except (Image.DecompressionBombError, OSError) as err:
        raise ValueError(unreadable_image_message(str(path), err)) from err


def _to_gray(image: ImageInput) -> np.ndarray:
    """Any accepted input -> (H, W) float64 in [0, 1] with the longer side <= MAX_SIDE."""
    if isinstance(image, dict):
        composite = image.get("composite")
        if composite is None:
            raise ValueError(BLANK_MESSAGE)
        return _to_gray(composite)
    if isinstance(image, str | os.PathLike):
        return _file_to_gray(Path(image))
    if isinstance(image, np.ndarray):
        return _pil_to_gray(_array_to_pil(image))
    if isinstance(image, Image.Image):
        return _pil_to_gray(image)
    raise TypeError(
        f"expected a PIL image, numpy array, file path or Gradio sketch dict, got {type(image).__name__}"
    )


def _ink_on_black(gray: np.ndarray) -> np.ndarray:
    """White ink on black, stretched so the background is 0 and the brightest ink is 1.

    The background is the median of the border pixels; a bright background is inverted.
    """
    border = np.concatenate([gray[0], gray[-1], gray[1:-1, 0], gray[1:-1, -1]])
    background = float(np.median(border))
    if background > 0.5:
        gray, background = 1.0 - gray, 1.0 - background
    peak = float(gray.max())
    if peak - background < MIN_CONTRAST:
        raise ValueError(BLANK_MESSAGE)
    return np.clip((gray - background) / (peak - background), 0.0, 1.0)


def _center_in_canvas(ink: np.ndarray) -> np.ndarray:
    """Crop to the ink, fit the longer side to 20 px, centre by mass in a 28 x 28 canvas."""
    rows = np.flatnonzero((ink > INK_THRESHOLD).any(axis=1))
    cols = np.flatnonzero((ink > INK_THRESHOLD).any(axis=0))
    crop = ink[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    height, width = crop.shape
    scale = MNIST_BOX / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    resized = Image.fromarray(crop.astype(np.float32)).resize(size, Image.Resampling.LANCZOS)
    patch = np.clip(np.asarray(resized, dtype=np.float64), 0.0, 1.0)
    height, width = patch.shape
    mass = patch.sum()
    centre_y = (patch.sum(axis=1) * np.arange(height)).sum() / mass
    centre_x = (patch.sum(axis=0) * np.arange(width)).sum() / mass
    middle = MNIST_SIZE / 2
    top = int(np.clip(round(middle - centre_y), 0, MNIST_SIZE - height))
    left = int(np.clip(round(middle - centre_x), 0, MNIST_SIZE - width))
    canvas = np.zeros((MNIST_SIZE, MNIST_SIZE), dtype=np.float32)
    canvas[top : top + height, left : left + width] = patch
    return canvas


def to_mnist_format(image: ImageInput) -> torch.Tensor:
    """Turn an arbitrary image of a digit into MNIST's format, the way MNIST was made.

    Steps: grayscale (transparency composited onto white, 16-bit scaled to 8-bit); white ink on
    black (inverted when the border's median is bright) with the background stretched to 0 and
    the brightest ink to 1; crop to the ink (pixels above ``INK_THRESHOLD``); antialiased resize
    so the longer side is 20 px; place in a 28 x 28 black canvas with the centre of mass at
    pixel (14, 14), shifted no further than keeps the digit inside the canvas. Images larger than
    ``MAX_SIDE`` are downscaled first (JPEGs while decoding); animated images use frame 0.

    Args:
        image: a PIL image; a numpy array (H, W) or (H, W, 1|3|4) of uint8, uint16, bool or
            float in [0, 1]; a path to an image file; or the dict of a Gradio Sketchpad /
            ImageEditor (its "composite" entry is used).

    Returns:
        (1, 28, 28) float32 in [0, 1], white digit on black.

    Raises:
        ValueError: blank image, unreadable or oversized file, wrong array shape or pixel type.
    """
    ink = _ink_on_black(_to_gray(image))
    return torch.from_numpy(_center_in_canvas(ink)).unsqueeze(0)

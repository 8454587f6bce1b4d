"""The image a visitor gives (a drawing, an upload or an example) as the models' input."""

from __future__ import annotations

import functools
import hashlib
import io
import os
import tempfile
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
import torch
from PIL import Image

from bcop.preprocess import BLANK_MESSAGE, to_mnist_format, unreadable_image_message

PREVIEW_DIR = Path(tempfile.gettempdir()) / "bcop-app" / "inputs"
NO_IMAGE_MESSAGE = "no image yet: draw a digit, upload an image or pick an example"


def _drawing(sketch: dict | None) -> torch.Tensor | None:
    """The model input of a drawing, or None when nothing is drawn (an empty or cleared canvas)."""
    if sketch is None:
        return None
    try:
        return to_mnist_format(sketch).unsqueeze(0)
    except ValueError as err:
        if str(err) == BLANK_MESSAGE:
            return None
        raise


class UnreadableUpload(str):
    """What :func:`readable_upload` passes on for a file it cannot read: the reason, as a str so
    that Gradio hands it to the event, which can then clear the results of the previous image."""


def _upload(path: str) -> torch.Tensor:
    """The model input of an uploaded file; errors name the file, not the server's copy of it."""
    if isinstance(path, UnreadableUpload):
        raise ValueError(str(path))
    try:
        return to_mnist_format(path).unsqueeze(0)
    except ValueError as err:
        raise ValueError(str(err).replace(str(path), Path(path).name)) from err


def model_input(sketch: dict | None, upload: str | None) -> torch.Tensor:
    """The (1, 1, 28, 28) input in [0, 1] from the upload when there is one, else from the drawing.

    Raises:
        ValueError: nothing given (NO_IMAGE_MESSAGE), or an image without a digit or unreadable.
    """
    x = current_input(sketch, upload)
    if x is None:
        raise ValueError(NO_IMAGE_MESSAGE)
    return x


def current_input(sketch: dict | None, upload: str | None) -> torch.Tensor | None:
    """:func:`model_input`, or None when there is no image (nothing given, or an empty canvas)."""
    return _upload(upload) if upload is not None else _drawing(sketch)


def as_image(x: torch.Tensor) -> np.ndarray:
    """(..., H, W) in [0, 1] -> (H, W) uint8 for display."""
    return (x.detach().reshape(x.shape[-2:]).clamp(0, 1) * 255).round().to(torch.uint8).numpy()


def png_file(x: torch.Tensor) -> str:
    """The image ``x`` in [0, 1] as a lossless grayscale PNG file named after its content.

    Gradio caches an array output by rewriting one content-named file in place, so a client
    fetching the same image for a concurrent request can read it half written. Returning a
    path instead makes Gradio copy the file with an atomic rename; the file here is written
    the same way.
    """
    buffer = io.BytesIO()
    Image.fromarray(as_image(x)).save(buffer, format="PNG")
    data = buffer.getvalue()
    path = PREVIEW_DIR / f"{hashlib.sha256(data).hexdigest()[:40]}.png"
    if not path.is_file():
        PREVIEW_DIR.mkdir(parents=True, exist_ok=True)
        fd, staging = tempfile.mkstemp(dir=PREVIEW_DIR, suffix=".part")
        with os.fdopen(fd, "wb") as file:
            file.write(data)
        os.replace(staging, path)
    return str(path)


def readable_upload(component: gr.Image) -> gr.Image:
    """Make an image input pass on an :class:`UnreadableUpload` saying what is wrong, naming the
    file, for unreadable, vector (SVG) and oversized uploads (the stock component lets the
    imaging library's exception through, and passes SVG files on as they are); :func:`model_input`
    raises it. Wraps the instance's ``preprocess``: a subclass would make Gradio write a ``.pyi``
    stub beside this file."""
    preprocess = component.preprocess

    @functools.wraps(preprocess)
    def checked(payload: Any) -> Any:
        name = getattr(payload, "orig_name", None) or "the upload"
        if Path(name).suffix.lower() == ".svg":  # the stock component passes it on unread
            return UnreadableUpload(unreadable_image_message(name, ValueError("a vector image")))
        try:
            return preprocess(payload)
        except Exception as err:
            return UnreadableUpload(unreadable_image_message(name, err))

    component.preprocess = checked  # type: ignore[method-assign]
    return component

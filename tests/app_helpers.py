"""What the app's tests share: fresh Small models in a checkpoints folder, the app started in
this process on a free port, and test images."""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
import torch
from PIL import Image

import app
from bcop import create_model
from bcop.hub import EVAL_RESULTS_FILE, save_model
from benchmarks.common import free_port
from demo import store

MODELS = ["bcop-small-mnist", "plain-small-mnist", "rko-small-mnist"]
EXAMPLES = Path(app.__file__).resolve().parent / "examples"
EVALUATED = {
    "model": "bcop-small-mnist",
    "dataset": "mnist",
    "n_test": 10000,
    "eps": 1.58,
    "pgd_n": 10000,
    "clean": 0.975,
    "certified": {"0": 0.975, "1": 0.7, "1.58": 0.456, "2": 0.2},
    "pgd": {"1.58": 0.789},
    "pgd_paper_attack": {"1.58": 0.812},
    "fgm": {"1.58": 0.8},
    "lipschitz": 1.0,
    "paper": {"clean": 97.54, "certified": 45.62, "pgd": 75.01},
}
CARD = (
    "---\nlibrary_name: bcop\nlicense: mit\ntags:\n- lipschitz\n---\n\n"
    "# {name}\n\nA freshly initialised test model.\n"
)


def make_checkpoints(root: Path, names: list[str]) -> Path:
    """Fresh (untrained) models in Hub layout; the first gets a card (with YAML front matter)
    and evaluation results (schema 1: fractions)."""
    for i, name in enumerate(names):
        torch.manual_seed(i)
        save_model(create_model(name), root / name, card=CARD.format(name=name) if i == 0 else None)
    (root / names[0] / EVAL_RESULTS_FILE).write_text(json.dumps(EVALUATED))
    return root


@contextmanager
def served(root: Path, unreachable_hub_owner: str = "") -> Iterator[gr.Blocks]:
    """The app on 127.0.0.1 (a free port) serving the checkpoints in ``root``, Hub off; with
    ``unreachable_hub_owner``, as when that owner's Hub cannot be reached (every model's source
    then says so)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BCOP_CHECKPOINTS", str(root))
        mp.setenv("BCOP_HUB_OWNER", unreachable_hub_owner)
        if unreachable_hub_owner:
            mp.setattr(store, "hub_reachable", lambda: False)
        torch.set_num_threads(1)
        demo = app.launch(host="127.0.0.1", port=free_port(), warm=False)
        try:
            yield demo
        finally:
            demo.close()


def png(folder: Path, name: str, array: np.ndarray, **save: object) -> str:
    path = folder / name
    Image.fromarray(array).save(path, **save)
    return str(path)


def digit_strokes(size: int, dtype: type = np.uint8, high: int = 255) -> np.ndarray:
    """A dark "7" on a light background, (size, size)."""
    image = np.full((size, size), high, dtype=dtype)
    s = size // 10
    image[2 * s : 3 * s, 2 * s : 8 * s] = 0
    for row in range(3 * s, 9 * s):
        col = 8 * s - (row - 3 * s) // 2
        image[row, col - s // 2 : col + s // 2] = 0
    return image


def white_on_transparent(folder: Path, size: int = 64) -> str:
    """A white "7" on a fully transparent background (RGBA PNG)."""
    rgba = np.zeros((size, size, 4), dtype=np.uint8)
    ink = digit_strokes(size) == 0
    rgba[ink] = (255, 255, 255, 255)
    return png(folder, "white_on_transparent.png", rgba)


def huge_png_header(folder: Path, side: int = 20_000) -> str:
    """A PNG whose header announces side x side pixels (no pixel data): enough for any reader
    to see its size without writing 400 MB."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    path = folder / "huge.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b""))
    return str(path)

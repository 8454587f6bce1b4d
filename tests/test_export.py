"""bcop.export: the plain network computes the same logits, holds torch layers only, and its
torch.export program (and ONNX file) runs where bcop cannot be imported."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from bcop.export import export, save_onnx
from bcop.factory import create_model
from bcop.layers import BCOPConv2d, GroupSort, MaxMin, RKOConv2d

pytestmark = pytest.mark.usefixtures("one_thread")

LOGIT_TOL = 1e-5
TORCH_LAYERS = (nn.Conv2d, nn.Linear, nn.PixelUnshuffle, nn.Flatten, nn.ReLU)


def _batch(shape: tuple[int, ...], n: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, *shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(
    "name",
    ["bcop-large-mnist", "rko-small-mnist", "ossn-small-mnist", "svcm-small-mnist-relu"],
)
def test_export_gives_the_same_logits_with_torch_layers_only(name: str) -> None:
    """Logits of the exported network equal the model's in eval mode to 1e-5; every layer is a
    torch.nn layer (a plain Conv2d, not a subclass) or GroupSort/MaxMin, and no parametrization
    is left."""
    torch.manual_seed(0)
    model = create_model(name)
    x = _batch(model.input_shape)
    plain = export(model)
    assert model.training  # export leaves the model's mode as it was
    with torch.no_grad():
        torch.testing.assert_close(plain(x), model.eval()(x), rtol=0, atol=LOGIT_TOL)
    for layer in plain.children():
        assert type(layer) in TORCH_LAYERS or type(layer) in (GroupSort, MaxMin), type(layer)
        assert not hasattr(layer, "parametrizations")


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_export_keeps_zero_padding_of_odd_and_even_kernels(k: int) -> None:
    """Zero-padded BCOP and RKO convolutions (even kernels pad one more after than before)
    become nn.Conv2d(padding="same") with the same outputs (tolerance 1e-6)."""
    torch.manual_seed(k)
    model = nn.Sequential(
        BCOPConv2d(3, 4, k, padding_mode="zeros"), RKOConv2d(4, 2, k, padding_mode="zeros")
    ).eval()
    x = _batch((3, 7, 6))
    with torch.no_grad():
        torch.testing.assert_close(export(model)(x), model(x), rtol=0, atol=1e-6)


class _TwiceConv(BCOPConv2d):
    """A layer that applies its kernel twice: no single nn.Conv2d computes it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(super().forward(x))


def test_export_rejects_a_layer_it_does_not_know() -> None:
    with pytest.raises(TypeError, match="cannot export layer '1' of type Softmax"):
        export(nn.Sequential(nn.Flatten(), nn.Softmax(dim=1)))
    with pytest.raises(TypeError, match="cannot export layer '0' of type .*TwiceConv: it applies its weight"):
        export(nn.Sequential(_TwiceConv(2, 2, 3)))


_RUN_WITHOUT_BCOP = textwrap.dedent(
    """
    import importlib.util, sys
    import torch
    assert importlib.util.find_spec("bcop") is None, sys.path
    program = torch.export.load("model.pt2")
    torch.save(program.module()(torch.load("x.pt")), "logits.pt")
    """
)


def test_torch_export_program_runs_in_a_python_without_bcop(tmp_path: Path) -> None:
    """torch.export.export accepts the exported bcop-small-mnist; the saved program loads and
    runs in a subprocess where ``import bcop`` fails (isolated mode, another working
    directory), with the model's logits to 1e-5, at a batch size other than the example's."""
    torch.manual_seed(0)
    model = create_model("bcop-small-mnist").eval()
    batch = torch.export.Dim("batch", min=1)
    example = (_batch(model.input_shape, 2),)
    program = torch.export.export(export(model), example, dynamic_shapes=({0: batch},))
    torch.export.save(program, tmp_path / "model.pt2")
    x = _batch(model.input_shape, 5, seed=1)
    torch.save(x, tmp_path / "x.pt")
    subprocess.run([sys.executable, "-I", "-c", _RUN_WITHOUT_BCOP], cwd=tmp_path, check=True, timeout=120)
    with torch.no_grad():
        torch.testing.assert_close(torch.load(tmp_path / "logits.pt"), model(x), rtol=0, atol=LOGIT_TOL)


def test_onnx_file_runs_in_onnxruntime_with_the_same_logits(tmp_path: Path) -> None:
    """save_onnx writes a graph with a dynamic batch; onnxruntime gives the model's logits to
    1e-5 at batch sizes 1 and 3."""
    import onnxruntime as ort  # pinned in requirements-dev.txt with onnx and onnxscript

    torch.manual_seed(0)
    model = create_model("bcop-small-mnist").eval()
    session = ort.InferenceSession(str(save_onnx(model, tmp_path / "model.onnx", model.input_shape)))
    for n in (1, 3):
        x = _batch(model.input_shape, n)
        (logits,) = session.run(None, {"image": x.numpy()})
        with torch.no_grad():
            torch.testing.assert_close(torch.from_numpy(logits), model(x), rtol=0, atol=LOGIT_TOL)

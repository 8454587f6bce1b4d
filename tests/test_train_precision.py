"""What a training step trains with is orthonormal in float32, even for ill-conditioned raw
matrices (Note [Orthonormal in float32 while training]), and the dense layers' shortcut
(:func:`bcop.orthogonal.polar_linear`) has the function and gradient of the formed weight.

Raw matrices are set at the initialisation's scale (1/sqrt(fan-in) times an orthonormal matrix)
with singular values spread geometrically over the condition number, so the test sees what a
long training run could leave, not mostly noise.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from bcop.layers import BCOPConv2d, OrthogonalLinear
from bcop.orthogonal import conv_singular_values, polar, polar_linear

pytestmark = pytest.mark.usefixtures("one_thread")

ORTHO_TOL = 1e-4  # max |sigma - 1|, the goal (measured: about 1e-6)


def conditioned_(matrices: torch.Tensor, cond: float, fan_in: int, seed: int = 0) -> None:
    """Overwrite each (m, n) matrix of ``matrices`` with ``U diag(s) V^T / sqrt(fan_in)``, s
    geometric from 1 to 1/cond, U and V random orthonormal (float64, then rounded)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for matrix in matrices.view(-1, *matrices.shape[-2:]):
            m, n = matrix.shape
            k = min(m, n)
            u = torch.linalg.qr(torch.randn(m, k, generator=gen, dtype=torch.float64)).Q
            v = torch.linalg.qr(torch.randn(n, k, generator=gen, dtype=torch.float64)).Q
            s = torch.logspace(0, -math.log10(cond), k, dtype=torch.float64)
            matrix.copy_((u * s) @ v.mT / math.sqrt(fan_in))


def _conv_error(layer: BCOPConv2d, size: int = 8) -> float:
    return float((conv_singular_values(layer.weight.detach().double(), size) - 1).abs().max())


def _effective_dense_error(layer: OrthogonalLinear) -> float:
    """max |sigma - 1| of the map a training step applies (grad enabled, train mode)."""
    identity = torch.eye(layer.in_features)
    applied = layer(identity) - (0 if layer.bias is None else layer.bias)
    return float((torch.linalg.svdvals(applied.detach().double()) - 1).abs().max())


@pytest.mark.parametrize("cond", [30.0, 1e2, 1e3, 1e4])
@pytest.mark.parametrize(("channels", "k"), [(16, 3), (24, 2)])
def test_bcop_kernel_is_orthogonal_in_train_mode_for_ill_conditioned_raw_matrices(
    channels: int, k: int, cond: float
) -> None:
    """Every raw matrix (H and the projectors' U) of condition number 30 (no Newton-Schulz step)
    up to 1e4: the float32 train-mode kernel's singular values are within 1e-4 of 1 on 8x8
    inputs."""
    torch.manual_seed(0)
    layer = BCOPConv2d(channels, channels, k).train()
    for i, raw in enumerate(layer.parametrizations.weight.parameters()):
        conditioned_(raw, cond, channels, seed=i)
    assert _conv_error(layer) < ORTHO_TOL


def test_bcop_kernel_is_orthogonal_in_train_mode_at_256_channels_and_condition_number_1e4() -> None:
    """BCOPConv2d(256, 256, 3), the issue's case (the float32 Gram route was off by 13)."""
    torch.manual_seed(0)
    layer = BCOPConv2d(256, 256, 3).train()
    for i, raw in enumerate(layer.parametrizations.weight.parameters()):
        conditioned_(raw, 1e4, 256, seed=i)
    assert _conv_error(layer, size=4) < ORTHO_TOL


@pytest.mark.parametrize("cond", [1.0, 30.0, 1e4])
@pytest.mark.parametrize(("fin", "fout"), [(784, 128), (96, 160)], ids=["wide", "tall"])
def test_dense_layer_trains_with_an_orthonormal_map(fin: int, fout: int, cond: float) -> None:
    """The map a training step applies (through polar_linear, weight never formed) and the
    train-mode weight are orthonormal to 1e-4, from a well-conditioned raw matrix (float32
    eigh) through cond 30 (refined in float64) to 1e4 (float64 Gram, weight formed)."""
    torch.manual_seed(0)
    layer = OrthogonalLinear(fin, fout).train()
    conditioned_(layer.parametrizations.weight.original, cond, fin)
    assert _effective_dense_error(layer) < ORTHO_TOL
    assert float((torch.linalg.svdvals(layer.weight.detach().double()) - 1).abs().max()) < ORTHO_TOL


@pytest.mark.parametrize("cond", [3.0, 100.0], ids=["applied", "formed"])
@pytest.mark.parametrize("shape", [(5, 9), (9, 5), (6, 6)], ids=["wide", "tall", "square"])
def test_polar_linear_has_the_value_and_gradient_of_the_formed_polar_weight(
    shape: tuple[int, int], cond: float
) -> None:
    """float64, training recipe: output and gradients (input, raw weight, bias) of
    polar_linear equal those of F.linear with polar(w) (rtol 1e-8, atol 1e-9: the gradient
    grows like cond^2), whether the small factor is
    applied to W x (cond 3) or the factor formed (cond 100)."""
    w = torch.empty(*shape, dtype=torch.float64)
    conditioned_(w, cond, shape[1])
    x = torch.randn(4, shape[1], dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    b = torch.randn(shape[0], dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    upstream = torch.randn(4, shape[0], dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    results = []
    for fn in (
        lambda x, w, b: polar_linear(x, w, b, precise=False),
        lambda x, w, b: F.linear(x, polar(w), b),
    ):
        leaves = [t.clone().requires_grad_(True) for t in (x, w, b)]
        out = fn(*leaves)
        out.backward(upstream)
        results.append([out.detach(), *(t.grad for t in leaves)])
    for got, expected in zip(*results, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-8, atol=1e-9)


@pytest.mark.parametrize("k", [2, 3])
def test_both_routes_of_bcop_kernel_build_the_same_kernel(monkeypatch: pytest.MonkeyPatch, k: int) -> None:
    """Below FACTOR_ROUTE_MIN_CHANNELS every projector is formed; from it the first block goes
    through the projectors' factors: the same kernel and the same gradient, to rounding."""
    import bcop.orthogonal as orthogonal

    gen = torch.Generator().manual_seed(0)
    ortho = torch.linalg.qr(torch.randn(12, 12, generator=gen, dtype=torch.float64)).Q.requires_grad_()
    proj = torch.linalg.qr(torch.randn(2 * (k - 1), 12, 5, generator=gen, dtype=torch.float64)).Q
    proj.requires_grad_()
    results = []
    for threshold in (10**6, 1):  # formed projectors, then the factor route
        monkeypatch.setattr(orthogonal, "FACTOR_ROUTE_MIN_CHANNELS", threshold)
        kernel = orthogonal.bcop_kernel(ortho, proj, k, 10, 12)
        results.append((kernel, *torch.autograd.grad((kernel * kernel.detach().sin()).sum(), (ortho, proj))))
    for formed, factored in zip(*results, strict=True):
        torch.testing.assert_close(formed, factored, rtol=1e-12, atol=1e-12)

"""Tests for bcop.layers: orthogonality and gradient-norm preservation of BCOP and Björck layers,
soundness of the baselines' Lipschitz bounds, activations, downsampling, input checking and
the kernel cache.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from bcop.layers import (
    PAPER_BJORCK,
    BCOPConv2d,
    GroupSort,
    InvertibleDownsample,
    LipschitzLinear,
    MaxMin,
    OrthogonalLinear,
    OrthoParams,
    OSSNConv2d,
    PlainConv2d,
    RKOConv2d,
    SVCMConv2d,
    frozen_weights,
)
from bcop.layers.parametrization import current_weight
from bcop.orthogonal import (
    circular_pad,
    conv_singular_values,
    conv_spectral_norm,
    power_iteration,
    svcm_project,
)

F32_TOL = 1e-4
F64_TOL = 1e-8


pytestmark = pytest.mark.usefixtures("one_thread")


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _bcop(cin: int, cout: int, k: int, seed: int = 0, **kwargs) -> BCOPConv2d:
    torch.manual_seed(seed)
    return BCOPConv2d(cin, cout, k, bias=False, **kwargs)


def _max_deviation_from_one(layer: nn.Conv2d, size: int | tuple[int, int]) -> float:
    return float((conv_singular_values(layer.weight.detach(), size) - 1).abs().max())


def _count_compute_calls(layer: nn.Module) -> list[int]:
    """Wrap the layer's parametrization so that every kernel construction is counted."""
    param = layer.parametrizations.weight[0]
    original = param.compute
    calls = [0]

    def counted(*originals: torch.Tensor) -> torch.Tensor:
        calls[0] += 1
        return original(*originals)

    param.compute = counted
    return calls


# --- BCOP is orthogonal ----------------------------------------------------------------------

ISSUE_SHAPES = [(1, 16, 3), (16, 16, 3), (64, 32, 2), (32, 64, 5)]


@pytest.mark.parametrize("size", [8, 28])
@pytest.mark.parametrize(("cin", "cout", "k"), ISSUE_SHAPES)
def test_bcop_conv_is_orthogonal_in_float32(cin: int, cout: int, k: int, size: int) -> None:
    """Every singular value of the circular-convolution operator is within 1e-4 of 1."""
    assert _max_deviation_from_one(_bcop(cin, cout, k), size) < F32_TOL


@pytest.mark.parametrize("size", [8, 28])
@pytest.mark.parametrize(("cin", "cout", "k"), ISSUE_SHAPES)
def test_bcop_conv_is_orthogonal_in_float64(cin: int, cout: int, k: int, size: int) -> None:
    """Every singular value within 1e-8 of 1 once the layer is converted to float64."""
    assert _max_deviation_from_one(_bcop(cin, cout, k).double(), size) < F64_TOL


@pytest.mark.parametrize("k", range(1, 8))
@pytest.mark.parametrize(
    ("cin", "cout"), [(3, 5), (5, 3), (4, 4), (1, 1)], ids=["in<out", "in>out", "in=out", "1x1"]
)
def test_bcop_conv_is_orthogonal_for_every_kernel_size(cin: int, cout: int, k: int) -> None:
    """k = 1..7 on 8x8 (and on 5x5, where k = 6, 7 alias): within 1e-4 of 1 (float32)."""
    layer = _bcop(cin, cout, k, seed=k)
    assert _max_deviation_from_one(layer, 8) < F32_TOL
    assert _max_deviation_from_one(layer, 5) < F32_TOL


@pytest.mark.parametrize(("cin", "cout", "k"), [(4, 6, 3), (6, 4, 4), (5, 5, 5)])
def test_bcop_conv_with_bjorck_method_is_orthogonal(cin: int, cout: int, k: int) -> None:
    """The paper's 20 Björck iterations: within 1e-4 of 1 on 8x8 (float32)."""
    assert _max_deviation_from_one(_bcop(cin, cout, k, ortho=PAPER_BJORCK), 8) < F32_TOL


@pytest.mark.parametrize(("cin", "cout", "k"), [(6, 6, 3), (4, 8, 2), (8, 4, 5)])
def test_bcop_conv_stays_orthogonal_after_adam_steps(cin: int, cout: int, k: int) -> None:
    """Five Adam steps (lr 0.05) on a regression loss move the kernel (by > 1e-3) and leave
    every singular value within 1e-4 of 1 on 8x8 and 28x28 (float32)."""
    layer = _bcop(cin, cout, k)
    before = layer.weight.detach().clone()
    opt = torch.optim.Adam(layer.parameters(), lr=0.05)
    x = torch.randn(4, cin, 8, 8, generator=_gen(1))
    target = torch.randn(4, cout, 8, 8, generator=_gen(2))
    for _ in range(5):
        opt.zero_grad()
        (layer(x) - target).square().mean().backward()
        opt.step()
    assert (layer.weight.detach() - before).abs().max() > 1e-3
    assert _max_deviation_from_one(layer, 8) < F32_TOL
    assert _max_deviation_from_one(layer, 28) < F32_TOL


# --- gradient norm preservation --------------------------------------------------------------


def _vjp_norm_ratio(layer: nn.Module, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    x = x.detach().requires_grad_(True)
    (jtg,) = torch.autograd.grad(layer(x), x, grad_outputs=g)
    return jtg.flatten(1).norm(dim=1) / g.flatten(1).norm(dim=1)


@pytest.mark.parametrize(("cin", "cout", "k"), [(16, 16, 3), (32, 16, 3), (64, 32, 2), (8, 3, 7)])
def test_bcop_conv_preserves_gradient_norm_when_out_le_in(cin: int, cout: int, k: int) -> None:
    """||J^T g|| = ||g|| for random g, within 1e-8 relative (float64, bias=False, 8x8)."""
    layer = _bcop(cin, cout, k).double()
    x = torch.randn(3, cin, 8, 8, generator=_gen(1), dtype=torch.float64)
    g = torch.randn(3, cout, 8, 8, generator=_gen(2), dtype=torch.float64)
    torch.testing.assert_close(
        _vjp_norm_ratio(layer, x, g), torch.ones(3, dtype=torch.float64), rtol=0, atol=F64_TOL
    )


@pytest.mark.parametrize(("cin", "cout", "k"), [(16, 16, 3), (16, 32, 3), (1, 16, 3), (32, 64, 5)])
def test_bcop_conv_is_an_isometry_when_out_ge_in(cin: int, cout: int, k: int) -> None:
    """||J x|| = ||x|| for random x, within 1e-8 relative (float64, bias=False, 8x8)."""
    layer = _bcop(cin, cout, k).double()
    x = torch.randn(3, cin, 8, 8, generator=_gen(1), dtype=torch.float64)
    ratio = layer(x).flatten(1).norm(dim=1) / x.flatten(1).norm(dim=1)
    torch.testing.assert_close(ratio, torch.ones(3, dtype=torch.float64), rtol=0, atol=F64_TOL)


@pytest.mark.parametrize(("fin", "fout"), [(64, 32), (32, 32), (100, 10)])
def test_bjorck_linear_preserves_gradient_norm_when_out_le_in(fin: int, fout: int) -> None:
    """||W^T g|| = ||g||, within 1e-8 relative (float64, bias=False), for both methods."""
    for method in ("polar", "bjorck"):
        torch.manual_seed(0)
        layer = OrthogonalLinear(fin, fout, bias=False, ortho=OrthoParams(method)).double()
        x = torch.randn(5, fin, generator=_gen(1), dtype=torch.float64)
        g = torch.randn(5, fout, generator=_gen(2), dtype=torch.float64)
        ratio = _vjp_norm_ratio(layer, x, g)
        torch.testing.assert_close(ratio, torch.ones(5, dtype=torch.float64), rtol=0, atol=F64_TOL)


@pytest.mark.parametrize(("fin", "fout"), [(32, 64), (32, 32), (10, 100)])
def test_bjorck_linear_is_an_isometry_when_out_ge_in(fin: int, fout: int) -> None:
    """||W x|| = ||x||, within 1e-8 relative (float64, bias=False)."""
    torch.manual_seed(0)
    layer = OrthogonalLinear(fin, fout, bias=False).double()
    x = torch.randn(5, fin, generator=_gen(1), dtype=torch.float64)
    ratio = layer(x).norm(dim=1) / x.norm(dim=1)
    torch.testing.assert_close(ratio, torch.ones(5, dtype=torch.float64), rtol=0, atol=F64_TOL)


def test_bjorck_linear_bound_is_one_and_plain_linear_bound_is_its_spectral_norm() -> None:
    """Tolerance 1e-6 (float32 weights, bound computed in float64)."""
    torch.manual_seed(0)
    assert OrthogonalLinear(30, 20).lipschitz_bound() == pytest.approx(1.0, abs=1e-6)
    plain = LipschitzLinear(30, 20)
    expected = float(torch.linalg.matrix_norm(plain.weight.detach().double(), ord=2))
    assert plain.lipschitz_bound() == pytest.approx(expected, rel=1e-12)


def _raw_matrices(layer: nn.Module) -> list[torch.Tensor]:
    """Every unconstrained tensor behind ``layer.weight`` as a batch of (m, n) matrices."""
    raws = layer.parametrizations.weight.parameters()
    return [raw.detach().flatten(1).unsqueeze(0) if raw.ndim == 4 else raw.detach() for raw in raws]


@pytest.mark.parametrize(
    ("make", "fan_in"),
    [
        (lambda: BCOPConv2d(16, 32, 3), 32),  # BCOP: its max(in, out)-channel matrices
        (lambda: BCOPConv2d(24, 8, 2), 24),
        (lambda: RKOConv2d(16, 32, 3), 16 * 9),  # RKO: the kernel reshaped to out x in*k*k
        (lambda: RKOConv2d(8, 4, 5), 8 * 25),
        (lambda: OrthogonalLinear(100, 10), 100),
        (lambda: OrthogonalLinear(10, 100), 10),
    ],
)
def test_raw_weights_start_orthonormal_at_the_papers_scale(make, fan_in: int) -> None:
    layer = make()
    for raw in _raw_matrices(layer):
        small = raw.mT @ raw if raw.shape[-2] >= raw.shape[-1] else raw @ raw.mT  # the smaller Gram
        eye = torch.eye(small.shape[-1]).expand_as(small)
        assert torch.allclose(small * fan_in, eye, atol=1e-5)
    if isinstance(layer, BCOPConv2d):  # LConvNet's BCOP bias: uniform in +-1/sqrt(out)
        assert float(layer.bias.detach().abs().max()) <= layer.out_channels**-0.5
    # the scale is invisible to the forward pass: the weight is orthonormal as always
    weight = layer.weight.detach().flatten(1)
    if isinstance(layer, BCOPConv2d):
        bound = conv_spectral_norm(layer.weight.detach(), 8)
        assert abs(bound - 1.0) < F32_TOL
    else:
        small = weight @ weight.mT if weight.shape[0] <= weight.shape[1] else weight.mT @ weight
        scale = layer.kernel_size[0] ** 2 if isinstance(layer, RKOConv2d) else 1
        assert torch.allclose(small * scale, torch.eye(small.shape[0]), atol=1e-5)


def test_plain_conv_does_not_preserve_gradient_norm() -> None:
    """Control: an unconstrained convolution changes ||J^T g|| by more than 1% (so the GNP
    checks above can fail)."""
    torch.manual_seed(0)
    layer = PlainConv2d(16, 16, 3, bias=False).double()
    x = torch.randn(3, 16, 8, 8, generator=_gen(1), dtype=torch.float64)
    g = torch.randn(3, 16, 8, 8, generator=_gen(2), dtype=torch.float64)
    assert ((_vjp_norm_ratio(layer, x, g) - 1).abs() > 1e-2).all()


@pytest.mark.parametrize("pad", [(0, 0, 0, 0), (1, 1, 1, 1), (0, 1, 0, 1), (3, 2, 1, 3), (5, 5, 4, 4)])
def test_circular_pad_matches_torch_circular_pad_in_values_and_gradients(pad: tuple) -> None:
    x = torch.randn(2, 3, 4, 5, generator=_gen(0), dtype=torch.float64, requires_grad=True)
    ours, ref = circular_pad(x, pad), F.pad(x, pad, mode="circular")
    assert torch.equal(ours, ref)
    g = torch.randn(ref.shape, generator=_gen(1), dtype=torch.float64)
    (g_ours,) = torch.autograd.grad(ours, x, g)
    (g_ref,) = torch.autograd.grad(ref, x, g)
    assert torch.allclose(g_ours, g_ref, atol=1e-12)


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel lengths")  # the reference's
@pytest.mark.parametrize("padding_mode", ["circular", "zeros"])
@pytest.mark.parametrize("k", list(range(1, 8)))
def test_conv_equals_nn_conv2d_with_same_padding(k: int, padding_mode: str) -> None:
    """Our padding path gives the same output as torch's own for odd and even kernels."""
    torch.manual_seed(k)
    ours = PlainConv2d(3, 4, k, padding_mode=padding_mode).double()
    ref = nn.Conv2d(3, 4, k, padding="same", padding_mode=padding_mode).double()
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(2, 3, 9, 8, generator=_gen(2), dtype=torch.float64)
    assert torch.allclose(ours(x), ref(x), atol=1e-12)


@pytest.mark.parametrize(("cout", "cin"), [(4, 6), (6, 4), (5, 5)])
def test_svcm_projection_clips_the_operator_singular_values_exactly(cout: int, cin: int) -> None:
    """With the kernel as large as the input, masking changes nothing: every singular value of
    the projected operator is min(sigma, 1), compared with a full SVD in float64."""
    kernel = 0.6 * torch.randn(cout, cin, 3, 3, generator=_gen(3), dtype=torch.float64)
    before = conv_singular_values(kernel, 3).sort().values
    after = conv_singular_values(svcm_project(kernel, 3), 3).sort().values
    assert float(before.max()) > 1.5  # the projection has work to do
    assert torch.allclose(after, before.clamp(max=1.0), atol=1e-10)


def test_svcm_projection_agrees_with_clipping_by_svd() -> None:
    kernel = 0.5 * torch.randn(6, 10, 2, 2, generator=_gen(4), dtype=torch.float64)
    transfer = torch.fft.fft2(kernel, s=(5, 5)).permute(2, 3, 0, 1)
    u, sv, vh = torch.linalg.svd(transfer, full_matrices=False)
    clipped = (u * sv.clamp(max=1.0).to(u.dtype).unsqueeze(-2)) @ vh
    reference = torch.fft.ifft2(clipped.permute(2, 3, 0, 1)).real[..., :2, :2]
    assert torch.allclose(svcm_project(kernel, 5), reference, atol=1e-12)


# --- the baselines' bounds are sound ---------------------------------------------------------

BASELINES = {
    "rko": lambda cin, cout, k, pad: RKOConv2d(cin, cout, k, bias=False, padding_mode=pad),
    "ossn": lambda cin, cout, k, pad: OSSNConv2d(cin, cout, k, input_size=6, bias=False, padding_mode=pad),
    "svcm": lambda cin, cout, k, pad: SVCMConv2d(cin, cout, k, input_size=6, bias=False, padding_mode=pad),
    "plain": lambda cin, cout, k, pad: PlainConv2d(cin, cout, k, bias=False, padding_mode=pad),
    "bcop": lambda cin, cout, k, pad: BCOPConv2d(cin, cout, k, bias=False, padding_mode=pad),
}


@pytest.mark.parametrize("padding_mode", ["circular", "zeros"])
@pytest.mark.parametrize(("cin", "cout", "k"), [(3, 5, 3), (6, 4, 2), (4, 4, 5)])
@pytest.mark.parametrize("kind", sorted(BASELINES))
def test_reported_bound_is_an_upper_bound_on_the_measured_operator_norm(
    kind: str, cin: int, cout: int, k: int, padding_mode: str
) -> None:
    """Power iteration (300 steps, float64) on the bias-free layer never exceeds
    ``lipschitz_bound`` (tolerance 1e-6 relative); with circular padding the bound is exact, so
    power iteration attains it within 1e-3 relative."""
    torch.manual_seed(k)
    layer = BASELINES[kind](cin, cout, k, padding_mode).double()
    shape = (cin, 6, 6)
    bound = layer.lipschitz_bound(shape)
    with frozen_weights(layer):
        measured = power_iteration(layer, shape, iters=300)
    assert measured <= bound * (1 + 1e-6)
    if padding_mode == "circular":
        assert measured == pytest.approx(bound, rel=1e-3)


@pytest.mark.parametrize("padding_mode", ["circular", "zeros"])
@pytest.mark.parametrize(("cin", "cout", "k"), [(3, 5, 3), (6, 4, 2), (16, 32, 3), (2, 40, 3), (4, 4, 7)])
def test_rko_bounds_are_at_most_one(cin: int, cout: int, k: int, padding_mode: str) -> None:
    """At init and with large raw weights (x10): bound <= 1 + 1e-5 (float32 weights)."""
    torch.manual_seed(0)
    layer = RKOConv2d(cin, cout, k, padding_mode=padding_mode)
    assert layer.lipschitz_bound((cin, 8, 8)) <= 1 + 1e-5
    with torch.no_grad():
        layer.parametrizations.weight.original.mul_(10).add_(
            torch.randn_like(layer.parametrizations.weight.original)
        )
    assert layer.lipschitz_bound((cin, 8, 8)) <= 1 + 1e-5


def _ossn_train_forwards(layer: OSSNConv2d, n: int) -> None:
    layer.train()
    x = torch.randn(2, layer.in_channels, *layer.input_size, dtype=layer.bias.dtype)
    for _ in range(n):
        layer(x).sum().backward()


@pytest.mark.parametrize(("cin", "cout", "k"), [(3, 5, 3), (8, 4, 2), (16, 32, 3), (4, 4, 7)])
def test_ossn_normalises_the_convolution_operator_not_the_reshaped_kernel(
    cin: int, cout: int, k: int
) -> None:
    """With raw weights of operator norm >> 1, 200 training forwards with ``power_iters=1`` bring
    the exact norm of the convolution on the layer's input size to 1 within 1e-3 (float64;
    power iteration converges from below, so the norm approaches 1 from above). The
    reshaped-kernel normalisation (``||M||_2 / k``) would leave it well below 1."""
    torch.manual_seed(0)
    layer = OSSNConv2d(cin, cout, k, input_size=8, power_iters=1).double()
    with torch.no_grad():
        layer.parametrizations.weight.original.mul_(10)
    _ossn_train_forwards(layer, 200)
    assert layer.lipschitz_bound((cin, 8, 8)) == pytest.approx(1.0, abs=1e-3)


def test_ossn_is_one_sided_and_leaves_small_kernels_alone() -> None:
    """A kernel whose operator norm is 0.5 is used as it is (bitwise), in training and eval."""
    torch.manual_seed(0)
    layer = OSSNConv2d(4, 6, 3, input_size=8).double()
    raw = layer.parametrizations.weight.original
    with torch.no_grad():
        raw.mul_(0.5 / conv_spectral_norm(raw, 8))
    _ossn_train_forwards(layer, 3)
    assert torch.equal(layer.weight, raw)
    layer.eval()
    assert torch.equal(layer.weight, raw)


def test_ossn_gradient_flows_through_the_norm_estimate() -> None:
    """Above norm 1 the weight W / <u, A_W v> does not change when W is scaled, so the gradient
    with respect to W is orthogonal to W (|cos| < 1e-9); with the norm treated as a constant it
    would not be."""
    torch.manual_seed(0)
    layer = OSSNConv2d(4, 6, 3, input_size=8).double()
    raw = layer.parametrizations.weight.original
    with torch.no_grad():
        raw.mul_(5)
    layer.eval()  # fixed u, v
    x = torch.randn(2, 4, 8, 8, dtype=torch.float64)
    layer(x).pow(2).sum().backward()
    cos = (raw.grad * raw.detach()).sum() / (raw.grad.norm() * raw.detach().norm())
    assert abs(float(cos)) < 1e-9
    assert float(raw.grad.norm()) > 1e-3


def test_ossn_eval_keeps_its_vectors_and_the_cache_follows_loaded_ones() -> None:
    """Eval and no-grad forwards leave u, v untouched; loading another layer's state (same raw
    weight, other vectors) changes the weight served from the cache."""
    torch.manual_seed(0)
    layer = OSSNConv2d(4, 6, 3, input_size=8)
    with torch.no_grad():
        layer.parametrizations.weight.original.mul_(10)
    norm_vectors = layer.parametrizations.weight[0]
    before = norm_vectors.u.clone(), norm_vectors.v.clone()
    x = torch.randn(2, 4, 8, 8)
    layer.eval()
    with torch.no_grad():
        first = layer(x)
    assert torch.equal(norm_vectors.u, before[0]) and torch.equal(norm_vectors.v, before[1])
    state = {k: v.clone() for k, v in layer.state_dict().items()}
    state["parametrizations.weight.0.u"] = torch.roll(state["parametrizations.weight.0.u"], 1, dims=-1)
    layer.load_state_dict(state)
    with torch.no_grad():
        assert not torch.allclose(layer(x), first)


def test_plain_conv_bound_exceeds_one_at_default_init_with_large_weights() -> None:
    """Control: the plain bound is measured, not assumed (x10 weights give a bound > 1)."""
    torch.manual_seed(0)
    layer = PlainConv2d(8, 8, 3)
    with torch.no_grad():
        layer.weight.mul_(10)
    assert layer.lipschitz_bound((8, 8, 8)) > 1


# --- activations and downsampling -------------------------------------------------------------


def test_maxmin_preserves_norm_and_gradient_norm_and_is_1_lipschitz() -> None:
    """MaxMin permutes each pair: ||f(x)|| = ||x|| and ||J^T g|| = ||g|| (1e-12 relative), and
    ||f(x) - f(y)|| <= ||x - y|| (1e-12) for random pairs."""
    act = MaxMin()
    x = torch.randn(6, 8, 5, 5, generator=_gen(1), dtype=torch.float64)
    y = torch.randn(6, 8, 5, 5, generator=_gen(2), dtype=torch.float64)
    torch.testing.assert_close(act(x).flatten(1).norm(dim=1), x.flatten(1).norm(dim=1), rtol=1e-12, atol=0)
    torch.testing.assert_close(
        _vjp_norm_ratio(act, x, y), torch.ones(6, dtype=torch.float64), rtol=0, atol=1e-12
    )
    assert ((act(x) - act(y)).flatten(1).norm(dim=1) <= (x - y).flatten(1).norm(dim=1) + 1e-12).all()


def test_groupsort_sorts_each_group_in_descending_order() -> None:
    x = torch.tensor([[3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0, 6.0]])
    torch.testing.assert_close(GroupSort(4)(x), torch.tensor([[4.0, 3.0, 1.0, 1.0, 9.0, 6.0, 5.0, 2.0]]))
    torch.testing.assert_close(MaxMin()(x), torch.tensor([[3.0, 1.0, 4.0, 1.0, 9.0, 5.0, 6.0, 2.0]]))


def test_invertible_downsample_is_a_norm_preserving_rearrangement() -> None:
    """(N, C, H, W) -> (N, 4C, H/2, W/2) with the same multiset of entries (exact)."""
    x = torch.randn(2, 3, 6, 4, generator=_gen(0))
    y = InvertibleDownsample(2)(x)
    assert y.shape == (2, 12, 3, 2)
    torch.testing.assert_close(y.flatten().sort().values, x.flatten().sort().values, rtol=0, atol=0)


# --- bad input --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [BCOPConv2d, RKOConv2d, PlainConv2d, lambda cin, cout, k: OSSNConv2d(cin, cout, k, input_size=8)],
    ids=["bcop", "rko", "plain", "ossn"],
)
@pytest.mark.parametrize("k", [0, 8, -1])
def test_conv_rejects_kernel_sizes_outside_1_to_7(make, k: int) -> None:
    with pytest.raises(ValueError, match=r"kernel_size must be an integer in 1\.\.7"):
        make(3, 3, k)


def test_conv_rejects_bad_channels_padding_mode_and_method() -> None:
    with pytest.raises(ValueError, match="channel counts"):
        BCOPConv2d(0, 3, 3)
    with pytest.raises(ValueError, match="padding_mode"):
        BCOPConv2d(3, 3, 3, padding_mode="reflect")
    with pytest.raises(ValueError, match="unknown orthonormalisation method 'qr'"):
        OrthoParams("qr")


@pytest.mark.parametrize("iters", [0, "20", 2.0, True])
def test_ortho_params_reject_anything_but_a_positive_integer_of_iterations(iters) -> None:
    with pytest.raises(ValueError, match=f"bjorck_iters must be an integer >= 1, got {iters!r}"):
        OrthoParams("bjorck", iters)


@pytest.mark.parametrize(
    "make",
    [
        lambda o: BCOPConv2d(4, 4, 3, ortho=o),
        lambda o: RKOConv2d(4, 4, 3, ortho=o),
        lambda o: OrthogonalLinear(8, 8, ortho=o),
    ],
    ids=["bcop", "rko", "bjorck_linear"],
)
def test_ortho_params_reach_the_layers_parametrization(make) -> None:
    """The settings object is what the weight is computed with: 1 Björck iteration from the
    paper's initial scale is far from orthonormal, 20 are not."""
    torch.manual_seed(0)
    one, paper = make(OrthoParams("bjorck", 1)), make(PAPER_BJORCK)
    assert one.parametrizations.weight[0].ortho == OrthoParams("bjorck", 1)
    paper.load_state_dict(one.state_dict())
    with torch.no_grad():
        assert (one.weight - paper.weight).abs().max() > 1e-2


@pytest.mark.parametrize(
    "make",
    [
        lambda: BCOPConv2d(3, 4, 3),
        lambda: RKOConv2d(3, 4, 3),
        lambda: OSSNConv2d(3, 4, 3, input_size=8),
        lambda: SVCMConv2d(3, 4, 3, input_size=8),
        lambda: PlainConv2d(3, 4, 3),
    ],
    ids=["bcop", "rko", "ossn", "svcm", "plain"],
)
def test_conv_rejects_wrong_channel_count_and_rank(make) -> None:
    layer = make()
    with pytest.raises(ValueError, match=r"expects input of shape \(N, 3, H, W\), got \(2, 5, 8, 8\)"):
        layer(torch.zeros(2, 5, 8, 8))
    with pytest.raises(ValueError, match=r"expects input of shape \(N, 3, H, W\), got \(3, 8, 8\)"):
        layer(torch.zeros(3, 8, 8))


@pytest.mark.parametrize("cls", [OrthogonalLinear, LipschitzLinear])
def test_linear_rejects_wrong_feature_count_and_rank(cls: type) -> None:
    layer = cls(6, 4)
    with pytest.raises(ValueError, match=r"expects input of shape \(N, 6\), got \(2, 5\)"):
        layer(torch.zeros(2, 5))
    with pytest.raises(ValueError, match=r"expects input of shape \(N, 6\), got \(2, 1, 6\)"):
        layer(torch.zeros(2, 1, 6))


def test_activations_and_downsample_reject_incompatible_shapes() -> None:
    with pytest.raises(ValueError, match="multiple of the group size 2"):
        MaxMin()(torch.zeros(2, 3, 4, 4))
    with pytest.raises(ValueError, match="group_size must be >= 1"):
        GroupSort(0)
    with pytest.raises(ValueError, match="multiples of 2"):
        InvertibleDownsample(2)(torch.zeros(1, 1, 5, 4))
    with pytest.raises(ValueError, match="factor must be >= 1"):
        InvertibleDownsample(0)


def test_bcop_kernel_cannot_be_assigned_directly() -> None:
    layer = BCOPConv2d(3, 3, 3)
    with pytest.raises(ValueError, match="cannot be assigned directly"):
        layer.weight = torch.zeros(3, 3, 3, 3)


# --- caching of constrained weights ----------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [lambda: BCOPConv2d(4, 4, 3), lambda: RKOConv2d(4, 4, 3), lambda: OrthogonalLinear(8, 8)],
    ids=["bcop", "rko", "bjorck_linear"],
)
def test_kernel_is_built_once_under_no_grad(make) -> None:
    """Three calls under no_grad build the weight once; the cached weight equals a fresh one."""
    torch.manual_seed(0)
    layer = make()
    calls = _count_compute_calls(layer)
    x = torch.rand(2, 4, 6, 6) if isinstance(layer, nn.Conv2d) else torch.rand(2, 8)
    with torch.no_grad():
        outs = [layer(x) for _ in range(3)]
    assert calls[0] == 1
    torch.testing.assert_close(outs[0], outs[2], rtol=0, atol=0)


def test_kernel_is_rebuilt_after_an_optimiser_step_and_load_state_dict() -> None:
    """After Adam's step and after load_state_dict the no-grad weight changes (by > 1e-3) and
    equals the freshly computed one (exact)."""
    torch.manual_seed(0)
    layer = BCOPConv2d(4, 4, 3)
    calls = _count_compute_calls(layer)
    x = torch.rand(2, 4, 6, 6)
    with torch.no_grad():
        w0 = layer.weight.clone()
    state = {k: v.clone() for k, v in layer.state_dict().items()}

    opt = torch.optim.Adam(layer.parameters(), lr=0.1)
    layer(x)[:, 0].sum().backward()
    opt.step()
    n = calls[0]
    with torch.no_grad():
        w1 = layer.weight.clone()
    assert calls[0] == n + 1
    assert (w1 - w0).abs().max() > 1e-3
    torch.testing.assert_close(w1, layer.weight, rtol=0, atol=0)  # grad mode: fresh build

    layer.load_state_dict(state)
    with torch.no_grad():
        w2 = layer.weight.clone()
    torch.testing.assert_close(w2, w0, rtol=0, atol=0)


def test_kernel_is_rebuilt_after_a_dtype_change() -> None:
    """.double() after a no-grad call gives a float64 weight (the cache key includes dtype)."""
    layer = BCOPConv2d(3, 3, 3)
    with torch.no_grad():
        layer(torch.rand(1, 3, 5, 5))
        layer.double()
        assert layer.weight.dtype == torch.float64
        assert layer(torch.rand(1, 3, 5, 5, dtype=torch.float64)).dtype == torch.float64


def test_gradients_flow_to_the_unconstrained_matrices_in_training_mode() -> None:
    """In grad mode the kernel is rebuilt at each call (no stale graph) and every original
    gets a finite, non-zero gradient."""
    torch.manual_seed(0)
    layer = BCOPConv2d(4, 6, 3).train()
    calls = _count_compute_calls(layer)
    x = torch.rand(2, 4, 6, 6)
    for _ in range(2):
        layer.zero_grad()
        layer(x)[:, 0].sum().backward()
    assert calls[0] == 2
    for p in layer.parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all()
    assert all(float(o.grad.abs().sum()) > 0 for o in layer.parametrizations.weight.parameters())


def test_parametrize_cached_context_builds_the_kernel_once_and_keeps_gradients() -> None:
    torch.manual_seed(0)
    layer = BCOPConv2d(4, 4, 3)
    calls = _count_compute_calls(layer)
    x = torch.rand(2, 4, 6, 6)
    with parametrize.cached():
        assert layer.weight is layer.weight
        loss = layer(x)[:, 0].sum() + layer(x)[:, 1].sum()
    loss.backward()
    assert calls[0] == 1
    assert layer.parametrizations.weight.original0.grad is not None


def test_frozen_weights_uses_the_cache_keeps_input_gradients_and_restores_flags() -> None:
    """Under frozen_weights the kernel is built once across grad-mode calls, the input
    gradient is exact (matches the unfrozen one, 1e-6), and requires_grad flags come back."""
    torch.manual_seed(0)
    layer = BCOPConv2d(4, 4, 3)
    layer.bias.requires_grad_(False)
    x = torch.rand(2, 4, 6, 6, requires_grad=True)
    (expected,) = torch.autograd.grad(layer(x)[:, 0].sum(), x)
    calls = _count_compute_calls(layer)
    with frozen_weights(layer):
        grads = [torch.autograd.grad(layer(x)[:, 0].sum(), x)[0] for _ in range(3)]
    assert calls[0] == 1
    torch.testing.assert_close(grads[-1], expected, rtol=0, atol=1e-6)
    assert [p.requires_grad for p in layer.parameters()] == [False, True, True]


def test_kernel_built_in_inference_mode_is_usable_for_input_gradients() -> None:
    """A weight cached under inference_mode must not poison a later differentiable call."""
    layer = BCOPConv2d(3, 3, 3)
    with torch.inference_mode():
        layer(torch.rand(1, 3, 5, 5))
    x = torch.rand(1, 3, 5, 5, requires_grad=True)
    with frozen_weights(layer):
        (grad,) = torch.autograd.grad(layer(x).sum(), x)
    assert torch.isfinite(grad).all()


@pytest.mark.parametrize("make", [lambda: BCOPConv2d(4, 4, 3), lambda: OSSNConv2d(3, 4, 3, input_size=6)])
def test_current_weight_serves_the_cached_weight_and_follows_changes(make) -> None:
    """current_weight (what the layers' forward reads) returns the very tensor the cache holds
    after a no-grad call, and the recomputed weight after the raw tensors change in place; with
    gradients it is the parametrization's fresh, differentiable weight."""
    torch.manual_seed(0)
    layer = make().eval()
    with torch.no_grad():
        first = layer.weight
        assert current_weight(layer) is first
        for raw in layer.parametrizations.weight.parameters():
            raw.mul_(1.5).add_(0.01)
        changed = current_weight(layer)
        assert changed is not first and torch.equal(changed, layer.weight)
    assert current_weight(layer).requires_grad

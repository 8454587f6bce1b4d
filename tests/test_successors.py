"""The later layer families (Cayley, SOC, AOL, SLL, AOC): sound bounds, orthogonality where
claimed, torch.func, the kernel cache, and small networks that train and keep their certificates.

Soundness is checked against the layer's true norm found by power iteration on its Jacobian
(:func:`bcop.orthogonal.power_iteration`, which converges from below): random directions would
only see a Frobenius-like average. A control shows the check fails on a layer whose norm
exceeds the bound it reports.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import jacrev

from bcop import create_model
from bcop.attacks import minimal_adversarial_distance
from bcop.certify import certify, layer_lipschitz_bounds, lipschitz_bound
from bcop.data import load_mnist
from bcop.gradnorm import layer_gradient_norms
from bcop.hub import load_folder, save_model
from bcop.kernels import (
    exp_conv,
    exp_conv_fft,
    exp_conv_kernel,
    exp_conv_transfer,
    fft_conv2d_same,
    pad_channels,
    skew_kernel,
    sll_residual,
    sll_scale,
)
from bcop.layers import AOCConv2d, AOLConv2d, CayleyConv2d, SLLConv2d, SOCConv2d, frozen_weights
from bcop.orthogonal import conv2d_same, conv_singular_values, power_iteration
from bcop.spectra import conv_spectra

pytestmark = pytest.mark.usefixtures("one_thread")

FAMILIES = ("cayley", "soc", "aol", "sll", "aoc")
# (in, out, k, input size): a channel increase with an odd kernel, a decrease with an even one
CASES = ((3, 5, 3, 6), (8, 3, 2, 4))
SOUND_TOL = 1e-6  # float64 layers: the exact bound may undercut power iteration by rounding only
ORTHO_TOL = 1e-4  # float32 layers in eval mode: singular values within this of 1


def _layer(family: str, cin: int, cout: int, k: int, size: int) -> nn.Module:
    """A freshly initialised layer of ``family`` (AOC: stride 2 whenever its kernel allows)."""
    torch.manual_seed(0)
    if family == "cayley":
        return CayleyConv2d(cin, cout, k, input_size=size)
    if family == "soc":
        return SOCConv2d(cin, cout, k)
    if family == "aol":
        return AOLConv2d(cin, cout, k)
    if family == "sll":
        return SLLConv2d(cin, cout, k)
    return AOCConv2d(cin, cout, k, stride=2 if k >= 2 else 1)


def _jacobian_norm(layer: nn.Module, x0: torch.Tensor) -> float:
    """Largest singular value of the layer's Jacobian at ``x0`` (1, C, H, W), by power iteration."""
    jacobian = torch.autograd.functional.jacobian(layer, x0).reshape(-1, x0.numel())
    return power_iteration(lambda v: jacobian @ v.reshape(-1), tuple(x0.shape[1:]), iters=300)


def _measured_norm(layer: nn.Module, shape: tuple[int, ...]) -> float:
    """The layer's largest Jacobian norm over a few points (one point suffices for the linear
    families; SLL's changes with the ReLU pattern, so every ReLU on and random points too)."""
    gen = torch.Generator().manual_seed(1)
    points = [torch.randn(1, *shape, generator=gen, dtype=torch.float64) for _ in range(3)]
    norms = [_jacobian_norm(layer, x0) for x0 in points]
    if isinstance(layer, SLLConv2d):
        all_on = copy.deepcopy(layer)
        with torch.no_grad():
            all_on.bias.fill_(1e3)
        norms.append(_jacobian_norm(all_on, points[0]))
    return max(norms)


def assert_bound_sound(layer: nn.Module, shape: tuple[int, ...]) -> tuple[float, float]:
    """Assert the bound ``certify`` uses is at least the layer's measured norm; return both."""
    layer = layer.double().eval()
    bound = dict(layer_lipschitz_bounds(nn.Sequential(layer), shape))["0"]
    measured = _measured_norm(layer, shape)
    assert measured <= bound + SOUND_TOL, f"measured norm {measured} exceeds the bound {bound}"
    return bound, measured


@pytest.mark.parametrize("case", CASES, ids=str)
@pytest.mark.parametrize("family", FAMILIES)
def test_certified_bound_is_at_least_the_jacobian_norm_found_by_power_iteration(
    family: str, case: tuple[int, int, int, int]
) -> None:
    cin, cout, k, size = case
    bound, measured = assert_bound_sound(_layer(family, cin, cout, k, size), (cin, size, size))
    assert bound <= 1 + ORTHO_TOL  # each family is 1-Lipschitz (SOC: up to its series' error)
    if family != "sll":  # a linear layer's bound is its exact norm, not just an upper bound
        assert bound == pytest.approx(measured, rel=1e-3)


@pytest.mark.parametrize("family", FAMILIES)
def test_soundness_check_fails_when_the_bound_is_forced_to_one_on_a_layer_above_one(
    family: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The control: scale the layer's output to norm 1.5 and let it still report 1."""
    cin, cout, k, size = CASES[0]
    layer = _layer(family, cin, cout, k, size).double().eval()
    gain = 1.5 / layer.lipschitz_bound((cin, size, size))
    layer.register_forward_hook(lambda module, inputs, output: gain * output)
    monkeypatch.setattr(layer, "lipschitz_bound", lambda shape: 1.0)
    with pytest.raises(AssertionError, match="exceeds the bound"):
        assert_bound_sound(layer, (cin, size, size))


@pytest.mark.parametrize("case", CASES, ids=str)
@pytest.mark.parametrize("family", ["cayley", "aoc", "soc"])
def test_orthogonal_families_have_all_singular_values_within_1e_4_of_one_in_eval_mode(
    family: str, case: tuple[int, int, int, int]
) -> None:
    """Cayley and AOC exactly (to float32 rounding); SOC with its 12 eval terms (the series'
    own gap is about 1e-12, docs/successors.md)."""
    cin, cout, k, size = case
    layer = _layer(family, cin, cout, k, size).eval()
    (spectrum,) = conv_spectra(nn.Sequential(layer), (cin, size, size))
    values = spectrum.singular_values
    expected = (size // layer.stride[0]) ** 2 * min(cin * layer.stride[0] ** 2, cout)
    assert values.numel() == expected
    assert (values - 1).abs().max() < ORTHO_TOL


def test_soc_in_training_mode_is_approximately_orthogonal_and_its_bound_says_by_how_much() -> None:
    """5 training terms: the series' error shows (about 1e-4 with S normalised to norm 0.7,
    docs/successors.md), and the bound is the truncated series' exact norm, above 1, not the
    exponential's 1."""
    layer = SOCConv2d(4, 4, 3).train()
    shape = (4, 6, 6)
    values = layer.operator_singular_values(shape)
    assert (values - 1).abs().max() < 1e-3
    assert layer.lipschitz_bound(shape) == pytest.approx(float(values.max()), rel=1e-12)
    assert layer.lipschitz_bound(shape) > 1


def test_soc_series_operator_equals_the_composed_kernel_of_the_truncated_series() -> None:
    """The certified operator (eigen-decomposition per frequency) and the kernel of the series
    built by composing kernels under our padding have the same singular values."""
    torch.manual_seed(0)
    skew = skew_kernel(torch.randn(4, 4, 2, 2, dtype=torch.float64)) * 0.3
    composed = conv_singular_values(exp_conv_kernel(skew, 5), 6).sort().values
    direct = torch.linalg.svdvals(exp_conv_transfer(skew, 5, 6)).reshape(-1).sort().values
    torch.testing.assert_close(composed, direct, atol=1e-12, rtol=0)


@pytest.mark.parametrize("c, out, k, size, terms", [(5, 5, 3, 6, 1), (8, 3, 3, (7, 6), 5), (6, 2, 5, 5, 12)])
def test_soc_series_by_fft_equals_the_series_by_convolution_in_value_and_gradients(
    c: int, out: int, k: int, size: int | tuple[int, int], terms: int
) -> None:
    """The training path (exp_conv_fft) is the same function as the convolution series, in
    value and in the gradients with respect to input and kernel (float64: to 1e-10), on odd
    and even grid sizes and with output channels dropped."""
    gen = torch.Generator().manual_seed(c * 10 + terms)
    h, w = size if isinstance(size, tuple) else (size, size)
    x = torch.randn(3, c, h, w, generator=gen, dtype=torch.float64, requires_grad=True)
    raw = torch.randn(c, c, k, k, generator=gen, dtype=torch.float64, requires_grad=True)
    g = torch.randn(3, out, h, w, generator=gen, dtype=torch.float64)
    results = []
    for fn in (lambda s: exp_conv(x, s, terms)[:, :out], lambda s: exp_conv_fft(x, s, terms, out)):
        y = fn(skew_kernel(raw) * 0.2)
        results.append((y, *torch.autograd.grad((y * g).sum(), (x, raw))))
    for ours, reference in zip(results[1], results[0], strict=True):
        torch.testing.assert_close(ours, reference, atol=1e-10, rtol=0)


def _assert_frozen_path_is(layer: nn.Module, x: torch.Tensor, reference: Callable[[], torch.Tensor]) -> None:
    """Under ``frozen_weights`` in eval mode ``layer(x)`` must equal ``reference()`` (computed
    from the layer's current weights) in value and input gradient (float32, 1e-5), and still
    equal it after the raw weight is scaled by -1.5 (the cache must follow the weights)."""
    expected = reference()
    (expected_grad,) = torch.autograd.grad(expected.square().sum(), x)
    with frozen_weights(layer):
        frozen = layer(x)
        (frozen_grad,) = torch.autograd.grad(frozen.square().sum(), x)
        torch.testing.assert_close(frozen, expected.detach(), atol=1e-5, rtol=0)
        torch.testing.assert_close(frozen_grad, expected_grad, atol=1e-5, rtol=0)
        assert layer._transfer_cache is not None
        with torch.no_grad():
            layer.parametrizations.weight.original.mul_(-1.5)
            torch.testing.assert_close(layer(x), reference(), atol=1e-5, rtol=0)


def test_soc_frozen_operator_is_the_series_in_value_and_input_gradient_and_follows_the_weights() -> None:
    """Note [SOC's frozen operator]: with frozen weights in eval mode the layer applies its
    series' exact operator by FFT; it must agree with the 12-term series."""
    layer = SOCConv2d(8, 3, 2).eval()
    x = torch.rand(2, 8, 6, 6, generator=torch.Generator().manual_seed(5), requires_grad=True)

    def series() -> torch.Tensor:
        return exp_conv(pad_channels(x, 8), layer.weight, 12)[:, :3] + layer.bias[:, None, None]

    _assert_frozen_path_is(layer, x, series)


def test_sll_frozen_scale_follows_the_weights() -> None:
    """With frozen weights SLL computes T once; a changed weight must still give the output of
    T computed afresh (float32, exact same operations)."""
    layer = SLLConv2d(4, 4, 3).eval()
    x = torch.rand(2, 4, 6, 6, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        layer(x)
        layer.weight.mul_(1.5)
        fresh = sll_residual(x, layer.weight, layer.bias, sll_scale(layer.weight, layer.log_q))
        torch.testing.assert_close(layer(x), fresh, atol=0, rtol=0)


@pytest.mark.parametrize("k", [2, 3, 6])
def test_fft_conv2d_same_is_the_direct_circular_convolution(k: int) -> None:
    """Odd and even kernels, up to the input's size (float64)."""
    gen = torch.Generator().manual_seed(k)
    x = torch.randn(2, 3, 6, 6, generator=gen, dtype=torch.float64)
    kernel = torch.randn(4, 3, k, k, generator=gen, dtype=torch.float64)
    bias = torch.randn(4, generator=gen, dtype=torch.float64)
    expected = conv2d_same(x, kernel, bias)
    torch.testing.assert_close(fft_conv2d_same(x, kernel, bias), expected, atol=1e-12, rtol=0)


def test_cayley_frozen_transform_is_the_direct_convolution_and_follows_the_weights() -> None:
    """With frozen weights in eval mode Cayley applies its kernel's cached FFT: the same output
    and input gradient as the kernel's direct circular convolution."""
    layer = CayleyConv2d(3, 5, 3, input_size=6).eval()
    x = torch.rand(2, 3, 6, 6, generator=torch.Generator().manual_seed(7), requires_grad=True)
    _assert_frozen_path_is(layer, x, lambda: conv2d_same(x, layer.weight, layer.bias))


@pytest.mark.parametrize("k", [2, 3])
def test_sll_residual_for_kept_channels_is_the_full_residual_sliced(k: int) -> None:
    """A channel-reducing SLL layer applies W for its kept channels only: the same values and
    gradients (float64) as the full residual, then sliced."""
    gen = torch.Generator().manual_seed(k)
    x = torch.randn(2, 6, 5, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    kernel = torch.randn(6, 6, k, k, generator=gen, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(6, generator=gen, dtype=torch.float64, requires_grad=True)
    t = torch.rand(6, generator=gen, dtype=torch.float64) + 1
    g = torch.randn(2, 2, 5, 5, generator=gen, dtype=torch.float64)
    results = []
    for y in (sll_residual(x, kernel, bias, t)[:, :2], sll_residual(x, kernel, bias, t, 2)):
        results.append((y, *torch.autograd.grad((y * g).sum(), (x, kernel, bias))))
    for ours, reference in zip(results[1], results[0], strict=True):
        torch.testing.assert_close(ours, reference, atol=1e-12, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_jacrev_through_the_layer_equals_the_autograd_jacobian(family: str) -> None:
    cin, cout, k, size = CASES[1]
    layer = _layer(family, cin, cout, k, size).eval()
    x = torch.rand(1, cin, size, size, generator=torch.Generator().manual_seed(2))
    expected = torch.autograd.functional.jacobian(layer, x)
    torch.testing.assert_close(jacrev(layer)(x), expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("family", ["cayley", "soc", "aol", "aoc"])
def test_the_constrained_weight_is_built_once_without_gradients_and_again_after_a_step(family: str) -> None:
    cin, cout, k, size = CASES[0]
    layer = _layer(family, cin, cout, k, size).eval()
    with torch.no_grad():
        first, second = layer.weight, layer.weight
    assert first is second
    with torch.no_grad():
        for raw in layer.parametrizations.weight.parameters():
            raw.add_(0.01)
        assert layer.weight is not first


def test_sll_is_one_layer_to_certify_and_to_measure_gradients_at_and_spectra_leave_it_out() -> None:
    """The residual block (its ReLU inside, no activation layer after it) is bounded as one
    layer, its input is where gradient norms are measured, and it has no singular values."""
    model = create_model("sll-small-mnist").eval()
    names = [name for name, _ in layer_lipschitz_bounds(model)]
    assert "conv1" in names and not any(name.startswith("act") for name in names)
    x = torch.rand(2, 1, 28, 28, generator=torch.Generator().manual_seed(3))
    assert [g.name for g in layer_gradient_norms(model, x)][:2] == ["conv1", "conv2"]
    assert [s.name for s in conv_spectra(model)] == []


@pytest.mark.parametrize("family", FAMILIES)
def test_a_saved_network_of_each_family_loads_back_with_the_same_logits_and_bound(
    family: str, tmp_path: Path
) -> None:
    """Hub layout (config.json + safetensors) through every family's parametrizations and
    buffers (SOC's power-iteration vector, AOC's three raw tensors, SLL's q)."""
    torch.manual_seed(0)
    model = create_model(f"{family}-small-mnist")
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    model.eval()
    save_model(model, tmp_path)
    loaded, _ = load_folder(tmp_path)
    x = torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), atol=0, rtol=0)
    assert lipschitz_bound(loaded) == lipschitz_bound(model)


# --- small networks train and keep their certificates ------------------------------------------

STEPS = 150
BATCH = 64


def _train_small(family: str, images: torch.Tensor, labels: torch.Tensor) -> nn.Module:
    torch.manual_seed(0)
    model = create_model(f"{family}-small-mnist")
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for step in range(STEPS):
        idx = torch.arange(step * BATCH, (step + 1) * BATCH) % len(images)
        loss = F.multi_margin_loss(model(images[idx]), labels[idx], margin=1.5 * 2**0.5)
        assert torch.isfinite(loss), f"step {step}: loss {loss}"
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


@pytest.fixture(scope="module")
def mnist() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    train, test = load_mnist("train"), load_mnist("test")
    n = STEPS * BATCH
    return train.tensors[0][:n], train.tensors[1][:n], test.tensors[0][:40], test.tensors[1][:40]


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_small_network_trains_without_nans_and_no_attack_beats_its_certificates(
    family: str, mnist: tuple[torch.Tensor, ...]
) -> None:
    """150 hinge-loss steps of batch 64 (about 10 s per family on one core): the network learns
    (test accuracy above 70 %), and PGD's smallest adversarial distance, where it found one,
    is never below the certified radius."""
    images, labels, x, y = mnist
    model = _train_small(family, images, labels)
    with torch.no_grad():
        cert = certify(model, x)
    assert torch.isfinite(cert.logits).all()
    assert (cert.prediction == y).float().mean() > 0.7
    found = minimal_adversarial_distance(model, x, cert.prediction, max_eps=4.0, search_steps=5, pgd_steps=20)
    finite = torch.isfinite(found.norm)
    assert finite.any(), "the attack found no adversarial example within 4.0: nothing was tested"
    assert (found.norm[finite] >= cert.radius[finite] - 1e-5).all()

"""torch.func through the library: jvp, vjp, jacrev, jacfwd and vmap through the polar factor and
through every kind of network in the registry (each architecture, layer type and activation at
least once), with respect to the inputs and, through ``functional_call``, the parameters.

Each transform is compared with plain autograd on the same float32 model in eval mode: both run
the same kernels, so they agree to float32 rounding (``TOL``). The polar factor is checked in
float64 against the factor computed from an SVD, to near machine precision.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch.func import functional_call, grad, jacfwd, jacrev, jvp, stack_module_state, vjp, vmap

from bcop import create_model
from bcop.layers.parametrization import frozen_weights
from bcop.models import LipschitzNet
from bcop.orthogonal import polar

pytestmark = pytest.mark.usefixtures("one_thread")

TOL = {"atol": 1e-5, "rtol": 1e-4}  # float32 transform against float32 autograd
N = 2  # examples per batch: enough for per-example structure, small enough to be fast

# Every architecture (small, large, fc), convolution (bcop, rko, ossn, svcm, plain), dense layer
# (bjorck, plain), activation (maxmin, relu) and both input shapes (MNIST, CIFAR-10) at least once.
MODELS = (
    "bcop-small-mnist",
    "rko-large-mnist",
    "ossn-small-mnist-relu",
    "svcm-large-mnist",
    "plain-small-mnist",
    "plain-fc-mnist-maxmin",
    "bcop-small-cifar10",
)


def _seeded(*shape: int, seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _svd_polar(w: torch.Tensor) -> torch.Tensor:
    """Reference polar factor ``U V^T``; autograd through the SVD is exact for distinct
    singular values, which random matrices have."""
    u, _, vh = torch.linalg.svd(w, full_matrices=False)
    return u @ vh


# --- the polar factor's custom autograd.Function --------------------------------------------------


@pytest.mark.parametrize("shape", [(6, 4), (4, 7), (3, 5, 5)])
def test_polar_jvp_equals_the_derivative_of_the_svd_polar_factor(shape: tuple[int, ...]) -> None:
    w = _seeded(*shape, seed=0, dtype=torch.float64) - 0.5
    tangent = _seeded(*shape, seed=1, dtype=torch.float64)
    value, derivative = jvp(polar, (w,), (tangent,))
    _, expected = torch.autograd.functional.jvp(_svd_polar, w, tangent)
    torch.testing.assert_close(value, _svd_polar(w), atol=1e-12, rtol=0)
    torch.testing.assert_close(derivative, expected, atol=1e-10, rtol=0)


@pytest.mark.parametrize("shape", [(5, 3), (3, 5)])
def test_polar_jacfwd_and_jacrev_equal_the_autograd_jacobian(shape: tuple[int, ...]) -> None:
    """jacfwd vmaps the jvp rule and jacrev the backward: both vmap rules are exercised."""
    w = _seeded(*shape, seed=2, dtype=torch.float64) - 0.5
    expected = torch.autograd.functional.jacobian(_svd_polar, w)
    torch.testing.assert_close(jacfwd(polar)(w), expected, atol=1e-10, rtol=0)
    torch.testing.assert_close(jacrev(polar)(w), expected, atol=1e-10, rtol=0)


def test_polar_under_vmap_equals_the_batched_call() -> None:
    w = _seeded(4, 6, 3, seed=3) - 0.5
    torch.testing.assert_close(vmap(polar)(w), polar(w), atol=1e-6, rtol=0)


# --- networks, with respect to the input ---------------------------------------------------------


@pytest.fixture(scope="module", params=MODELS)
def net(request: pytest.FixtureRequest) -> tuple[LipschitzNet, torch.Tensor, torch.Tensor]:
    """(model in eval mode, a batch x, its Jacobian from autograd: (N, 10, N, C, H, W))."""
    torch.manual_seed(0)
    model = create_model(request.param).eval()
    x = _seeded(N, *model.input_shape, seed=4)
    jacobian = torch.autograd.functional.jacobian(model, x)
    return model, x, jacobian


def _flat(t: torch.Tensor, leading: int) -> torch.Tensor:
    return t.reshape(*t.shape[:leading], -1)


def test_jacrev_wrt_the_input_equals_autograd(net: tuple[LipschitzNet, torch.Tensor, torch.Tensor]) -> None:
    model, x, jacobian = net
    torch.testing.assert_close(jacrev(model)(x), jacobian, **TOL)


def test_jvp_and_vjp_wrt_the_input_equal_products_with_the_autograd_jacobian(
    net: tuple[LipschitzNet, torch.Tensor, torch.Tensor],
) -> None:
    model, x, jacobian = net
    tangent, cotangent = _seeded(*x.shape, seed=5), _seeded(N, 10, seed=6)
    logits, forward = jvp(model, (x,), (tangent,))
    out, pullback = vjp(model, x)
    (backward,) = pullback(cotangent)
    matrix = _flat(jacobian, 2).reshape(N * 10, -1)  # (N * 10, N * C * H * W)
    torch.testing.assert_close(logits, model(x), **TOL)
    torch.testing.assert_close(out, model(x), **TOL)
    torch.testing.assert_close(forward.reshape(-1), matrix @ tangent.reshape(-1), **TOL)
    torch.testing.assert_close(backward.reshape(-1), cotangent.reshape(-1) @ matrix, **TOL)
    with frozen_weights(model):  # the layers serve their cached kernels, as in an attack
        _, frozen = jvp(model, (x,), (tangent,))
    torch.testing.assert_close(frozen, forward, **TOL)


def test_vmap_of_per_example_jacobians_equals_the_diagonal_blocks_of_autograd(
    net: tuple[LipschitzNet, torch.Tensor, torch.Tensor],
) -> None:
    model, x, jacobian = net

    def single(xi: torch.Tensor) -> torch.Tensor:
        return model(xi[None])[0]

    with torch.no_grad():  # vmap without autograd takes the layers' cached kernels
        torch.testing.assert_close(vmap(single)(x), model(x), **TOL)
    per_example = vmap(jacrev(single))(x)  # (N, 10, C, H, W)
    blocks = torch.stack([jacobian[i, :, i] for i in range(N)])
    torch.testing.assert_close(per_example, blocks, **TOL)


# --- networks, with respect to the parameters (functional_call) ---------------------------------


def _loss_of(model: LipschitzNet) -> Callable[[dict[str, torch.Tensor], torch.Tensor], torch.Tensor]:
    def loss(params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        return functional_call(model, params, (x,)).logsumexp(dim=1).sum()

    return loss


def test_grad_and_per_example_grads_wrt_the_parameters_equal_autograd(
    net: tuple[LipschitzNet, torch.Tensor, torch.Tensor],
) -> None:
    model, x, _ = net
    params = {k: v.detach() for k, v in model.named_parameters()}
    loss = _loss_of(model)
    expected = torch.autograd.grad(model(x).logsumexp(dim=1).sum(), list(model.parameters()))
    for got, want in zip(grad(loss)(params, x).values(), expected, strict=True):
        torch.testing.assert_close(got, want, **TOL)
    per_example = vmap(grad(loss), in_dims=(None, 0))(params, x[:, None])
    first = torch.autograd.grad(model(x[:1]).logsumexp(dim=1).sum(), list(model.parameters()))
    for got, want in zip(per_example.values(), first, strict=True):
        torch.testing.assert_close(got[0], want, **TOL)


def test_jvp_wrt_the_parameters_is_the_adjoint_of_autograd_and_ignores_the_kernel_cache(
    net: tuple[LipschitzNet, torch.Tensor, torch.Tensor],
) -> None:
    """<J t, u> = <t, J^T u>, after a no-grad call has cached the layers' kernels: the cache
    must not hand the jvp a kernel without its tangent."""
    model, x, _ = net
    with torch.no_grad():
        model(x)
    params = {k: v.detach() for k, v in model.named_parameters()}
    tangents = {k: _seeded(*v.shape, seed=7) - 0.5 for k, v in params.items()}
    cotangent = _seeded(N, 10, seed=8)
    _, forward = jvp(lambda p: functional_call(model, p, (x,)), (params,), (tangents,))
    backward = torch.autograd.grad(model(x), list(model.parameters()), cotangent)
    lhs = (forward * cotangent).sum()
    rhs = sum((g * t).sum() for g, t in zip(backward, tangents.values(), strict=True))
    torch.testing.assert_close(lhs, rhs, atol=1e-4, rtol=1e-4)


def test_vmap_over_stacked_parameters_runs_an_ensemble() -> None:
    """An ensemble by vmap over stacked weights (and OSSN's buffers), with and without autograd,
    equals calling each model."""
    models = [create_model("ossn-small-mnist").eval() for _ in range(3)]
    params, buffers = stack_module_state(models)
    x = _seeded(N, 1, 28, 28, seed=9)

    def call(p: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> torch.Tensor:
        return functional_call(models[0], (p, b), (x,))

    expected = torch.stack([m(x) for m in models]).detach()
    torch.testing.assert_close(vmap(call)(params, buffers), expected, **TOL)
    with torch.no_grad():
        torch.testing.assert_close(vmap(call)(params, buffers), expected, **TOL)

"""Tests for bcop.orthogonal: Björck, the polar factor and its backward, exact singular values of
circular convolutions, power iteration and kernel composition.

Everything runs in float64 on tiny matrices, so each tolerance is close to machine precision
unless an iteration count limits it.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from bcop.orthogonal import (
    bjorck,
    compose_kernels,
    conv_singular_values,
    conv_spectral_norm,
    orthonormalize,
    polar,
    power_iteration,
    spectral_norm_upper_bound,
)

DT = torch.float64


pytestmark = pytest.mark.usefixtures("one_thread")


def _randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=DT)


def _has_orthonormal_rows_or_columns(q: torch.Tensor, tol: float) -> bool:
    small = min(q.shape[-2:])
    gram = q.mT @ q if q.shape[-2] >= q.shape[-1] else q @ q.mT
    return bool((gram - torch.eye(small, dtype=q.dtype)).abs().max() < tol)


def _svd_polar(w: torch.Tensor) -> torch.Tensor:
    """Reference polar factor U V^T from a full SVD."""
    u, _, vh = torch.linalg.svd(w, full_matrices=False)
    return u @ vh


def _circular_conv_matrix(kernel: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Dense matrix of y[o, i, j] = sum_{c, a, b} K[o, c, a, b] x[c, (i + a) % h, (j + b) % w]."""
    cout, cin, kh, kw = kernel.shape
    m = torch.zeros(cout, h, w, cin, h, w, dtype=kernel.dtype)
    for a in range(kh):
        for b in range(kw):
            for i in range(h):
                for j in range(w):
                    m[:, i, j, :, (i + a) % h, (j + b) % w] += kernel[:, :, a, b]
    return m.reshape(cout * h * w, cin * h * w)


# --- Björck and the polar factor -------------------------------------------------------------


@pytest.mark.parametrize("shape", [(7, 7), (9, 5), (5, 9), (3, 6, 4)])
@pytest.mark.parametrize("order", [1, 2, 3])
def test_bjorck_converges_to_the_polar_factor(shape: tuple[int, ...], order: int) -> None:
    """Tolerance 1e-10 after 40 iterations on well-conditioned Gaussian matrices."""
    w = _randn(*shape)
    q = bjorck(w, iters=40, order=order)
    torch.testing.assert_close(q, _svd_polar(w), rtol=0, atol=1e-10)
    assert _has_orthonormal_rows_or_columns(q, 1e-10)


def test_bjorck_with_scaling_converges_for_spectral_norm_far_above_sqrt3() -> None:
    """||W||_2 ~ 1e3 >> sqrt(3): scaled Björck still reaches the polar factor (tolerance 1e-10),
    while the unscaled iteration does not (the check can fail)."""
    w = 100.0 * _randn(8, 6)
    assert torch.linalg.matrix_norm(w, ord=2) > 100 * 3**0.5
    torch.testing.assert_close(bjorck(w, iters=40, scale=True), _svd_polar(w), rtol=0, atol=1e-10)
    unscaled = bjorck(w, iters=40, scale=False)
    assert not torch.allclose(unscaled, _svd_polar(w), atol=1e-3)


@pytest.mark.parametrize("order", [1, 2, 3])
def test_bjorck_gram_on_the_small_side_equals_the_straightforward_iteration(order: int) -> None:
    """For a wide 4 x 10 matrix, iterating with the 10 x 10 Gram W^T W gives the same result
    as the library's 4 x 4 Gram (tolerance 1e-12)."""
    w = _randn(4, 10)
    w = w / spectral_norm_upper_bound(w)
    coeffs = [1.0, 1.0 / 2, 3.0 / 8, 5.0 / 16][: order + 1]
    eye = torch.eye(10, dtype=DT)
    ref = w.clone()
    for _ in range(15):
        r = eye - ref.mT @ ref
        poly = sum(c * torch.linalg.matrix_power(r, p) for p, c in enumerate(coeffs))
        ref = ref @ poly
    torch.testing.assert_close(bjorck(w, iters=15, order=order), ref, rtol=0, atol=1e-12)


def test_bjorck_rejects_bad_order_and_iterations() -> None:
    with pytest.raises(ValueError, match="order"):
        bjorck(_randn(3, 3), order=4)
    with pytest.raises(ValueError, match="iterations"):
        bjorck(_randn(3, 3), iters=-1)


def test_spectral_norm_upper_bound_is_an_upper_bound() -> None:
    """Holds for every matrix of a batch (tolerance 1e-12)."""
    w = _randn(20, 7, 11)
    bound = spectral_norm_upper_bound(w).squeeze(-1).squeeze(-1)
    assert bool((torch.linalg.matrix_norm(w, ord=2) <= bound + 1e-12).all())


@pytest.mark.parametrize("shape", [(6, 6), (8, 3), (3, 8), (4, 7, 5)])
def test_polar_equals_the_svd_polar_factor(shape: tuple[int, ...]) -> None:
    """Tolerance 1e-10, float64."""
    w = _randn(*shape)
    q = polar(w)
    assert q.shape == w.shape
    torch.testing.assert_close(q, _svd_polar(w), rtol=0, atol=1e-10)


def _ill_conditioned(m: int, n: int, cond: float) -> torch.Tensor:
    """A float32 m x n matrix (m >= n) at the initialisation's scale 1/sqrt(m), its singular
    values spread geometrically over a factor ``cond``."""
    u = torch.linalg.qr(_randn(m, n)).Q
    v = torch.linalg.qr(_randn(n, n, seed=1)).Q
    s = torch.logspace(0, -math.log10(cond), n, dtype=DT) / math.sqrt(m)
    return ((u * s) @ v.mT).float()


def _ortho_error(q: torch.Tensor) -> float:
    return float((torch.linalg.svdvals(q.detach().double()) - 1).abs().max())


@pytest.mark.parametrize("cond", [68.0, 1e4], ids=["cond68", "cond1e4"])
@pytest.mark.parametrize("transpose", [False, True], ids=["tall", "wide"])
def test_polar_is_orthonormal_in_float32_for_an_ill_conditioned_matrix(transpose: bool, cond: float) -> None:
    """A float32 1200 x 300 matrix of condition number 68 (what our trained 3136 x 512 dense
    layers reach) or 1e4: the training recipe (precise=False) gives a factor whose singular
    values are within 1e-5 of 1, the eval recipe (float64 Gram) within 1e-4 (it rounds the
    product W A in float32: about 6e-8 cond(W)), and both are the float64 polar factor of the
    same input to 1e-4 (cond 68: 1e-5). Both backwards are finite."""
    w = _ill_conditioned(1200, 300, cond)
    w = w.mT if transpose else w
    w_train = w.clone().requires_grad_(True)
    q_train, q_eval = polar(w_train, precise=False), polar(w_train)
    assert q_train.dtype == q_eval.dtype == torch.float32
    assert _ortho_error(q_train) < 1e-5
    assert _ortho_error(q_eval) < 1e-4
    tol = 1e-5 if cond < 100 else 1e-4
    for q in (q_train, q_eval):
        torch.testing.assert_close(q.detach().double(), polar(w.double()), rtol=0, atol=tol)
    (q_train.sum() + q_eval.sum()).backward()
    assert w_train.grad is not None and bool(torch.isfinite(w_train.grad).all())


def test_float32_gram_and_eigh_alone_are_not_orthonormal_at_condition_number_68() -> None:
    """Why the training recipe takes its float64 eigendecomposition and Newton-Schulz step
    (Note [Orthonormal in float32 while training]): the plain float32 route W (W^T W)^{-1/2}
    misses 1 by more than 1e-4 on the matrix of the test above."""
    w = _ill_conditioned(1200, 300, 68.0)
    evals, evecs = torch.linalg.eigh(w.mT @ w)
    assert _ortho_error(w @ (evecs / evals.sqrt().unsqueeze(-2)) @ evecs.mT) > 1e-4


def test_polar_of_a_rescaled_matrix_is_unchanged() -> None:
    """The polar factor is scale invariant (tolerance 1e-10)."""
    w = _randn(6, 4)
    torch.testing.assert_close(polar(1e3 * w), polar(w), rtol=0, atol=1e-10)


@pytest.mark.parametrize("shape", [(6, 4), (4, 6), (5, 5), (3, 5, 3), (2, 3, 5)], ids=str)
def test_polar_analytic_backward_passes_gradcheck(shape: tuple[int, ...]) -> None:
    """Tall, wide, square and batched inputs; gradcheck's default float64 tolerances
    (atol 1e-5, rtol 1e-3 against finite differences)."""
    w = _randn(*shape).requires_grad_(True)
    assert torch.autograd.gradcheck(polar, (w,))


def test_polar_backward_is_finite_and_correct_at_an_exactly_orthogonal_input() -> None:
    """At an orthogonal Q all singular values coincide: autograd through eigh divides by
    s_i - s_j = 0 and gives non-finite gradients, while polar's backward is finite and passes
    gradcheck there (default float64 tolerances)."""
    q = torch.linalg.qr(_randn(6, 6)).Q
    g = _randn(6, 6, seed=1)

    x = q.clone().requires_grad_(True)
    polar(x).backward(g)
    assert torch.isfinite(x.grad).all()
    # At S = I the gradient is the skew part: Q (Q^T G - G^T Q) / 2 (tolerance 1e-10).
    torch.testing.assert_close(x.grad, q @ (q.mT @ g - g.mT @ q) / 2, rtol=0, atol=1e-10)
    assert torch.autograd.gradcheck(polar, (q.clone().requires_grad_(True),))

    naive = q.clone().requires_grad_(True)
    evals, evecs = torch.linalg.eigh(naive.mT @ naive)
    (naive @ (evecs / evals.sqrt().unsqueeze(-2)) @ evecs.mT).backward(g)
    assert not torch.isfinite(naive.grad).all()


@pytest.mark.parametrize("method", ["polar", "bjorck"])
def test_orthonormalize_returns_orthonormal_rows_or_columns(method: str) -> None:
    """Tolerance 1e-10 for both methods (Björck: 20 iterations from an orthogonal-ish start)."""
    w = torch.linalg.qr(_randn(12, 5)).Q + 0.05 * _randn(12, 5, seed=2)
    assert _has_orthonormal_rows_or_columns(orthonormalize(w, method), 1e-10)
    assert _has_orthonormal_rows_or_columns(orthonormalize(w.mT, method), 1e-10)


def test_orthonormalize_rejects_unknown_method() -> None:
    with pytest.raises(ValueError, match="unknown orthonormalisation method 'qr'"):
        orthonormalize(_randn(3, 3), "qr")


# --- singular values of circular convolutions ------------------------------------------------


@pytest.mark.parametrize(
    ("cin", "cout", "k", "size"),
    [(2, 3, 3, (5, 5)), (3, 2, 2, (4, 6)), (2, 2, 5, (3, 3)), (1, 2, 4, (3, 2))],
    ids=["2to3_k3_5x5", "3to2_k2_4x6", "aliased_k5_on_3x3", "aliased_k4_on_3x2"],
)
def test_conv_singular_values_match_the_dense_circular_convolution_matrix(
    cin: int, cout: int, k: int, size: tuple[int, int]
) -> None:
    """All singular values, sorted, agree to 1e-10 (float64), including kernels larger than the
    input, which wrap around (alias)."""
    kernel = _randn(cout, cin, k, k)
    dense = _circular_conv_matrix(kernel, *size)
    expected = torch.linalg.svdvals(dense)[: size[0] * size[1] * min(cin, cout)]
    got = conv_singular_values(kernel, size).sort(descending=True).values
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-10)
    assert conv_spectral_norm(kernel, size) == pytest.approx(float(expected[0]), abs=1e-10)


def test_circular_conv_matrix_agrees_with_conv2d_circular_padding() -> None:
    """Sanity check of the dense reference: it is conv2d on a circularly padded input
    (tolerance 1e-12)."""
    kernel = _randn(3, 2, 3, 3)
    x = _randn(1, 2, 5, 5, seed=3)
    y = F.conv2d(F.pad(x, (0, 2, 0, 2), mode="circular"), kernel)
    torch.testing.assert_close(
        _circular_conv_matrix(kernel, 5, 5) @ x.flatten(), y.flatten(), rtol=0, atol=1e-12
    )


def test_conv_singular_values_accepts_an_int_size_and_rejects_non_4d_kernels() -> None:
    kernel = _randn(2, 2, 3, 3)
    torch.testing.assert_close(conv_singular_values(kernel, 4), conv_singular_values(kernel, (4, 4)))
    with pytest.raises(ValueError, match="4-D"):
        conv_singular_values(_randn(2, 3, 3), 4)


# --- power iteration and kernel composition --------------------------------------------------


def test_power_iteration_finds_the_largest_singular_value_from_below() -> None:
    """On a 30 x 20 matrix with a clear spectral gap: within 1e-8 relative, never above."""
    u = torch.linalg.qr(_randn(30, 20)).Q
    v = torch.linalg.qr(_randn(20, 20, seed=1)).Q
    s = torch.linspace(1.0, 0.1, 20, dtype=DT) * torch.tensor([3.0] + [1.0] * 19, dtype=DT)
    a = u @ torch.diag(s) @ v.mT
    norm = power_iteration(lambda x: x.flatten(1) @ a.mT, (20,), iters=100)
    assert norm == pytest.approx(3.0, rel=1e-8)
    assert norm <= 3.0 * (1 + 1e-12)


@pytest.mark.parametrize(("ka", "kb"), [((3, 3), (3, 3)), ((3, 2), (2, 4)), ((1, 1), (5, 3))])
def test_compose_kernels_equals_two_valid_convolutions(ka: tuple[int, int], kb: tuple[int, int]) -> None:
    """conv(conv(x, A), B) == conv(x, compose_kernels(A, B)) without padding (tolerance 1e-12)."""
    a = _randn(4, 3, *ka)
    b = _randn(5, 4, *kb, seed=1)
    x = _randn(2, 3, 11, 12, seed=2)
    c = compose_kernels(a, b)
    assert c.shape == (5, 3, ka[0] + kb[0] - 1, ka[1] + kb[1] - 1)
    torch.testing.assert_close(F.conv2d(x, c), F.conv2d(F.conv2d(x, a), b), rtol=0, atol=1e-12)

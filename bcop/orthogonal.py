"""Pure tensor maths behind the orthogonal layers.

Everything here is a function of tensors: no modules, no state.

* :func:`bjorck` -- Björck-Bowie orthonormalisation, the iteration the paper uses.
* :func:`polar` -- the exact orthogonal polar factor (the limit of Björck's iteration) with a
  numerically stable backward pass; what the layers use by default because it is faster.
* :func:`gram_inverse_sqrt` -- the small factor ``A`` of ``polar(W) = W A``, which a dense layer
  applies to ``W x`` instead of forming the polar factor.
* :func:`orthonormalize` -- one entry point that dispatches between the two.
* :func:`conv_singular_values` -- exact singular values of a 2-D circular convolution
  (Sedghi, Gupta and Long, 2019).
* :func:`power_iteration` -- operator norm of any linear map given as a function.
* :func:`compose_kernels` -- the kernel of one convolution applied after another.
* :func:`circular_pad`, :func:`conv2d_same` -- the stride-1, same-size convolution every layer uses.
* :func:`bcop_kernel` -- BCOP's orthogonal kernel from orthogonal matrices (Li et al. 2019).
* :func:`svcm_project` -- singular value clipping and masking of a kernel (Sedghi et al. 2019).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

__all__ = [
    "bjorck",
    "polar",
    "gram_inverse_sqrt",
    "polar_linear",
    "newton_schulz_step",
    "GRAM_EPS",
    "FLOAT32_EIGH_MAX_COND",
    "FLOAT32_GRAM_MAX_COND",
    "REFINED_EIGH_MAX_COND",
    "orthonormalize",
    "ORTHO_METHODS",
    "spectral_norm_upper_bound",
    "conv_singular_values",
    "conv_spectral_norm",
    "power_iteration",
    "compose_kernels",
    "as_pair",
    "circular_pad",
    "conv2d_same",
    "bcop_kernel",
    "svcm_project",
]

ORTHO_METHODS = ("polar", "bjorck")


def _tall(w: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """Return ``w`` transposed so that rows >= columns, and whether it was transposed."""
    if w.shape[-2] < w.shape[-1]:
        return w.mT, True
    return w, False


def spectral_norm_upper_bound(w: torch.Tensor) -> torch.Tensor:
    """A cheap guaranteed upper bound on the spectral norm of each matrix in a batch.

    ``min(||W||_F, sqrt(||W||_1 ||W||_inf))``; both are upper bounds on ``||W||_2``.

    Args:
        w: (..., m, n) matrices.

    Returns:
        (..., 1, 1) bounds, broadcastable against ``w``.
    """
    fro = torch.linalg.matrix_norm(w, ord="fro")
    one = w.abs().sum(dim=-2).amax(dim=-1)
    inf = w.abs().sum(dim=-1).amax(dim=-1)
    return torch.minimum(fro, torch.sqrt(one * inf)).clamp_min(1e-12)[..., None, None]


def bjorck(w: torch.Tensor, iters: int = 20, order: int = 1, scale: bool = True) -> torch.Tensor:
    """Björck orthonormalisation of a batch of matrices.

    Iterates ``W <- W (I + 1/2 (I - W^T W) + 3/8 (I - W^T W)^2 + ...)`` (the Taylor series of
    ``(W^T W)^{-1/2}`` cut after ``order`` terms), which converges to the orthogonal polar
    factor of ``W`` whenever ``||W||_2 < sqrt(3)`` (``order=1``). With ``scale=True`` the input is
    first divided by :func:`spectral_norm_upper_bound`, so ``||W||_2 <= 1`` and convergence is
    guaranteed for every full-rank input.

    The Gram matrix is formed on the smaller side (``n x n`` for an ``m x n`` matrix with
    ``m >= n``), which is what makes this affordable for the 3136 x 512 dense layer.

    Args:
        w: (..., m, n) matrices, any m, n.
        iters: number of iterations.
        order: 1 (the paper's choice), 2 or 3.
        scale: divide by an upper bound on the spectral norm first.

    Returns:
        (..., m, n) matrices with orthonormal columns (m >= n) or rows (m < n).
    """
    if order not in (1, 2, 3):
        raise ValueError(f"Björck order must be 1, 2 or 3, got {order}")
    if iters < 0:
        raise ValueError(f"Björck iterations must be >= 0, got {iters}")
    w, transposed = _tall(w)
    if scale:
        w = w / spectral_norm_upper_bound(w)
    coeffs = [1.0, 1.0 / 2, 3.0 / 8, 5.0 / 16][: order + 1]
    eye = torch.eye(w.shape[-1], dtype=w.dtype, device=w.device)
    for _ in range(iters):
        r = eye - w.mT @ w
        poly = coeffs[-1] * r
        for c in reversed(coeffs[1:-1]):
            poly = (poly + c * eye) @ r
        w = w + w @ poly
    return w.mT if transposed else w


# Note [Inverse square root derivatives]
# ~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~
# The polar factor of a tall full-rank W is Q = W A with A = G^{-1/2}, G = W^T W. A is a spectral
# function of G: with G = V diag(l) V^T and f(l) = l^{-1/2}, the Daleckii-Krein formula gives its
# derivative along a tangent dG as
#
#     dA = V [(V^T dG V) o F] V^T,   F_ij = (f(l_i) - f(l_j)) / (l_i - l_j) = -1 / (s_i s_j (s_i + s_j)),
#
# with s = sqrt(l) (on the diagonal, F_ii = f'(l_i) = -1 / (2 s_i^3), the same expression). The
# reverse-mode formula is the same map applied to the upstream gradient (F is symmetric), and
# dG = dW^T W + W^T dW turns a gradient Gbar with respect to G into W (Gbar + Gbar^T). Every entry
# of F divides by s_i + s_j > 0 only, so unlike autograd through ``eigh`` (which divides by
# l_i - l_j) the derivatives stay finite when singular values coincide -- exactly the case of a
# nearly orthogonal matrix, where every trained layer lives. The products W A and everything
# around them are ordinary autograd operations, so a layer may apply A to ``W x`` instead of
# forming Q (see :class:`bcop.layers.linear.BjorckLinear`) and still get the exact gradient.


def _daleckii_krein(tangent: torch.Tensor, s: torch.Tensor, evecs: torch.Tensor) -> torch.Tensor:
    """``V [(V^T T V) o F] V^T`` with ``F_ij = -1 / (s_i s_j (s_i + s_j))`` (Note [Inverse square
    root derivatives]): the derivative of ``G^{-1/2}`` along ``T`` and its adjoint."""
    si, sj = s.unsqueeze(-1), s.unsqueeze(-2)
    return evecs @ ((evecs.mT @ tangent @ evecs) / (-si * sj * (si + sj))) @ evecs.mT


# Note [Orthonormal in float32 while training]
# ~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~
# A training step builds every weight in float32, and what it trains with must be orthonormal
# (max |sigma - 1| <= 1e-4) even for raw matrices of condition number 1e4. Three errors stand in
# the way; the condition number, read off a first float32 ``eigh``, says which need a cure:
#
# * float32 ``eigh`` is accurate to about u ||G|| in each eigenvalue (u = 6e-8), so the small
#   eigenvalues of G = W^T W carry a relative error of a few u cond(W)^2: 1.5e-4 in the factor
#   at cond(W) = 30, where trained dense layers sit. Above FLOAT32_EIGH_MAX_COND the result is
#   refined in float64 (:func:`_refined_inverse_sqrt`, a first-order correction: the accuracy of
#   a float64 ``eigh`` at a third of its cost), up to REFINED_EIGH_MAX_COND, where the
#   correction's second-order error reaches 1e-5; beyond, a float64 ``eigh``.
# * the float32 Gram matrix itself has entries off by about u ||G||, an error of about
#   0.1 u cond(W)^2 in the factor (7e-6 at cond 30): fine up to FLOAT32_GRAM_MAX_COND, beyond
#   which the Gram matrix is formed in float64.
# * a float32 product with A = G^{-1/2}, of condition number cond(W), rounds to about u cond(W)
#   (7e-5 at 1e4). :func:`polar` therefore ends a training step's factor with one Newton-Schulz
#   step Q <- Q + Q (I - Q^T Q) / 2, which squares the error of the (well-conditioned) Q down to
#   float32 rounding; its derivative at an orthonormal Q is the projection onto the tangent
#   space, which leaves the polar factor's derivative as it is. The step costs a BCOP layer of
#   16-64 channels a fifth of its time, so it is taken only above FLOAT32_PRODUCT_MAX_COND:
#   below, the unrefined BCOP kernel is within 3e-5 of orthogonal (16-256 channels), a third of
#   the 1e-4 goal. :func:`polar_linear` applies A to W x without forming Q only up to
#   REFINED_EIGH_MAX_COND (rounding below 1e-5).
#
# Under torch.func transforms or compilation the condition number cannot steer Python, and the
# float64 route is always taken. Eval mode (``precise=True``) forms the Gram matrix in float64
# from the start and skips the Newton-Schulz step: the weights that inference, certification and
# the shipped results use are computed exactly as they always were.

GRAM_EPS = 1e-12
"""Floor on the Gram eigenvalues relative to the largest one: condition numbers up to 1e6."""
FLOAT32_EIGH_MAX_COND = 5.0
"""Largest condition number of a raw matrix for which a training step trusts a float32 ``eigh``."""
FLOAT32_GRAM_MAX_COND = 50.0
"""Largest condition number of a raw matrix for which a training step trusts its float32 Gram
matrix (Note [Orthonormal in float32 while training])."""
REFINED_EIGH_MAX_COND = 150.0
"""Largest condition number for which a training step refines a float32 ``eigh`` instead of
computing one in float64, and :func:`polar_linear` applies the small factor to ``W x``."""
FLOAT32_PRODUCT_MAX_COND = 50.0
"""Largest condition number of a raw matrix for which a training step's polar factor skips the
Newton-Schulz step (Note [Orthonormal in float32 while training])."""


def _can_branch(t: torch.Tensor) -> bool:
    """Whether a Python branch may depend on ``t``'s values (no transform or compiler traces it)."""
    return not torch._C._functorch.is_functorch_wrapped_tensor(t) and not torch.compiler.is_compiling()


def _condition_number(s: torch.Tensor) -> float:
    """Largest condition number in a batch, from ascending singular values ``s`` (..., k)."""
    return float((s[..., -1] / s[..., 0]).max())


def _exact_inverse_sqrt(evals: torch.Tensor, evecs: torch.Tensor, eps: float) -> tuple[torch.Tensor, ...]:
    """``(G^{-1/2}, sqrt of the eigenvalues, eigenvectors)`` from ``G``'s eigendecomposition."""
    s = torch.maximum(evals, eps * evals[..., -1:]).sqrt()
    return (evecs / s.unsqueeze(-2)) @ evecs.mT, s, evecs


def _refined_inverse_sqrt(gram: torch.Tensor, evecs: torch.Tensor, eps: float) -> tuple[torch.Tensor, ...]:
    """As :func:`_exact_inverse_sqrt`, from approximate eigenvectors ``V`` of ``G`` (a float32
    ``eigh``).

    ``B = V^T G V`` (float64) is diagonal up to the eigensolver's error ``E``; then
    ``B^{-1/2} = D^{-1/2} + E o F + O(||E||^2)`` (F of Note [Inverse square root derivatives]
    at ``s = sqrt(diag B)``), at a third of the cost of a float64 ``eigh``.
    """
    v = evecs.to(torch.float64)
    b = v.mT @ gram.to(torch.float64) @ v
    d = b.diagonal(dim1=-2, dim2=-1)
    s = torch.maximum(d, eps * d.amax(dim=-1, keepdim=True)).sqrt()
    si, sj = s.unsqueeze(-1), s.unsqueeze(-2)
    core = b / (-si * sj * (si + sj))
    core = core + torch.diag_embed(1 / s - core.diagonal(dim1=-2, dim2=-1))
    # V is orthonormal to float32 rounding and core nearly diagonal: float32 products suffice
    core, v = core.to(evecs.dtype), evecs
    return v @ core @ v.mT, s, v


def _inverse_sqrt_factors(w: torch.Tensor, eps: float, precise: bool) -> tuple[torch.Tensor, ...]:
    """``(W^T W)^{-1/2}``, the singular values of ``W`` and the eigenvectors of ``W^T W`` for
    tall (..., m, n) ``w``: by the eval recipe (``precise``: float64 throughout) or a training
    step's, chosen by the condition number (Note [Orthonormal in float32 while training])."""
    if not precise and w.dtype != torch.float64 and _can_branch(w):
        gram = w.mT @ w
        evals, evecs = torch.linalg.eigh(gram)
        cond = float((evals[..., -1] / evals[..., 0].clamp_min(torch.finfo(evals.dtype).tiny)).max()) ** 0.5
        if cond <= FLOAT32_EIGH_MAX_COND:
            return _exact_inverse_sqrt(evals, evecs, eps)
        if cond <= REFINED_EIGH_MAX_COND:
            if cond > FLOAT32_GRAM_MAX_COND:
                gram = w.to(torch.float64).mT @ w.to(torch.float64)
            return _refined_inverse_sqrt(gram, evecs, eps)
    w64 = w.to(torch.float64)
    return _exact_inverse_sqrt(*torch.linalg.eigh(w64.mT @ w64), eps)


class _GramInverseSqrt(torch.autograd.Function):
    """``A = (W^T W)^{-1/2}`` of tall full-rank matrices, the factor with ``polar(W) = W A``.

    Forward returns ``A`` and, as non-differentiable outputs, what both derivatives reuse: the
    singular values ``s`` of ``W`` and the eigenvectors of ``W^T W``. Backward and jvp are the
    closed forms of Note [Inverse square root derivatives]. Forward, backward and jvp are plain
    batched tensor code, so torch.func derives the vmap rule (``generate_vmap_rule``). Both rules
    are first derivatives only: they treat ``s`` and the eigenvectors as constants, so a second
    derivative with respect to ``W`` would miss their dependence on ``W``.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(w: torch.Tensor, eps: float, precise: bool) -> tuple[torch.Tensor, ...]:  # type: ignore[override]
        inv_sqrt, s, evecs = _inverse_sqrt_factors(w, eps, precise)
        return inv_sqrt.to(w.dtype), s.to(w.dtype), evecs.to(w.dtype)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:  # type: ignore[override]
        w = inputs[0]
        _, s, evecs = output
        ctx.mark_non_differentiable(s, evecs)
        ctx.save_for_backward(w, s, evecs)
        ctx.save_for_forward(w, s, evecs)

    @staticmethod
    def backward(ctx, grad: torch.Tensor, *_: torch.Tensor) -> tuple[torch.Tensor, None, None]:  # type: ignore[override]
        w, s, evecs = ctx.saved_tensors
        gram_grad = _daleckii_krein(grad, s, evecs)
        return w @ (gram_grad + gram_grad.mT), None, None

    @staticmethod
    def jvp(ctx, w_dot: torch.Tensor, *_: None) -> tuple[torch.Tensor, None, None]:  # type: ignore[override]
        w, s, evecs = ctx.saved_tensors
        gram_dot = w_dot.mT @ w
        return _daleckii_krein(gram_dot + gram_dot.mT, s, evecs), None, None


class _Polar(torch.autograd.Function):
    """``Q = W (W^T W)^{-1/2}`` of tall full-rank matrices, one node of the autograd graph.

    The product with ``A`` and the derivative of ``A`` (Note [Inverse square root derivatives])
    are fused into one backward, ``Gbar A + W (K + K^T)`` with ``K`` the Daleckii-Krein map of
    ``W^T Gbar``: a BCOP layer of 16-64 channels spends most of its time dispatching small
    operations, and the separate product's autograd node costs it several. Outputs as
    :class:`_GramInverseSqrt`, ``Q`` in place of ``A``.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(w: torch.Tensor, eps: float, precise: bool) -> tuple[torch.Tensor, ...]:  # type: ignore[override]
        inv_sqrt, s, evecs = _GramInverseSqrt.forward(w, eps, precise)
        return w @ inv_sqrt, s, evecs, inv_sqrt

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:  # type: ignore[override]
        w = inputs[0]
        _, s, evecs, inv_sqrt = output
        ctx.mark_non_differentiable(s, evecs, inv_sqrt)
        ctx.save_for_backward(w, s, evecs, inv_sqrt)
        ctx.save_for_forward(w, s, evecs, inv_sqrt)

    @staticmethod
    def backward(ctx, grad: torch.Tensor, *_: torch.Tensor) -> tuple[torch.Tensor, None, None]:  # type: ignore[override]
        w, s, evecs, inv_sqrt = ctx.saved_tensors
        gram_grad = _daleckii_krein(w.mT @ grad, s, evecs)
        return grad @ inv_sqrt + w @ (gram_grad + gram_grad.mT), None, None

    @staticmethod
    def jvp(ctx, w_dot: torch.Tensor, *_: None) -> tuple[torch.Tensor, None, None, None]:  # type: ignore[override]
        w, s, evecs, inv_sqrt = ctx.saved_tensors
        gram_dot = w_dot.mT @ w
        return w_dot @ inv_sqrt + w @ _daleckii_krein(gram_dot + gram_dot.mT, s, evecs), None, None, None


# Note [Power iteration approaches sigma from below]
# ~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~
# For a linear map A and any unit vector v, ||A v|| <= sigma_max(A), and the power iteration's
# Rayleigh quotient sqrt(<v, A^T A v>) never decreases from one iterate to the next. Every
# estimate is therefore a *lower* bound on the operator norm: fine for normalising a weight
# during training (OSSN) or for a measurement, never for a certificate. Certificates use the
# exact norm instead (:func:`conv_spectral_norm`, by FFT), computed on the weight the layer
# really uses, so a layer normalised by a lagging estimate reports its true, slightly larger
# bound.


def gram_inverse_sqrt(w: torch.Tensor, eps: float = GRAM_EPS, precise: bool = True) -> torch.Tensor:
    """Inverse square root of the smaller Gram matrix: ``(W^T W)^{-1/2}`` for a tall ``W``,
    ``(W W^T)^{-1/2}`` for a wide one, so that ``polar(W)`` is ``W A`` or ``A W``.

    A layer can apply ``A`` to ``W x`` instead of forming the polar factor; the derivative is
    exact either way (Note [Inverse square root derivatives]).

    Args:
        w: (..., m, n) full-rank matrices.
        eps: floor on the Gram eigenvalues, relative to the largest one.
        precise: Gram matrix in float64 (eval mode); ``False``: as a training step computes it
            (Note [Orthonormal in float32 while training]).

    Returns:
        (..., k, k) symmetric positive definite, k = min(m, n), in ``w``'s dtype.
    """
    w, _ = _tall(w)
    return _GramInverseSqrt.apply(w, eps, precise)[0]


def newton_schulz_step(q: torch.Tensor) -> torch.Tensor:
    """One Newton-Schulz step ``Q + Q (I - Q^T Q) / 2`` towards orthonormal columns (tall ``q``)
    or rows (wide ``q``): squares the distance of a nearly orthonormal ``q`` from its polar factor.

    Args:
        q: (..., m, n) with singular values in (0, sqrt(3)).

    Returns:
        (..., m, n).
    """
    q, transposed = _tall(q)
    eye = torch.eye(q.shape[-1], dtype=q.dtype, device=q.device)
    q = q + 0.5 * q @ (eye - q.mT @ q)
    return q.mT if transposed else q


def polar(w: torch.Tensor, eps: float = GRAM_EPS, precise: bool = True) -> torch.Tensor:
    """Exact orthogonal polar factor of a batch of matrices (the closest orthonormal matrix).

    This is the fixed point of :func:`bjorck`, computed in closed form as ``W (W^T W)^{-1/2}``
    through the eigendecomposition of the smaller Gram matrix (:func:`gram_inverse_sqrt`), with a
    stable analytic derivative.

    ``precise=True`` (eval mode) forms the Gram matrix in float64; ``False`` is a training step's
    recipe, orthonormal to float32 rounding up to condition number 1e4 at a fraction of the cost
    (Note [Orthonormal in float32 while training]).

    Args:
        w: (..., m, n) full-rank matrices.
        eps: floor on the Gram eigenvalues relative to the largest one, guarding against rank
            deficiency (the eigenvalues are computed in float64).
        precise: the eval-mode recipe (float64 Gram matrix) or the training one.

    Returns:
        (..., m, n) with orthonormal columns (m >= n) or rows (m < n), in ``w``'s dtype.
    """
    w, transposed = _tall(w)
    q, s, _, _ = _Polar.apply(w, eps, precise)
    if not precise and (not _can_branch(s) or _condition_number(s) > FLOAT32_PRODUCT_MAX_COND):
        q = newton_schulz_step(q)
    return q.mT if transposed else q


def polar_linear(
    x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None = None, precise: bool = True
) -> torch.Tensor:
    """``F.linear(x, polar(w), bias)`` without forming ``polar(w)`` while ``w`` is well-conditioned.

    ``polar(W)`` is ``A W`` (wide ``W``) or ``W A`` (tall), with ``A`` the small factor of
    :func:`gram_inverse_sqrt`, so the layer's output is ``A`` applied to ``W x`` (or ``W`` to
    ``A x``): one Gram matrix and a few products of the small side instead of forming and
    differentiating the full factor, with the same exact derivative (Note [Inverse square root
    derivatives]). Applying ``A`` rounds like a product with a matrix of condition number
    cond(W), so beyond :data:`REFINED_EIGH_MAX_COND` the factor is formed (and, in a training step,
    refined) as :func:`polar` does it.

    Args:
        x: (N, in_features).
        w: (out_features, in_features) raw weight, full rank.
        bias: (out_features,) or None.
        precise: the eval-mode recipe (float64 Gram matrix) or the training one.

    Returns:
        (N, out_features).
    """
    tall = w.shape[-2] > w.shape[-1]
    a, s, _ = _GramInverseSqrt.apply(w if tall else w.mT, GRAM_EPS, precise)
    if _can_branch(s) and _condition_number(s) > REFINED_EIGH_MAX_COND:
        q = w @ a if tall else a @ w
        return F.linear(x, q if precise else newton_schulz_step(q), bias)
    if tall:
        return F.linear(F.linear(x, a), w, bias)
    return F.linear(F.linear(x, w), a, bias)


def orthonormalize(
    w: torch.Tensor, method: str = "polar", iters: int = 20, precise: bool = True
) -> torch.Tensor:
    """Orthonormalise a batch of matrices with the named method.

    Args:
        w: (..., m, n) matrices.
        method: ``"polar"`` (exact, default) or ``"bjorck"`` (``iters`` iterations, order 1).
        iters: Björck iterations; ignored by ``"polar"``.
        precise: polar's float64 Gram matrix (see :func:`polar`); ignored by ``"bjorck"``.

    Returns:
        (..., m, n) matrices with orthonormal columns or rows.
    """
    if method == "polar":
        return polar(w, precise=precise)
    if method == "bjorck":
        return bjorck(w, iters=iters)
    raise ValueError(f"unknown orthonormalisation method {method!r}; known: {ORTHO_METHODS}")


def _alias_kernel(kernel: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Wrap a kernel onto an ``size`` grid (summing entries that land on the same cell).

    A k x k kernel acting by circular convolution on an n x n input is the same operator as the
    kernel folded modulo n, which is what the FFT must see when k > n.
    """
    kh, kw = kernel.shape[-2:]
    h, w = size
    if kh <= h and kw <= w:
        return F.pad(kernel, (0, w - kw, 0, h - kh))
    out = kernel.new_zeros(*kernel.shape[:-2], h, w)
    rows = torch.arange(kh, device=kernel.device) % h
    cols = torch.arange(kw, device=kernel.device) % w
    idx = (rows[:, None] * w + cols[None, :]).reshape(-1)
    flat = out.reshape(*out.shape[:-2], h * w)
    flat.index_add_(-1, idx, kernel.reshape(*kernel.shape[:-2], kh * kw))
    return flat.reshape(out.shape)


def conv_singular_values(kernel: torch.Tensor, input_size: int | Sequence[int]) -> torch.Tensor:
    """All singular values of the 2-D circular convolution with ``kernel`` on a given input size.

    Method of Sedghi, Gupta and Long (ICLR 2019): the operator is block-diagonalised by the 2-D
    DFT, so its singular values are those of the ``h*w`` matrices ``FFT2(kernel)[:, :, u, v]``.
    Cross-correlation (what ``conv2d`` computes) has the same singular values as convolution.

    Args:
        kernel: (out, in, kh, kw) weight, as in ``nn.Conv2d``.
        input_size: n or (h, w) of the input.

    Returns:
        (h * w * min(out, in),) singular values, each frequency's in descending order.
    """
    if kernel.dim() != 4:
        raise ValueError(f"kernel must be 4-D (out, in, kh, kw), got shape {tuple(kernel.shape)}")
    size = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
    padded = _alias_kernel(kernel, size)
    transfer = torch.fft.fft2(padded)
    per_freq = transfer.permute(2, 3, 0, 1)  # (h, w, out, in)
    return torch.linalg.svdvals(per_freq).reshape(-1)


def conv_spectral_norm(kernel: torch.Tensor, input_size: int | Sequence[int]) -> float:
    """Exact operator 2-norm of the circular convolution with ``kernel`` on ``input_size``.

    Computed in float64 so that the value can be used in a certificate (an upper bound, unlike
    Note [Power iteration approaches sigma from below]'s estimates).
    """
    return float(conv_singular_values(kernel.detach().double(), input_size).max())


def power_iteration(
    fn: Callable[[torch.Tensor], torch.Tensor],
    input_shape: Sequence[int],
    iters: int = 100,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
) -> float:
    """Operator 2-norm of a linear map given only as a function, by power iteration.

    Uses ``v <- J^T J v`` with the transpose from autograd (a vector-Jacobian product), so it
    works for any linear ``fn`` -- a convolution with zero padding, a whole bias-free network
    restricted to a linear region, and so on. The result is a lower bound that converges to the
    norm from below (Note [Power iteration approaches sigma from below]).

    Args:
        fn: linear map taking a (1, *input_shape) tensor.
        input_shape: shape of one input, e.g. (C, H, W).
        iters: number of iterations.
        seed: seed of the random start vector.
        dtype: dtype of the iterate (float64 for a tight estimate).

    Returns:
        The estimated operator norm ``||fn||_2``.
    """
    gen = torch.Generator().manual_seed(seed)
    v = torch.randn(1, *input_shape, generator=gen, dtype=dtype)
    v = v / v.norm()
    norm = 0.0
    for _ in range(iters):
        x = v.detach().requires_grad_(True)
        y = fn(x)
        (jtj,) = torch.autograd.grad(y, x, grad_outputs=y.detach())
        norm = math.sqrt(max(float((jtj * v).sum()), 0.0))
        v = jtj / jtj.norm().clamp_min(1e-30)
    return norm


def compose_kernels(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """Kernel of the convolution ``second o first`` (apply ``first``, then ``second``).

    For cross-correlations ``y[p] = sum_a A[a] x[p + a]`` and ``z[p] = sum_b B[b] y[p + b]`` the
    composite has kernel ``C[s] = sum_{a + b = s} B[b] A[a]``, a matrix-valued full
    convolution, computed here with one ``conv2d`` call (no loops over kernel entries).

    Args:
        first: (mid, in, ah, aw).
        second: (out, mid, bh, bw).

    Returns:
        (out, in, ah + bh - 1, aw + bw - 1).
    """
    bh, bw = second.shape[-2:]
    as_input = first.transpose(0, 1)  # (in, mid, ah, aw): batch = input channel
    out = F.conv2d(as_input, second.flip(-2, -1), padding=(bh - 1, bw - 1))
    return out.transpose(0, 1)


def circular_pad(x: torch.Tensor, pad: Sequence[int]) -> torch.Tensor:
    """``F.pad(x, pad, mode="circular")`` for 4-D ``x``, built from slices and ``torch.cat``.

    Same values, but forward and backward are cheaper on CPU than the generic circular pad
    (which dominates a small convolution's time). Pads wider than the input fall back to
    ``F.pad`` and its error.

    Args:
        x: (N, C, H, W).
        pad: (left, right, top, bottom), each >= 0.

    Returns:
        (N, C, H + top + bottom, W + left + right).
    """
    left, right, top, bottom = pad
    h, w = x.shape[-2:]
    if max(left, right) > w or max(top, bottom) > h:
        return F.pad(x, tuple(pad), mode="circular")
    if left or right:
        x = torch.cat([x[..., w - left :], x, x[..., :right]], dim=-1)
    if top or bottom:
        x = torch.cat([x[..., h - top :, :], x, x[..., :bottom, :]], dim=-2)
    return x


def as_pair(size: int | Sequence[int]) -> tuple[int, int]:
    """``n`` -> ``(n, n)``; ``(h, w)`` -> ``(h, w)`` as ints."""
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def conv2d_same(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, padding_mode: str = "circular"
) -> torch.Tensor:
    """Stride-1 convolution whose output has the input's size, as every layer here computes it.

    The ``k - 1`` padding rows/columns go ``(k - 1) // 2`` before and the rest after (PyTorch's
    ``padding="same"`` convention, so even kernels pad one more after than before).

    Args:
        x: (N, C_in, H, W).
        weight: (C_out, C_in, k, k).
        padding_mode: ``"circular"`` or ``"zeros"``.

    Returns:
        (N, C_out, H, W).
    """
    kh, kw = weight.shape[-2:]
    pad = ((kw - 1) // 2, kw // 2, (kh - 1) // 2, kh // 2)
    padded = circular_pad(x, pad) if padding_mode == "circular" else F.pad(x, pad)
    return F.conv2d(padded, weight, bias)


FACTOR_ROUTE_MIN_CHANNELS = 128
"""From this many channels :func:`bcop_kernel` composes the first block with ``H`` through the
projectors' (c, r) factors (half the products); below, it forms every projector in one batched
product, fewer operations, which is what a small layer's time goes to."""


def bcop_kernel(
    ortho: torch.Tensor,
    projectors: torch.Tensor | None,
    kernel_size: int,
    out_channels: int,
    in_channels: int,
) -> torch.Tensor:
    """Build an orthogonal convolution kernel from orthogonal matrices (BCOP, Li et al. 2019).

    The kernel is ``H`` (a 1x1 orthogonal convolution) followed by ``k - 1`` 2x2 block
    convolutions, each the composition of a 1x2 kernel ``[P, I - P]`` along the width and a 2x1
    kernel ``[Q; I - Q]`` along the height, with ``P`` and ``Q`` symmetric projectors. Each
    factor is an orthogonal operator under circular padding, so their composition is too.

    Args:
        ortho: (c, c) orthogonal matrix ``H``, c = max(in_channels, out_channels).
        projectors: (2 * (k - 1), c, r) matrices with orthonormal columns; ``P = U U^T``. The
            first k - 1 are the width projectors, the rest the height projectors. None (or r = 0)
            means zero projectors.
        kernel_size: k.
        out_channels, in_channels: the returned kernel is the top-left block.

    Returns:
        (out_channels, in_channels, k, k) kernel.
    """
    c, k = ortho.shape[-1], kernel_size
    if k == 1:
        return ortho[:out_channels, :in_channels, None, None]
    if projectors is None:
        projectors = ortho.new_zeros(2 * (k - 1), c, 0)  # rank 0: P = U U^T = 0
    if c < FACTOR_ROUTE_MIN_CHANNELS:
        proj = projectors @ projectors.mT
        blocks = _block_kernels(proj[: k - 1], proj[k - 1 :])
        # H is a 1x1 kernel: composing the first block with it is a product per tap
        kernel, rest = torch.einsum("mpab,pq->mqab", blocks[0], ortho), blocks[1:]
    else:
        width, height = projectors[: k - 1], projectors[k - 1 :]
        kernel = _first_block(ortho, width[0], height[0])
        rest = _block_kernels(width[1:] @ width[1:].mT, height[1:] @ height[1:].mT)
    for block in rest:
        kernel = compose_kernels(kernel, block)
    return kernel[:out_channels, :in_channels]


def _block_kernels(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """The 2x2 block kernels of width projectors ``p`` and height projectors ``q``, (n, c, c):
    ``block[t][:, :, a, b] = Q_t^(a) P_t^(b)`` with ``Q^(0) = Q``, ``Q^(1) = I - Q`` (likewise
    ``P``), the 1x2 kernel then the 2x1 kernel; all four taps follow from the one product QP."""
    eye = torch.eye(p.shape[-1], dtype=p.dtype, device=p.device)
    qp = q @ p
    return torch.stack((qp, q - qp, p - qp, eye - q - p + qp), dim=-1).unflatten(-1, (2, 2))


def _first_block(ortho: torch.Tensor, u_width: torch.Tensor, u_height: torch.Tensor) -> torch.Tensor:
    """The first 2x2 block composed with ``H``: ``[Q^(a) P^(b) H]_{ab}`` as a (c, c, 2, 2) kernel.

    ``H`` is a 1x1 kernel, so the composition is a product per tap; with ``P = U U^T`` the four
    taps follow from ``PH``, ``QH`` and ``QPH``, three products through the (c, r) factors,
    without forming ``P`` or ``Q``.
    """
    ph = u_width @ (u_width.mT @ ortho)
    qh = u_height @ (u_height.mT @ ortho)
    qph = u_height @ (u_height.mT @ ph)
    taps = (qph, qh - qph, ph - qph, ortho - qh - ph + qph)
    return torch.stack(taps, dim=-1).unflatten(-1, (2, 2))


def svcm_project(kernel: torch.Tensor, input_size: int | Sequence[int], max_sv: float = 1.0) -> torch.Tensor:
    """Singular value clipping and masking (Sedghi, Gupta and Long, 2019).

    Clip every singular value of the circular-convolution operator on ``input_size`` to
    ``max_sv`` (exact, in the Fourier domain), then mask the result back to the k x k support.
    The masking step can push singular values above ``max_sv`` again, which is why the layer's
    bound is always measured, never assumed.

    Args:
        kernel: (out, in, k, k).
        input_size: n or (h, w) of the layer's input.
        max_sv: the clipping level.

    Returns:
        (out, in, k, k) projected kernel.
    """
    h, w = as_pair(input_size)
    kh, kw = kernel.shape[-2:]
    if kh > h or kw > w:
        raise ValueError(f"kernel {kh}x{kw} is larger than the input size {h}x{w}")
    transfer = torch.fft.fft2(kernel, s=(h, w)).permute(2, 3, 0, 1)  # (h, w, out, in)
    wide = transfer.shape[-2] <= transfer.shape[-1]
    m = transfer if wide else transfer.mH
    # M = U S V^H; with the Gram matrix M M^H = U S^2 U^H on the smaller side (an eigh, cheaper
    # than an SVD), clipping is M <- U min(1, max_sv / S) U^H M.
    evals, evecs = torch.linalg.eigh(m @ m.mH)
    scale = (max_sv / evals.clamp_min(0).sqrt().clamp_min(1e-30)).clamp(max=1.0)
    m = evecs @ (scale.to(evecs.dtype).unsqueeze(-1) * (evecs.mH @ m))
    clipped = m if wide else m.mH
    spatial = torch.fft.ifft2(clipped.permute(2, 3, 0, 1)).real
    return spatial[..., :kh, :kw].contiguous()

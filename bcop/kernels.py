"""Pure tensor maths of the Lipschitz convolution families that followed BCOP (2021-2025).

Everything here is a function of tensors: no modules, no state. Every convolution is the
stride-1, same-size circular cross-correlation of :func:`bcop.orthogonal.conv2d_same` (offsets
``a - (k - 1) // 2`` for a kernel tap ``a``), unless a stride is named.

* :func:`pad_channels` -- zero channels appended (how SOC and SLL take fewer channels in).
* :func:`conv2d_same_adjoint` -- the transpose of that convolution (SLL's ``W``, SOC's ``L^T``).
* :func:`fft_conv2d_same` -- the same convolution computed by FFT, for kernels as large as the input.
* :func:`conv_transfer` -- that convolution's matrix at each frequency, to apply to many inputs.
* :func:`apply_transfer` -- a circular operator given by its matrix at each frequency, by FFT.
* :func:`cayley`, :func:`cayley_kernel` -- Cayley transform per frequency (Trockman & Kolter 2021).
* :func:`skew_kernel`, :func:`exp_conv`, :func:`exp_conv_fft`, :func:`exp_conv_kernel`,
  :func:`exp_conv_transfer` -- SOC's exponential of a skew-symmetric convolution as a truncated
  Taylor series (Singla & Feizi 2021), the same series by FFT, and the exact operator it is.
* :func:`conv_gram`, :func:`aol_scale` -- AOL's rescaling (Prach & Lampert 2022).
* :func:`sll_scale`, :func:`sll_residual` -- SLL's residual layer (Araujo et al. 2023).
* :func:`strided_conv2d`, :func:`polyphase_kernel` -- AOC's strided kernels (Boissin et al. 2025)
  and their exact singular values.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from bcop.orthogonal import as_pair, circular_pad, compose_kernels, conv2d_same

__all__ = [
    "pad_channels",
    "conv2d_same_adjoint",
    "fft_conv2d_same",
    "conv_transfer",
    "apply_transfer",
    "cayley",
    "cayley_kernel",
    "skew_kernel",
    "exp_conv",
    "exp_conv_fft",
    "exp_conv_kernel",
    "exp_conv_transfer",
    "conv_gram",
    "aol_scale",
    "sll_scale",
    "sll_residual",
    "strided_conv2d",
    "polyphase_kernel",
]


def pad_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    """(N, C, H, W) -> (N, channels, H, W) with zero channels appended (channels >= C): an
    isometry, how SOC and SLL (which need equal channel counts) take fewer channels in."""
    return F.pad(x, (0, 0, 0, 0, 0, channels - x.shape[1]))


def conv2d_same_adjoint(y: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The transpose of ``conv2d_same(., weight)`` with circular padding.

    ``y[i] = sum_a w[a] x[i + a - p]`` (``p = (k - 1) // 2``) has the adjoint
    ``x[j] = sum_b w'[b] y[j + b - (k - 1 - p)]`` with ``w'`` the kernel flipped in space and
    transposed in channels: a convolution padded ``k - 1 - p`` before and ``p`` after, which
    differs from ``conv2d_same``'s own padding when k is even.

    Args:
        y: (N, C_out, H, W).
        weight: (C_out, C_in, kh, kw).

    Returns:
        (N, C_in, H, W).
    """
    kh, kw = weight.shape[-2:]
    ph, pw = (kh - 1) // 2, (kw - 1) // 2
    padded = circular_pad(y, (kw - 1 - pw, pw, kh - 1 - ph, ph))
    return F.conv2d(padded, weight.transpose(0, 1).flip(-2, -1))


def _placed(kernel: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The kernel on an ``size`` grid with tap ``a`` at offset ``a - (k - 1) // 2`` (mod size)."""
    kh, kw = kernel.shape[-2:]
    h, w = size
    if kh > h or kw > w:
        raise ValueError(f"kernel {kh}x{kw} is larger than the grid {h}x{w}")
    padded = F.pad(kernel, (0, w - kw, 0, h - kh))
    return padded.roll((-((kh - 1) // 2), -((kw - 1) // 2)), dims=(-2, -1))


def _transfer(kernel: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(out, in, h, w // 2 + 1) transfer matrices of ``conv2d_same(., kernel)`` on ``size``:
    ``rfft2(y) = transfer @ rfft2(x)`` at every frequency (real kernel)."""
    return torch.fft.rfft2(_placed(kernel, size)).conj()


def fft_conv2d_same(x: torch.Tensor, kernel: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``conv2d_same(x, kernel, bias)`` with circular padding, computed by FFT.

    The same operator for any kernel up to the input's size; cheaper than a direct convolution
    when the kernel is as large as the input (Cayley's).

    Args:
        x: (N, C_in, H, W).
        kernel: (C_out, C_in, kh, kw), kh <= H, kw <= W.
        bias: (C_out,) or None.

    Returns:
        (N, C_out, H, W).
    """
    y = apply_transfer(x, conv_transfer(kernel, (x.shape[-2], x.shape[-1])))
    return y if bias is None else y + bias[:, None, None]


def conv_transfer(kernel: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """:func:`fft_conv2d_same`'s operator with ``kernel`` on ``size`` inputs, in the form
    :func:`apply_transfer` takes: computed once, applied to any number of inputs.

    Args:
        kernel: (C_out, C_in, kh, kw) real, kh <= h, kw <= w.
        size: (h, w).

    Returns:
        (h, w // 2 + 1, C_out, C_in) complex: the matrices at the non-negative column
        frequencies, which determine a real operator's others.
    """
    return _transfer(kernel, size).permute(2, 3, 0, 1)


def apply_transfer(x: torch.Tensor, transfer: torch.Tensor) -> torch.Tensor:
    """The circular operator given by its matrices at every frequency, applied by FFT.

    Args:
        x: (N, C_in, H, W) real.
        transfer: (H, W, C_out, C_in) complex: the operator's matrix at each frequency of the
            full grid, conjugate-symmetric (``T(-f) = conj(T(f))``) so that the result is real;
            or only its first ``W // 2 + 1`` columns (:func:`conv_transfer`'s), all it reads.

    Returns:
        (N, C_out, H, W).
    """
    size = (x.shape[-2], x.shape[-1])
    half = transfer[:, : size[1] // 2 + 1].to(torch.promote_types(x.dtype, torch.complex64))
    return torch.fft.irfft2(torch.einsum("hwoi,nihw->nohw", half, torch.fft.rfft2(x)), s=size)


def cayley(w: torch.Tensor) -> torch.Tensor:
    """Cayley transform of a batch of complex (m, n) matrices: orthonormal columns (m >= n) or rows.

    For m >= n write ``w = [U; V]`` (U: n x n) and ``A = U - U^H + V^H V``. The first n
    columns of the Cayley transform ``(I - S)(I + S)^-1`` of the skew-Hermitian
    ``S = [[U - U^H, -V^H], [V, 0]]`` are ``[(I + A)^-1 (I - A); -2 V (I + A)^-1]``
    (eliminate the second block of ``(I + S) X = [I; 0]``). ``I + A`` is invertible: ``A`` is a
    skew-Hermitian plus a positive semi-definite matrix. For m < n, the transform of ``w^H``
    transposed.

    Args:
        w: (..., m, n) complex.

    Returns:
        (..., m, n).
    """
    m, n = w.shape[-2:]
    if m < n:
        return cayley(w.mH).mH
    u, v = w[..., :n, :], w[..., n:, :]
    eye = torch.eye(n, dtype=w.dtype, device=w.device)
    inv = torch.linalg.inv(eye + u - u.mH + v.mH @ v)
    # (I + A)^-1 (I - A) = 2 (I + A)^-1 - I
    return torch.cat([2 * inv - eye, -2 * v @ inv], dim=-2)


def cayley_kernel(kernel: torch.Tensor, size: int | Sequence[int], precise: bool = True) -> torch.Tensor:
    """The (out, in, h, w) kernel whose circular convolution on ``size`` is the Cayley transform,
    frequency by frequency, of ``conv2d_same(., kernel)``'s transfer matrices.

    The transfer of a real kernel at frequency -f is the conjugate of that at f, and so is its
    Cayley transform: the result is real, and an isometry (out >= in) or co-isometry on ``size``.

    Args:
        kernel: (out, in, kh, kw) real.
        size: n or (h, w), the input size; kh <= h, kw <= w.
        precise: solve in complex128 (the result keeps ``kernel``'s dtype).

    Returns:
        (out, in, h, w), to be applied with ``conv2d_same`` (or :func:`fft_conv2d_same`).
    """
    h, w = as_pair(size)
    transfer = _transfer(kernel.to(torch.float64) if precise else kernel, (h, w))
    orthogonal = cayley(transfer.permute(2, 3, 0, 1)).permute(2, 3, 0, 1)
    placed = torch.fft.irfft2(orthogonal.conj(), s=(h, w))
    return placed.roll(((h - 1) // 2, (w - 1) // 2), dims=(-2, -1)).to(kernel.dtype)


def skew_kernel(kernel: torch.Tensor) -> torch.Tensor:
    """The kernel of ``L - L^T``, ``L = conv2d_same(., kernel)``, with circular padding.

    An odd kernel is centred, so ``L^T`` has the flipped, channel-transposed kernel. An even
    one reaches offsets ``-(k/2 - 1) .. k/2`` and its transpose ``-k/2 .. k/2 - 1``: both fit a
    centred (k + 1) x (k + 1) kernel once a zero row and column are put before.

    Args:
        kernel: (c, c, k, k).

    Returns:
        (c, c, k', k'), k' = k for odd k, k + 1 for even k; skew-symmetric as an operator.
    """
    if kernel.shape[0] != kernel.shape[1]:
        raise ValueError(f"a skew-symmetric convolution needs a square kernel, got {tuple(kernel.shape)}")
    kh, kw = kernel.shape[-2:]
    centred = F.pad(kernel, (1 - kw % 2, 0, 1 - kh % 2, 0))
    return centred - centred.transpose(0, 1).flip(-2, -1)


def exp_conv(x: torch.Tensor, skew: torch.Tensor, terms: int) -> torch.Tensor:
    """``sum_{i=0..terms} S^i x / i!`` for the circular convolution ``S`` with kernel ``skew``.

    Args:
        x: (N, c, H, W).
        skew: (c, c, k, k), k odd.
        terms: the series' last power (>= 1).

    Returns:
        (N, c, H, W).
    """
    term, total = x, x
    for i in range(1, terms + 1):
        term = conv2d_same(term, skew) / i
        total = total + term
    return total


def exp_conv_fft(
    x: torch.Tensor, skew: torch.Tensor, terms: int, out_channels: int | None = None
) -> torch.Tensor:
    """:func:`exp_conv` computed by FFT, keeping the first ``out_channels`` output channels.

    A circular convolution is one c x c matrix product per frequency, so each power of the
    series costs ``c^2`` complex products per frequency instead of ``c^2 k^2`` real ones per
    pixel: forward and backward take 1.8x less time than :func:`exp_conv`'s at 128 and 256
    channels, 1.3-1.5x less at 32 and 64 (``benchmarks/layers.py --sections successors``).
    Differentiable in ``x`` and ``skew``; float32 inputs give complex64 maths.

    Args:
        x: (N, c, H, W).
        skew: (c, c, k, k), k odd, k <= min(H, W).
        terms: the series' last power (>= 1).
        out_channels: output channels kept (the first ones; default all c). The last power is
            computed for those only.

    Returns:
        (N, out_channels, H, W).
    """
    n, c, h, w = x.shape
    out = c if out_channels is None else out_channels
    # (F, c, c) matrices and (F, c, N) columns, F = h * (w // 2 + 1) frequencies of rfft2, made
    # contiguous: the permuted views have batch stride 1, which batched matmul would copy
    # matrix by matrix.
    matrices = _transfer(skew, (h, w)).permute(2, 3, 0, 1).reshape(-1, c, c).contiguous()
    spectrum = torch.fft.rfft2(x).permute(2, 3, 1, 0).reshape(-1, c, n).contiguous()
    # Horner: y <- x + S y / m for m = terms..2, then x + S y for the kept rows only.
    total = spectrum
    for m in range(terms, 1, -1):
        total = torch.baddbmm(spectrum, matrices, total, alpha=1.0 / m)
    total = torch.baddbmm(spectrum[:, :out], matrices[:, :out], total)
    return torch.fft.irfft2(total.reshape(h, w // 2 + 1, out, n).permute(3, 2, 0, 1), s=(h, w))


def exp_conv_kernel(skew: torch.Tensor, terms: int) -> torch.Tensor:
    """The kernel of :func:`exp_conv`'s operator: ``sum_i S^i / i!`` as one centred kernel.

    Powers of a centred odd kernel compose (:func:`bcop.orthogonal.compose_kernels`) into centred
    odd kernels, so the sum is the same circular operator as the series on every input size.

    Args:
        skew: (c, c, k, k), k odd.
        terms: >= 1.

    Returns:
        (c, c, K, K), K = 1 + terms * (k - 1).
    """
    c, _, k, _ = skew.shape
    size = 1 + terms * (k - 1)
    identity = torch.eye(c, dtype=skew.dtype, device=skew.device)[:, :, None, None]
    total = F.pad(identity, (size // 2,) * 4)
    power = identity
    for i in range(1, terms + 1):
        power = compose_kernels(power, skew) / i
        margin = (size - power.shape[-1]) // 2
        total = total + F.pad(power, (margin,) * 4)
    return total


def exp_conv_transfer(skew: torch.Tensor, terms: int, size: int | Sequence[int]) -> torch.Tensor:
    """The transfer matrices, at every frequency of ``size``, of :func:`exp_conv`'s operator.

    At frequency f the skew-symmetric convolution is a skew-Hermitian matrix ``S(f)``; with
    ``i S(f) = U diag(lambda) U^H`` (a Hermitian eigendecomposition) the truncated series is
    ``U diag(p(-i lambda)) U^H``, ``p(z) = sum_{m <= terms} z^m / m!``. This is the operator of
    :func:`exp_conv_kernel`'s kernel, computed without forming that (1 + terms (k - 1))-wide
    kernel, in float64.

    Args:
        skew: (c, c, k, k), k odd, k <= min(size).
        terms: >= 1.
        size: n or (h, w).

    Returns:
        (h, w, c, c) complex128.
    """
    placed = _placed(skew.detach().to(torch.float64), as_pair(size))
    hermitian = 1j * torch.fft.fft2(placed).conj().permute(2, 3, 0, 1)
    lam, vecs = torch.linalg.eigh(hermitian)
    z = -1j * lam
    series, power = torch.ones_like(z), torch.ones_like(z)
    for m in range(1, terms + 1):
        power = power * z / m
        series = series + power
    return (vecs * series.unsqueeze(-2)) @ vecs.mH


def conv_gram(kernel: torch.Tensor) -> torch.Tensor:
    """Kernel of ``P^T P`` for the convolution ``P`` with ``kernel``: all shifts, no boundary.

    ``G[j, i, s] = sum_o sum_a P[o, j, a + s] P[o, i, a]`` for shifts s in ``-(k-1) .. k-1``.

    Args:
        kernel: (out, in, k, k).

    Returns:
        (in, in, 2k - 1, 2k - 1).
    """
    kh, kw = kernel.shape[-2:]
    columns = kernel.transpose(0, 1)
    return F.conv2d(columns, columns, padding=(kh - 1, kw - 1))


def aol_scale(kernel: torch.Tensor) -> torch.Tensor:
    """AOL's input-channel scale: ``d_j = (sum_{i, s} |G[j, i, s]|)^(-1/2)``, G = :func:`conv_gram`.

    Theorem (Prach & Lampert 2022, thm 2): ``kernel * d`` (scaling input channel j by d_j) is a
    convolution of norm <= 1 on the infinite grid, because ``D G D`` has absolute row sums
    <= 1. With circular padding the Gram operator's kernel is G folded onto the grid, whose
    absolute row sums can only be smaller (triangle inequality); zero padding restricts the
    operator. So the bound holds for both paddings.

    Args:
        kernel: (out, in, k, k).

    Returns:
        (in,) scales.
    """
    sums = conv_gram(kernel).abs().sum(dim=(1, 2, 3))
    return sums.clamp_min(torch.finfo(kernel.dtype).tiny).rsqrt()


def sll_scale(kernel: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """SLL's diagonal ``T``: ``t_i = sum_{j, s} |G[i, j, s]| q_j / q_i`` with ``q = exp(log_q)``.

    Here ``W^T x = conv2d_same(x, kernel)``, so ``W^T W`` is the convolution with
    ``conv_gram(kernel^T)`` on the hidden channels; ``T - W^T W`` is then diagonally dominant
    after the similarity ``diag(q)``, hence positive semi-definite (Araujo et al. 2023, thm 3),
    on the infinite grid and, as for :func:`aol_scale`, under circular padding.

    Args:
        kernel: (hidden, c, k, k).
        log_q: (hidden,).

    Returns:
        (hidden,) positive.
    """
    gram = conv_gram(kernel.transpose(0, 1)).abs().sum(dim=(2, 3))
    q = log_q.exp()
    return (gram @ q / q).clamp_min(torch.finfo(kernel.dtype).tiny)


def sll_residual(
    x: torch.Tensor,
    kernel: torch.Tensor,
    bias: torch.Tensor | None,
    t: torch.Tensor,
    out_channels: int | None = None,
) -> torch.Tensor:
    """SLL's layer ``x - 2 W T^-1 relu(W^T x + b)`` with ``W^T = conv2d_same(., kernel)``, its
    first ``out_channels`` channels.

    Its Jacobian ``I - 2 M D M^T`` (``M = W T^-1/2``, D diagonal in [0, 1]) has eigenvalues in
    ``[1 - 2 ||M||^2, 1]``: 1-Lipschitz when ``T >= W^T W`` (:func:`sll_scale`).

    Args:
        x: (N, c, H, W).
        kernel: (hidden, c, k, k).
        bias: (hidden,) or None.
        t: (hidden,) positive, from :func:`sll_scale`.
        out_channels: channels kept (default all c); ``W`` is applied for those only.

    Returns:
        (N, out_channels, H, W).
    """
    out = x.shape[1] if out_channels is None else out_channels
    hidden = F.relu(conv2d_same(x, kernel, bias)) / t[:, None, None]
    return x[:, :out] - 2 * conv2d_same_adjoint(hidden, kernel[:, :out])


def strided_conv2d(x: torch.Tensor, kernel: torch.Tensor, stride: int) -> torch.Tensor:
    """Circular convolution with stride ``s`` of a kernel of size ``k = k0 + s - 1``, padded as
    ``conv2d_same`` pads the stride-1 kernel of size ``k0``: ``(k0 - 1) // 2`` before, so output
    ``i`` reads input taps ``s i - (k0 - 1) // 2 + a``.

    Args:
        x: (N, C_in, H, W), H and W multiples of s.
        kernel: (C_out, C_in, k, k), k >= s.

    Returns:
        (N, C_out, H / s, W / s).
    """
    kh, kw = kernel.shape[-2:]
    before_h, before_w = (kh - stride) // 2, (kw - stride) // 2
    pad = (before_w, kw - stride - before_w, before_h, kh - stride - before_h)
    return F.conv2d(circular_pad(x, pad), kernel, stride=stride)


def polyphase_kernel(kernel: torch.Tensor, stride: int) -> torch.Tensor:
    """The stride-1 kernel of :func:`strided_conv2d` seen on the input's ``s x s`` polyphase
    components: output i reads ``x[c, s (i + q) + r]`` with weight ``K'[o, (c, r), q]``.

    The polyphase split is an orthogonal rearrangement, so the singular values of the strided
    operator on (H, W) are those of the stride-1 circular convolution with ``K'`` on
    (H / s, W / s) (:func:`bcop.orthogonal.conv_singular_values`; a common shift of all taps
    only multiplies each frequency's matrix by a phase).

    Args:
        kernel: (C_out, C_in, k, k).
        stride: s >= 1.

    Returns:
        (C_out, C_in * s * s, k', k'), k' = ceil((k + front) / s).
    """
    k = kernel.shape[-1]
    before = (k - stride) // 2
    front = (-before) % stride  # taps then start at a multiple of s
    length = math.ceil((k + front) / stride) * stride
    padded = F.pad(kernel, (front, length - k - front, front, length - k - front))
    out, cin = kernel.shape[:2]
    taps = length // stride
    split = padded.reshape(out, cin, taps, stride, taps, stride)  # (o, c, qh, rh, qw, rw)
    return split.permute(0, 1, 3, 5, 2, 4).reshape(out, cin * stride * stride, taps, taps)

"""Lipschitz convolutions: BCOP and the paper's baselines (RKO, OSSN, SVCM, plain).

Every layer here *is* an ``nn.Conv2d`` (stride 1, "same" output size, circular padding by
default), whose weight is either a free parameter (plain, SVCM) or produced by a
parametrization registered with ``torch.nn.utils.parametrize`` (BCOP, RKO, OSSN). Each layer
reports a sound upper bound on its L2 Lipschitz constant for a given input size, computed
exactly from the weight it actually uses (never assumed to be 1).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from bcop.deprecation import deprecated_names
from bcop.layers.parametrization import (
    POLAR,
    CachedParametrization,
    OrthoParams,
    current_weight,
    scaled_orthogonal_,
)
from bcop.orthogonal import as_pair, bcop_kernel, conv2d_same, conv_spectral_norm, svcm_project

__all__ = [
    "KERNEL_SIZES",
    "LipschitzConv2d",
    "OrthonormalizedConv2d",
    "InputSizedConv2d",
    "PlainConv2d",
    "BCOPConv2d",
    "RKOConv2d",
    "OSSNConv2d",
    "SVCMConv2d",
]

KERNEL_SIZES = range(1, 8)
PADDING_MODES = ("circular", "zeros")


class LipschitzConv2d(nn.Conv2d):
    """Stride-1 convolution with "same" output size that can bound its own Lipschitz constant.

    Every subclass takes the same first arguments and adds its own settings as keyword-only
    arguments of its constructor, which sets its constraint up after this one has made the
    weight.

    Args:
        in_channels, out_channels: channel counts (>= 1).
        kernel_size: k in 1..7 (square kernels).
        bias: add a learnable bias (it does not change the Lipschitz constant).
        padding_mode: ``"circular"`` (the operator whose singular values BCOP controls exactly)
            or ``"zeros"``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        *,
        bias: bool = True,
        padding_mode: str = "circular",
    ) -> None:
        if (
            not isinstance(in_channels, int)
            or not isinstance(out_channels, int)
            or min(in_channels, out_channels) < 1
        ):
            raise ValueError(
                f"channel counts must be positive integers, got in={in_channels}, out={out_channels}"
            )
        if kernel_size not in KERNEL_SIZES:
            raise ValueError(f"kernel_size must be an integer in 1..{KERNEL_SIZES[-1]}, got {kernel_size!r}")
        if padding_mode not in PADDING_MODES:
            raise ValueError(f"padding_mode must be one of {PADDING_MODES}, got {padding_mode!r}")
        super().__init__(
            in_channels,
            out_channels,
            kernel_size,
            padding="same",
            padding_mode=padding_mode,
            bias=bias,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, in_channels, H, W) -> (N, out_channels, H, W)."""
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"{type(self).__name__} expects input of shape (N, {self.in_channels}, H, W), "
                f"got {tuple(x.shape)}"
            )
        return self._conv_forward(x, current_weight(self), self.bias)

    def _conv_forward(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return conv2d_same(x, weight, bias, self.padding_mode)

    @torch.no_grad()  # a measurement: no graph (the weights are those of the current mode)
    def lipschitz_bound(self, input_shape: Sequence[int]) -> float:
        """Upper bound on the layer's L2 Lipschitz constant for inputs of shape (C, H, W).

        Circular padding: the exact operator norm (largest singular value, by FFT). Zero
        padding: the same operator is a restriction of the circular convolution on an
        (H + k - 1) x (W + k - 1) grid, whose exact norm is therefore an upper bound.
        """
        h, w = as_pair(tuple(input_shape)[-2:])
        if self.padding_mode == "zeros":
            k = self.kernel_size[0]
            h, w = h + k - 1, w + k - 1
        return conv_spectral_norm(self.weight, (h, w))


class PlainConv2d(LipschitzConv2d):
    """Unconstrained convolution; its bound is computed exactly and is usually far above 1."""


class OrthonormalizedConv2d(LipschitzConv2d):
    """A convolution whose kernel a parametrization computes from orthonormalized raw tensors.

    Args:
        in_channels, out_channels, kernel_size, bias, padding_mode: as ``LipschitzConv2d``.
        ortho: how the raw tensors are orthonormalized (default: the exact polar factor).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        *,
        bias: bool = True,
        padding_mode: str = "circular",
        ortho: OrthoParams = POLAR,
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, bias=bias, padding_mode=padding_mode)
        parametrize.register_parametrization(self, "weight", self._parametrization(ortho))
        self._init_raw_()

    def _parametrization(self, ortho: OrthoParams) -> CachedParametrization:
        """The parametrization that maps the raw tensors to the kernel."""
        raise NotImplementedError

    def _init_raw_(self) -> None:
        """Set the raw tensors to their initial values once the parametrization is registered
        (by default the parametrization chose them itself)."""


class BCOPKernel(CachedParametrization):
    """Parametrization: unconstrained matrices -> orthonormalise -> BCOP kernel."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, ortho: OrthoParams) -> None:
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.ortho = kernel_size, ortho
        c = max(in_channels, out_channels)
        self.rank = c // 2
        self._initial: tuple[torch.Tensor, ...] | None = self._init_originals(c)

    def _init_originals(self, c: int) -> tuple[torch.Tensor, ...]:
        ortho = scaled_orthogonal_(torch.empty(c, c), c)
        if self.kernel_size == 1 or self.rank == 0:
            return (ortho,)
        return ortho, scaled_orthogonal_(torch.empty(2 * (self.kernel_size - 1), c, self.rank), c)

    def right_inverse(self, weight: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Give the initial unconstrained matrices (used once, when the layer is built)."""
        if self._initial is None:
            raise ValueError(
                "a BCOP kernel cannot be assigned directly: set the unconstrained matrices "
                "parametrizations.weight.original0/original1, or load a state_dict"
            )
        initial, self._initial = self._initial, None
        return tuple(t.to(dtype=weight.dtype, device=weight.device) for t in initial)

    def compute(self, ortho: torch.Tensor, proj: torch.Tensor | None = None) -> torch.Tensor:
        h = self.ortho.orthonormalize(ortho, precise=not self.training)
        u = None if proj is None else self.ortho.orthonormalize(proj, precise=not self.training)
        return bcop_kernel(h, u, self.kernel_size, self.out_channels, self.in_channels)


class BCOPConv2d(OrthonormalizedConv2d):
    """Block Convolution Orthogonal Parameterization (Li et al., NeurIPS 2019).

    An orthogonal convolution: with circular padding all singular values of the operator are
    1 (for in_channels != out_channels, the kernel is a block of an orthogonal one of
    max(in, out) channels: an isometry when out >= in, gradient-norm preserving when out <= in).
    Arguments as :class:`OrthonormalizedConv2d`.
    """

    def reset_parameters(self) -> None:
        super().reset_parameters()
        if self.bias is not None:  # the paper's: uniform in +-1/sqrt(out_channels)
            nn.init.uniform_(self.bias, -(self.out_channels**-0.5), self.out_channels**-0.5)

    def _parametrization(self, ortho: OrthoParams) -> CachedParametrization:
        return BCOPKernel(self.in_channels, self.out_channels, self.kernel_size[0], ortho)


class ReshapedKernel(CachedParametrization):
    """Parametrization for RKO: orthonormalise the reshaped kernel ``M`` (out x in*k*k), scale by ``1/k``.

    Each input pixel enters ``k*k`` output patches, so ``||conv|| <= k ||M||_2``; with
    ``||M||_2 = 1`` the scaled kernel is 1-Lipschitz (Cisse et al. 2017, as the paper's RKO).
    """

    def __init__(self, kernel_size: int, ortho: OrthoParams = POLAR) -> None:
        super().__init__()
        self.kernel_size, self.ortho = kernel_size, ortho

    def right_inverse(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * self.kernel_size

    def compute(self, raw: torch.Tensor) -> torch.Tensor:
        matrix = self.ortho.orthonormalize(raw.reshape(raw.shape[0], -1), precise=not self.training)
        return (matrix / self.kernel_size).reshape(raw.shape)


class RKOConv2d(OrthonormalizedConv2d):
    """Reshaped Kernel Orthogonalisation: 1-Lipschitz but not gradient-norm preserving.
    Arguments as :class:`OrthonormalizedConv2d`."""

    def _parametrization(self, ortho: OrthoParams) -> CachedParametrization:
        return ReshapedKernel(self.kernel_size[0], ortho)

    def _init_raw_(self) -> None:
        fan_in = self.in_channels * self.kernel_size[0] ** 2
        scaled_orthogonal_(self.parametrizations.weight.original.view(self.out_channels, fan_in), fan_in)


def _unit(t: torch.Tensor) -> torch.Tensor:
    """``t`` scaled to unit Frobenius norm (same shape)."""
    return F.normalize(t.flatten(), dim=0).view_as(t)


class ConvSpectralNormalization(CachedParametrization):
    """Parametrization ``W -> W / max(1, sigma)``, sigma the convolution operator's norm.

    sigma is estimated as in spectral normalisation (Miyato et al. 2018), but on the operator
    itself, with its padding and input size (Gouk et al. 2018), not on the reshaped kernel:
    persistent vectors ``u`` (output-shaped) and ``v`` (input-shaped) take ``iters`` power
    iterations ``v <- A^T u / ||A^T u||``, ``u <- A v / ||A v||`` at every training forward,
    and ``sigma = <u, A v>`` carries the gradient to ``W``. In eval mode, or without
    gradients, the stored vectors are used as they are. Power iteration approaches sigma from
    below, so the layer's certified bound is always the exact norm of the weight it uses.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        input_size: tuple[int, int],
        padding_mode: str,
        iters: int,
    ) -> None:
        super().__init__()
        if iters < 1:
            raise ValueError(f"power iterations must be >= 1, got {iters}")
        self.padding_mode, self.iters = padding_mode, iters
        h, w = input_size
        self.register_buffer("u", _unit(torch.randn(1, out_channels, h, w)))
        self.register_buffer("v", _unit(torch.randn(1, in_channels, h, w)))

    def right_inverse(self, weight: torch.Tensor) -> torch.Tensor:
        return weight

    @torch.no_grad()
    def power_iteration_(self, weight: torch.Tensor, iters: int | None = None) -> None:
        """Advance the stored vectors by ``iters`` (default: the layer's) power iterations."""
        u, v = self.u, self.v.clone()
        for _ in range(self.iters if iters is None else iters):
            with torch.enable_grad():  # A^T u as the gradient of <u, A v> (A is linear in v)
                probe = v.detach().requires_grad_(True)
                image = conv2d_same(probe, weight, None, self.padding_mode)
                (adjoint,) = torch.autograd.grad(image, probe, u)
            v = _unit(adjoint)
            u = _unit(conv2d_same(v, weight, None, self.padding_mode))
        self.u.copy_(u)
        self.v.copy_(v)

    def compute(self, raw: torch.Tensor) -> torch.Tensor:
        if self.training and torch.is_grad_enabled():
            self.power_iteration_(raw.detach())
        # clones: the in-place updates of the buffers must not touch tensors saved for backward
        sigma = (self.u.clone() * conv2d_same(self.v.clone(), raw, None, self.padding_mode)).sum()
        return raw / sigma.clamp_min(1.0)


class InputSizedConv2d(LipschitzConv2d):
    """A convolution whose constraint is defined for one input size (OSSN's power iteration and
    SVCM's projection act on the circular-convolution operator on ``input_size``).

    Args:
        in_channels, out_channels, kernel_size, bias, padding_mode: as ``LipschitzConv2d``.
        input_size: the (h, w) or n of the inputs this layer will see.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        *,
        input_size: int | Sequence[int],
        bias: bool = True,
        padding_mode: str = "circular",
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, bias=bias, padding_mode=padding_mode)
        self.input_size = as_pair(input_size)
        self._setup_constraint_()

    def _setup_constraint_(self) -> None:
        """Set the constraint up once the weight and ``input_size`` exist: none here; SVCM
        projects a first time. A subclass with settings of its own takes them in its
        constructor instead."""


class OSSNConv2d(InputSizedConv2d):
    """One-Sided Spectral Normalisation, the paper's OSSN baseline.

    The kernel is divided by the convolution operator's spectral norm (estimated by power
    iteration on ``input_size`` at every training forward) whenever that exceeds 1; see
    :class:`ConvSpectralNormalization`. 1-Lipschitz up to the power iteration's lag, which
    :meth:`lipschitz_bound` measures exactly; not gradient-norm preserving.

    Args:
        in_channels, out_channels, kernel_size, bias, padding_mode: as ``LipschitzConv2d``.
        input_size: the (h, w) or n of the inputs this layer will see.
        power_iters: power iterations per training forward (the paper's MNIST runs used 10).
            The estimate is warm-started from the previous step's vectors, so it only has to
            follow the kernel's change; too few iterations per step and it lags behind a
            kernel that grows, sigma is underestimated, and the layer's measured bound (and
            with it every certificate) exceeds 1.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        *,
        input_size: int | Sequence[int],
        bias: bool = True,
        padding_mode: str = "circular",
        power_iters: int = 10,
    ) -> None:
        super().__init__(
            in_channels,
            out_channels,
            kernel_size,
            input_size=input_size,
            bias=bias,
            padding_mode=padding_mode,
        )
        parametrize.register_parametrization(
            self,
            "weight",
            ConvSpectralNormalization(
                self.in_channels, self.out_channels, self.input_size, self.padding_mode, power_iters
            ),
        )
        # start from converged vectors, as torch's spectral_norm does (15 iterations)
        self.parametrizations.weight[0].power_iteration_(self.parametrizations.weight.original, 15)


class SVCMConv2d(InputSizedConv2d):
    """Convolution kept near 1-Lipschitz by periodic singular value clipping and masking.

    The weight is a free parameter; call :meth:`project_` (the training loop does, every few
    steps and at the end) to pull it back towards the set of 1-Lipschitz kernels.

    Args:
        in_channels, out_channels, kernel_size, bias, padding_mode: as ``LipschitzConv2d``.
        input_size: the (h, w) or n of the inputs this layer will see (the projection is exact
            for that size only).
    """

    def _setup_constraint_(self) -> None:
        self.project_()

    @torch.no_grad()
    def project_(self, rounds: int = 1) -> None:
        """Clip and mask the kernel in place, ``rounds`` times."""
        for _ in range(rounds):
            self.weight.copy_(svcm_project(self.weight, self.input_size))


__getattr__ = deprecated_names(
    __name__, {"OrthonormalisedConv2d": ("bcop.layers.conv.OrthonormalizedConv2d", OrthonormalizedConv2d)}
)

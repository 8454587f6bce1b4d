"""AOC: Adaptive Orthogonal Convolutions (Boissin, Mamalet, Fel, Picard, Massena & Serrurier, ICML 2025).

One explicit orthogonal kernel that handles a stride and any channel change: a BCOP kernel
of size ``k - s + 1`` (stride 1, in -> c channels) composed with an RKO kernel of size and
stride s (c s^2 -> out channels, orthogonal because its patches do not overlap), which is a
k x k kernel applied with stride s. With ``c = max(in, out // s^2)`` both factors are
isometries or both co-isometries, so their composition is orthogonal.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.nn.utils import parametrize

from bcop.kernels import polyphase_kernel, strided_conv2d
from bcop.layers.conv import LipschitzConv2d
from bcop.layers.parametrization import POLAR, CachedParametrization, OrthoParams, scaled_orthogonal_
from bcop.orthogonal import as_pair, bcop_kernel, compose_kernels, conv_singular_values

__all__ = ["AOCConv2d"]


class AOCKernel(CachedParametrization):
    """Parametrization: unconstrained matrices -> orthonormalise -> BCOP kernel (in -> c, size
    k - s + 1) then RKO kernel (c s^2 -> out, size s): the (out, in, k, k) composite."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, stride: int, ortho: OrthoParams
    ) -> None:
        super().__init__()
        self.in_channels, self.out_channels, self.stride, self.ortho = (
            in_channels,
            out_channels,
            stride,
            ortho,
        )
        self.mid = max(in_channels, out_channels // stride**2)
        self.bcop_size = kernel_size - stride + 1
        fan = self.mid * stride**2
        initial = [
            scaled_orthogonal_(torch.empty(self.mid, self.mid), self.mid),
            scaled_orthogonal_(torch.empty(out_channels, fan), fan),
        ]
        if self.bcop_size > 1 and self.mid > 1:
            projectors = torch.empty(2 * (self.bcop_size - 1), self.mid, self.mid // 2)
            initial.append(scaled_orthogonal_(projectors, self.mid))
        self._initial: tuple[torch.Tensor, ...] | None = tuple(initial)

    def right_inverse(self, weight: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Give the initial unconstrained matrices (used once, when the layer is built)."""
        if self._initial is None:
            raise ValueError("an AOC kernel cannot be assigned directly: load a state_dict instead")
        initial, self._initial = self._initial, None
        return tuple(t.to(dtype=weight.dtype, device=weight.device) for t in initial)

    def compute(
        self, ortho: torch.Tensor, rko: torch.Tensor, proj: torch.Tensor | None = None
    ) -> torch.Tensor:
        precise = not self.training
        h = self.ortho.orthonormalize(ortho, precise=precise)
        u = None if proj is None else self.ortho.orthonormalize(proj, precise=precise)
        first = bcop_kernel(h, u, self.bcop_size, self.mid, self.in_channels)
        s = self.stride
        second = self.ortho.orthonormalize(rko, precise=precise).reshape(self.out_channels, self.mid, s, s)
        return compose_kernels(first, second)


class AOCConv2d(LipschitzConv2d):
    """Adaptive orthogonal convolution with stride, circular padding.

    In the paper's Large MNIST network the strided convolutions are AOC's own: "conv k4 s2" is
    one AOC layer of kernel 4 and stride 2 (BCOP k3, then RKO k2 s2), with no invertible
    downsampling before it; 1->32 k3 and 32->64 k3 are stride-1 AOC layers (BCOP k3 then a 1x1
    orthogonal channel change). MaxMin after each, as the AOC paper.

    Args:
        in_channels, out_channels: channel counts.
        kernel_size: k in 1..7, k >= stride.
        stride: s >= 1; inputs must have sizes divisible by s (output: size / s).
        bias: add a learnable bias.
        padding_mode: ``"circular"`` only.
        ortho: how the matrices are orthonormalised (default: the exact polar factor).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        *,
        stride: int = 1,
        bias: bool = True,
        padding_mode: str = "circular",
        ortho: OrthoParams = POLAR,
    ) -> None:
        if padding_mode != "circular":
            raise ValueError(f"AOCConv2d supports circular padding only, got {padding_mode!r}")
        if type(stride) is not int or not 1 <= stride <= kernel_size:
            raise ValueError(f"stride must be an integer in 1..kernel_size ({kernel_size}), got {stride!r}")
        super().__init__(in_channels, out_channels, kernel_size, bias=bias, padding_mode=padding_mode)
        self.stride = (stride, stride)
        kernel = AOCKernel(in_channels, out_channels, kernel_size, stride, ortho)
        parametrize.register_parametrization(self, "weight", kernel)

    def _conv_forward(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        s = self.stride[0]
        if x.shape[-2] % s or x.shape[-1] % s:
            raise ValueError(
                f"AOCConv2d with stride {s} needs input sizes divisible by {s}, got {tuple(x.shape)}"
            )
        y = strided_conv2d(x, weight, s)
        return y if bias is None else y + bias[:, None, None]

    @torch.no_grad()
    def operator_singular_values(self, input_shape: Sequence[int]) -> torch.Tensor:
        """All singular values of the strided operator on (C, H, W) inputs, exactly (through
        :func:`bcop.kernels.polyphase_kernel`)."""
        h, w = as_pair(tuple(input_shape)[-2:])
        s = self.stride[0]
        return conv_singular_values(polyphase_kernel(self.weight.double(), s), (h // s, w // s))

    def lipschitz_bound(self, input_shape: Sequence[int]) -> float:
        """Exact norm of the strided operator on (C, H, W) inputs."""
        return float(self.operator_singular_values(input_shape).max())

"""Cayley convolutions (Trockman & Kolter, ICLR 2021).

At every frequency of the input's FFT, a circular convolution is a matrix; the Cayley
transform of its skew part (:func:`bcop.kernels.cayley`) makes each of these orthonormal, so
the convolution is orthogonal -- for circular padding, on the one input size it was built for.
The result is a circular convolution whose kernel covers the whole input (h x w taps); the
layer is an ``nn.Conv2d`` with that kernel as its weight, applied by FFT, and its bound is
that kernel's exact norm.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.nn.utils import parametrize

from bcop.kernels import apply_transfer, cayley_kernel, conv_transfer
from bcop.layers.conv import InputSizedConv2d
from bcop.layers.parametrization import CachedParametrization, frozen_key

__all__ = ["CayleyConv2d"]


class CayleyKernel(CachedParametrization):
    """Parametrization: raw (out, in, k, k) kernel -> (out, in, h, w) orthogonal kernel on (h, w).

    Solved in complex128 in eval mode (orthogonal to float32 rounding), complex64 in training.
    """

    def __init__(self, input_size: tuple[int, int]) -> None:
        super().__init__()
        self.input_size = input_size

    def right_inverse(self, weight: torch.Tensor) -> torch.Tensor:
        return weight

    def compute(self, raw: torch.Tensor) -> torch.Tensor:
        return cayley_kernel(raw, self.input_size, precise=not self.training)


class CayleyConv2d(InputSizedConv2d):
    """Orthogonal convolution by the Cayley transform, for circular padding and one input size.

    An isometry when out_channels >= in_channels, a co-isometry (all singular values 1 on the
    output side) when fewer. In the paper's Large MNIST network it takes each convolution as it
    stands (the channel change is native, k = 2 after invertible downsampling) with
    ``input_size`` the size that convolution sees (28, 14, 14, 7), followed by MaxMin (the
    Cayley paper used GroupSort).

    Args:
        in_channels, out_channels: channel counts.
        kernel_size: k in 1..7 of the raw kernel (the applied kernel covers the input).
        input_size: n or (h, w) of the inputs; required, as the transform is defined for one size.
        bias: add a learnable bias.
        padding_mode: ``"circular"`` only (the construction is in the Fourier domain).
    """

    def _setup_constraint_(self) -> None:
        if self.padding_mode != "circular":
            raise ValueError(f"CayleyConv2d needs circular padding, got {self.padding_mode!r}")
        if min(self.input_size) < self.kernel_size[0]:
            raise ValueError(f"input_size {self.input_size} is smaller than the kernel {self.kernel_size}")
        parametrize.register_parametrization(self, "weight", CayleyKernel(self.input_size), unsafe=True)
        self._transfer_cache: tuple[tuple, torch.Tensor] | None = None

    def _check_size(self, size: Sequence[int]) -> None:
        if tuple(size) != self.input_size:
            raise ValueError(
                f"this CayleyConv2d was built for {self.input_size[0]}x{self.input_size[1]} inputs, "
                f"got {size[0]}x{size[1]}: build it with input_size={tuple(size)}"
            )

    def _conv_forward(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        self._check_size(x.shape[-2:])
        y = apply_transfer(x, self._transfer(weight))
        return y if bias is None else y + bias[:, None, None]

    def _transfer(self, weight: torch.Tensor) -> torch.Tensor:
        """The applied kernel's FFT (:func:`bcop.kernels.conv_transfer`): in eval mode with
        weights that need no gradient, cached per raw weight (half of a batch-1 forward's cost
        is this transform); else computed from ``weight`` so that gradients flow."""
        key = None if self.training else frozen_key(self.parametrizations.weight.original)
        if key is None:
            return conv_transfer(weight, self.input_size)
        if self._transfer_cache is None or self._transfer_cache[0] != key:
            with torch.inference_mode(False), torch.no_grad():
                self._transfer_cache = (key, conv_transfer(weight, self.input_size).contiguous())
        return self._transfer_cache[1]

    def lipschitz_bound(self, input_shape: Sequence[int]) -> float:
        """Exact norm of the applied (h x w) kernel on the input size it was built for."""
        self._check_size(tuple(input_shape)[-2:])
        return super().lipschitz_bound(input_shape)

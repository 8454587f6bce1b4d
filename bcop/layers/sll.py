"""SLL: SDP-based Lipschitz Layers (Araujo, Havens, Delattre, Allauzen & Hu, ICLR 2023).

A residual layer ``x - 2 W T^-1 relu(W^T x + b)`` with ``W^T`` a convolution and ``T`` the
diagonal of :func:`bcop.kernels.sll_scale`, which makes it 1-Lipschitz by a theorem. It
contains its own activation and is not linear: it is one layer to certify, to measure
gradient norms at and to plot, but it has no singular values of its own
(:meth:`SLLConv2d.operator_singular_values` is None).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from bcop.kernels import pad_channels, sll_residual, sll_scale
from bcop.layers.conv import LipschitzConv2d
from bcop.layers.parametrization import frozen_key
from bcop.orthogonal import as_pair, conv_spectral_norm

__all__ = ["SLLConv2d"]


class SLLConv2d(LipschitzConv2d):
    """SLL residual convolution block, circular padding; 1-Lipschitz, not orthogonal.

    Channel changes (the residual needs equal counts) as the SLL code does: with
    c = max(in, out), the input is zero-padded to c channels and the first out channels of the
    c-channel block are kept. In the paper's Large MNIST network: each convolution as it
    stands through this padding or slicing (1->32 k3, 128->32 k2, 32->64 k3, 256->64 k2),
    hidden width c, and no activation after it (its ReLU is inside; the dense head keeps
    MaxMin).

    Args:
        in_channels, out_channels: channel counts.
        kernel_size: k in 1..7 of ``W^T``.
        bias: the bias b inside the ReLU (c entries).
        padding_mode: ``"circular"`` only (``W`` is the exact transpose of circular ``W^T``).
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
        if padding_mode != "circular":
            raise ValueError(f"SLLConv2d supports circular padding only, got {padding_mode!r}")
        super().__init__(in_channels, out_channels, kernel_size, bias=bias, padding_mode=padding_mode)
        c = max(in_channels, out_channels)
        fan_in = c * kernel_size * kernel_size
        raw = torch.empty(c, c, kernel_size, kernel_size)
        nn.init.kaiming_uniform_(raw, a=math.sqrt(5))
        self.weight = nn.Parameter(raw)
        if bias:
            self.bias = nn.Parameter(torch.empty(c).uniform_(-(fan_in**-0.5), fan_in**-0.5))
        self.log_q = nn.Parameter(torch.zeros(c))
        self._scale_cache: tuple[tuple, torch.Tensor] | None = None

    def _conv_forward(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        x = pad_channels(x, weight.shape[0])
        return sll_residual(x, weight, bias, self._scale(weight), self.out_channels)

    def _scale(self, weight: torch.Tensor) -> torch.Tensor:
        """T's diagonal; with frozen weights (inference, certification, attacks) computed once
        per weights instead of at every call (its Gram kernel costs c^3 k^2 (2k - 1)^2)."""
        key = frozen_key(weight, self.log_q)
        if key is None:
            return sll_scale(weight, self.log_q)
        if self._scale_cache is None or self._scale_cache[0] != key:
            with torch.inference_mode(False), torch.no_grad():
                self._scale_cache = (key, sll_scale(weight, self.log_q))
        return self._scale_cache[1]

    @torch.no_grad()
    def lipschitz_bound(self, input_shape: Sequence[int]) -> float:
        """``max(1, 2 ||W T^-1/2||^2 - 1)``, the norm's exact value computed by FFT on (C, H, W).

        Note [SLL's bound]: the Jacobian is ``I - 2 M D M^T`` with ``M = W T^-1/2`` and D
        diagonal in [0, 1], so its eigenvalues lie in ``[1 - 2 ||M||^2, 1]``. The theorem gives
        ``||M|| <= 1`` and so the bound 1; computing ``||M||`` from the weights the layer uses
        checks it rather than assuming it. Zero-padding and slicing channels do not increase it.
        """
        h, w = as_pair(tuple(input_shape)[-2:])
        scaled = self.weight * sll_scale(self.weight, self.log_q).rsqrt()[:, None, None, None]
        rho = conv_spectral_norm(scaled, (h, w)) ** 2
        return max(1.0, 2.0 * rho - 1.0)

    def operator_singular_values(self, input_shape: Sequence[int]) -> None:
        """None: the layer is not linear, so it has no singular values of its own."""
        return None

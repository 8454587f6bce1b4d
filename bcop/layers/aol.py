"""AOL: Almost-Orthogonal Lipschitz convolutions (Prach & Lampert, ECCV 2022).

The weight is the raw kernel with every input channel rescaled by
:func:`bcop.kernels.aol_scale`, which makes the convolution 1-Lipschitz by a theorem, not by
an estimate. The layer is an ordinary ``nn.Conv2d`` whose weight is that rescaled kernel, so
its bound is the exact norm of the operator it applies (by FFT, as every
:class:`~bcop.layers.conv.LipschitzConv2d`), proven <= 1. It is not orthogonal: the
rescaling is tight only for kernels whose Gram matrix is already diagonal.
"""

from __future__ import annotations

import torch
from torch.nn.utils import parametrize

from bcop.kernels import aol_scale
from bcop.layers.aoc import AOCConv2d
from bcop.layers.conv import LipschitzConv2d
from bcop.layers.parametrization import CachedParametrization

__all__ = ["AOLConv2d"]


class AOLKernel(CachedParametrization):
    """Parametrization ``P -> P diag(d)``, d from :func:`bcop.kernels.aol_scale`."""

    def right_inverse(self, weight: torch.Tensor) -> torch.Tensor:
        return weight

    def compute(self, raw: torch.Tensor) -> torch.Tensor:
        return raw * aol_scale(raw)[None, :, None, None]


class AOLConv2d(LipschitzConv2d):
    """AOL convolution: 1-Lipschitz by construction, any channel counts, kernel size and padding.

    The raw kernel starts orthogonal (AOC's construction, as orthogonium initialises AOL), so
    the rescaling starts as the identity and the layer orthogonal when out_channels >=
    in_channels; a random kernel would start far below norm 1 (0.35 to 0.9 in the Large
    network). In the paper's Large MNIST network it takes each convolution as it stands
    (channel change included, k = 2 after invertible downsampling), followed by MaxMin as in
    the AOL paper.

    Args:
        in_channels, out_channels: channel counts.
        kernel_size: k in 1..7.
        bias: add a learnable bias.
        padding_mode: ``"circular"`` or ``"zeros"`` (the bound holds for both).
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
        super().__init__(in_channels, out_channels, kernel_size, bias=bias, padding_mode=padding_mode)
        with torch.no_grad():  # an orthogonal kernel, which AOL's rescaling leaves as it is
            self.weight.copy_(AOCConv2d(in_channels, out_channels, kernel_size).weight)
        parametrize.register_parametrization(self, "weight", AOLKernel())

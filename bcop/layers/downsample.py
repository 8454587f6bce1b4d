"""Invertible downsampling: pixel unshuffle, an orthogonal (permutation) operator."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["InvertibleDownsample"]


class InvertibleDownsample(nn.Module):
    """Rearrange each ``factor x factor`` block of pixels into channels.

    Used, as in the paper, in place of strided convolutions: a stride-2 k=4 convolution becomes
    this (C -> 4C channels, H -> H/2) followed by a stride-1 k=2 convolution. It permutes the
    input's entries, so it is orthogonal.
    """

    def __init__(self, factor: int = 2) -> None:
        super().__init__()
        if factor < 1:
            raise ValueError(f"factor must be >= 1, got {factor}")
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, C, H, W), H and W multiples of the factor -> (N, C*f*f, H/f, W/f)."""
        if x.dim() != 4 or x.shape[-1] % self.factor or x.shape[-2] % self.factor:
            raise ValueError(
                f"InvertibleDownsample({self.factor}) needs (N, C, H, W) input with H and W "
                f"multiples of {self.factor}, got {tuple(x.shape)}"
            )
        return F.pixel_unshuffle(x, self.factor)

    def lipschitz_bound(self, input_shape: Sequence[int] | None = None) -> float:
        return 1.0

    def extra_repr(self) -> str:
        return f"factor={self.factor}"

"""SOC: Skew Orthogonal Convolutions (Singla & Feizi, ICML 2021).

The exponential of a skew-symmetric convolution ``S = L - L^T`` is orthogonal; SOC applies it
as the Taylor series ``sum_{i <= terms} S^i x / i!``, truncated, so the layer is only
approximately orthogonal. Its certified bound is the exact norm of the truncated series it
applies (:func:`bcop.kernels.exp_conv_transfer`), never the 1 of the untruncated exponential.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn.utils import parametrize

from bcop.kernels import apply_transfer, exp_conv_fft, exp_conv_transfer, pad_channels, skew_kernel
from bcop.layers.conv import LipschitzConv2d
from bcop.layers.parametrization import CachedParametrization, frozen_key
from bcop.orthogonal import as_pair, conv2d_same

__all__ = ["SOCConv2d"]

ESTIMATE_GRID = 8  # the grid on which the norm of S is estimated for the normalisation


class SkewGenerator(CachedParametrization):
    """Parametrization: raw (c, c, k, k) kernel ``L`` -> kernel of ``correction * S / sigma``.

    ``S = L - L^T`` (:func:`bcop.kernels.skew_kernel`) and ``sigma = ||S v||`` with ``v`` a
    persistent unit vector on an 8 x 8 grid that power iteration moves towards S's top singular
    vector at every training forward (``iters`` steps, as SOC's own estimate). sigma carries the
    gradient. The estimate only keeps the series short (its error is about
    ``||S||^(terms + 1) / (terms + 1)!``); the certificate never relies on it.
    """

    def __init__(self, channels: int, correction: float, iters: int) -> None:
        super().__init__()
        self.correction, self.iters = correction, iters
        v = torch.randn(1, channels, ESTIMATE_GRID, ESTIMATE_GRID)
        self.register_buffer("v", v / v.norm())

    def right_inverse(self, weight: torch.Tensor) -> torch.Tensor:
        return weight

    @torch.no_grad()
    def power_iteration_(self, skew: torch.Tensor, iters: int) -> None:
        """Advance the stored vector by ``iters`` steps ``v <- S^T S v / ||.||`` (S^T = -S)."""
        v = self.v.clone()
        for _ in range(iters):
            v = -conv2d_same(conv2d_same(v, skew), skew)
            v = v / v.norm().clamp_min(1e-30)
        self.v.copy_(v)

    def compute(self, raw: torch.Tensor) -> torch.Tensor:
        skew = skew_kernel(raw)
        if self.training and torch.is_grad_enabled():
            self.power_iteration_(skew.detach(), self.iters)
        sigma = conv2d_same(self.v.clone(), skew).norm()
        return skew * (self.correction / sigma.clamp_min(1e-12))


class SOCConv2d(LipschitzConv2d):
    """Skew orthogonal convolution: ``exp(S)`` by a truncated Taylor series, circular padding.

    Channel changes as the SOC paper: with c = max(in, out), the input is zero-padded to c
    channels and the first out channels of the c-channel SOC are kept (an isometry for
    out >= in, a co-isometry otherwise, up to the series' truncation). An even raw kernel k
    gives a (k + 1) x (k + 1) skew kernel (``L - L^T`` reaches both sides). In the paper's
    Large MNIST network: each convolution as it stands through this padding or slicing
    (1->32, 128->32 on k = 2, 32->64, 256->64 on k = 2), 5 terms in training and 12 in eval
    mode (SOC's defaults), MaxMin after it (SOC used MaxMin).

    The weight is the normalised skew-symmetric kernel S (c, c, k', k') the series uses, not a
    kernel of the layer's operator; :meth:`operator_singular_values` gives the operator's. The
    series runs by FFT, one c x c product per frequency and power (:func:`bcop.kernels.exp_conv_fft`,
    the same function as the convolutions' series at about half their cost at 128 and 256
    channels). In eval mode with frozen weights the layer applies the series' exact operator
    instead (Note [SOC's frozen operator]), one product per frequency for all the powers.

    Args:
        in_channels, out_channels: channel counts.
        kernel_size: k in 1..7 of the raw kernel L.
        bias: add a learnable bias (after the series).
        padding_mode: ``"circular"`` only (the transpose of a zero-padded convolution is not
            one with the transposed kernel).
        train_terms, eval_terms: the series' last power in training and in eval mode, the mode
            that is certified.
        correction: the estimated norm of S after normalisation (SOC's 0.7).
        power_iters: power iterations per training forward for that estimate.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        *,
        bias: bool = True,
        padding_mode: str = "circular",
        train_terms: int = 5,
        eval_terms: int = 12,
        correction: float = 0.7,
        power_iters: int = 1,
    ) -> None:
        if padding_mode != "circular":
            raise ValueError(f"SOCConv2d supports circular padding only, got {padding_mode!r}")
        if min(train_terms, eval_terms) < 1:
            raise ValueError(f"the series needs at least 1 term, got {train_terms}, {eval_terms}")
        super().__init__(in_channels, out_channels, kernel_size, bias=bias, padding_mode=padding_mode)
        self.train_terms, self.eval_terms = train_terms, eval_terms
        c = max(in_channels, out_channels)
        raw = torch.empty(c, c, kernel_size, kernel_size)
        nn.init.kaiming_uniform_(raw, a=math.sqrt(5))
        self.weight = nn.Parameter(raw)
        generator = SkewGenerator(c, correction, power_iters)
        parametrize.register_parametrization(self, "weight", generator, unsafe=True)
        generator.power_iteration_(skew_kernel(raw), 50)  # start from a converged estimate
        self._transfer_cache: tuple[tuple, torch.Tensor] | None = None

    @property
    def terms(self) -> int:
        """The series' last power in the current mode."""
        return self.train_terms if self.training else self.eval_terms

    def _conv_forward(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        key = self._frozen_key(x)
        if key is None:
            y = exp_conv_fft(pad_channels(x, weight.shape[0]), weight, self.terms, self.out_channels)
        else:
            y = apply_transfer(x, self._frozen_transfer(key, weight, x.shape[-2:]))
        return y if bias is None else y + bias[:, None, None]

    # Note [SOC's frozen operator]: in eval mode with weights that need no gradient (inference,
    # certification, attacks under frozen_weights), the layer applies the exact operator of its
    # truncated series (exp_conv_transfer, float64, cached per weights and input size) by FFT:
    # the same function as the series, one product per frequency instead of 12. Training, and
    # any gradient with respect to the weights, use the series.
    def _frozen_key(self, x: torch.Tensor) -> tuple | None:
        """The cache key of the frozen operator for input ``x``, or None when the series must run."""
        if self.training:
            return None
        weights = frozen_key(self.parametrizations.weight.original, self.parametrizations.weight[0].v)
        return None if weights is None else (tuple(x.shape[-2:]), x.dtype, x.device, *weights)

    def _frozen_transfer(self, key: tuple, weight: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        """(H, W, out, in) matrices of the eval-mode operator on ``size``, cached under ``key``."""
        if self._transfer_cache is None or self._transfer_cache[0] != key:
            with torch.inference_mode(False), torch.no_grad():
                transfer = exp_conv_transfer(weight, self.terms, tuple(size))
                sliced = transfer[..., : self.out_channels, : self.in_channels].contiguous()
            self._transfer_cache = (key, sliced)
        return self._transfer_cache[1]

    @torch.no_grad()
    def operator_singular_values(self, input_shape: Sequence[int]) -> torch.Tensor:
        """All singular values of the operator the layer applies in its current mode (the
        truncated series, sliced to out x in channels) on inputs of shape (C, H, W), exactly."""
        size = as_pair(tuple(input_shape)[-2:])
        transfer = exp_conv_transfer(self.weight, self.terms, size)
        return torch.linalg.svdvals(transfer[..., : self.out_channels, : self.in_channels]).reshape(-1)

    def lipschitz_bound(self, input_shape: Sequence[int]) -> float:
        """Exact norm of the truncated series (current mode) on (C, H, W) inputs."""
        return float(self.operator_singular_values(input_shape).max())

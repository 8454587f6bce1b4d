"""Dense layers that bound their own Lipschitz constant; the orthogonal one is GNP."""

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
from bcop.orthogonal import polar_linear

__all__ = ["LipschitzLinear", "OrthogonalLinear", "Orthonormal"]


class LipschitzLinear(nn.Linear):
    """``nn.Linear`` with input checking and an exact Lipschitz bound (its spectral norm)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, in_features) -> (N, out_features)."""
        self._check_input(x)
        return F.linear(x, current_weight(self), self.bias)

    def _check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 2 or x.shape[1] != self.in_features:
            raise ValueError(
                f"{type(self).__name__} expects input of shape (N, {self.in_features}), got {tuple(x.shape)}"
            )

    @torch.no_grad()  # a measurement: no graph (the weights are those of the current mode)
    def lipschitz_bound(self, input_shape: Sequence[int] | None = None) -> float:
        """Exact L2 Lipschitz constant: the largest singular value of the weight (float64)."""
        return float(torch.linalg.matrix_norm(self.weight.detach().double(), ord=2))


class Orthonormal(CachedParametrization):
    """Parametrization ``weight = orthonormalize(raw)`` (Björck or the exact polar factor)."""

    def __init__(self, ortho: OrthoParams = POLAR) -> None:
        super().__init__()
        self.ortho = ortho

    def right_inverse(self, weight: torch.Tensor) -> torch.Tensor:
        """An orthonormal matrix is its own polar factor, so it is its own preimage."""
        return weight

    def compute(self, raw: torch.Tensor) -> torch.Tensor:
        return self.ortho.orthonormalize(raw, precise=not self.training)


class OrthogonalLinear(LipschitzLinear):
    """Dense layer with an orthonormal weight (rows or columns, whichever are fewer), computed
    from a free matrix by the exact polar factor or, with ``ortho=PAPER_BJORCK``, by the
    paper's Björck iterations.

    Gradient-norm preserving when ``out_features <= in_features`` and norm preserving when
    ``out_features >= in_features`` (Anil, Lucas and Grosse, 2019).

    Args:
        in_features, out_features, bias: as ``nn.Linear``.
        ortho: how the weight is orthonormalized (default: the exact polar factor).
    """

    def __init__(
        self, in_features: int, out_features: int, *, bias: bool = True, ortho: OrthoParams = POLAR
    ) -> None:
        super().__init__(in_features, out_features, bias=bias)  # bias: +-1/sqrt(in), the paper's
        scaled_orthogonal_(self.weight, in_features)
        parametrize.register_parametrization(self, "weight", Orthonormal(ortho))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, in_features) -> (N, out_features).

        A training step with the polar factor applies the small factor of the Gram matrix to
        ``W x`` instead of forming the weight (:func:`bcop.orthogonal.polar_linear`: the same
        function and gradient at a fraction of the cost); everything else uses ``self.weight``,
        cached while the raw matrix does not change.
        """
        if self.training and torch.is_grad_enabled():
            chain = self.parametrizations.weight
            if chain.original.requires_grad and chain[0].ortho.method == "polar":
                self._check_input(x)
                return polar_linear(x, chain.original, self.bias, precise=False)
        return super().forward(x)


__getattr__ = deprecated_names(__name__, {"BjorckLinear": ("bcop.layers.OrthogonalLinear", OrthogonalLinear)})

"""Gradient-norm-preserving activations: GroupSort and its group-size-2 case, MaxMin."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["GroupSort", "MaxMin", "group_sort"]


def group_sort(x: torch.Tensor, group_size: int = 2, dim: int = 1) -> torch.Tensor:
    """Sort each group of ``group_size`` consecutive entries along ``dim`` (descending).

    A permutation of its input at every point, hence 1-Lipschitz and gradient-norm preserving.

    Args:
        x: any tensor whose size along ``dim`` is a multiple of ``group_size``.
    """
    size = x.shape[dim]
    if size % group_size:
        raise ValueError(
            f"GroupSort needs the size along dim {dim} ({size}) to be a multiple of the group "
            f"size {group_size}"
        )
    if group_size == 2:
        a, b = x.unflatten(dim, (size // 2, 2)).unbind(dim + 1)
        return torch.stack([torch.maximum(a, b), torch.minimum(a, b)], dim + 1).flatten(dim, dim + 1)
    grouped = x.unflatten(dim, (size // group_size, group_size))
    return grouped.sort(dim=dim + 1, descending=True).values.flatten(dim, dim + 1)


class GroupSort(nn.Module):
    """GroupSort activation (Anil, Lucas and Grosse, 2019) over the channel dimension."""

    def __init__(self, group_size: int = 2) -> None:
        super().__init__()
        if group_size < 1:
            raise ValueError(f"group_size must be >= 1, got {group_size}")
        self.group_size = group_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, C, ...) with C a multiple of the group size -> same shape."""
        return group_sort(x, self.group_size, dim=1)

    def lipschitz_bound(self, input_shape: Sequence[int] | None = None) -> float:
        return 1.0

    def extra_repr(self) -> str:
        return f"group_size={self.group_size}"


class MaxMin(GroupSort):
    """MaxMin: GroupSort with groups of two."""

    def __init__(self) -> None:
        super().__init__(2)

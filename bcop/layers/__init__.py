"""Lipschitz layers: thin ``nn.Module``s over the maths in :mod:`bcop.orthogonal`."""

from bcop.deprecation import deprecated_names
from bcop.layers.activations import GroupSort, MaxMin, group_sort
from bcop.layers.conv import (
    KERNEL_SIZES,
    BCOPConv2d,
    LipschitzConv2d,
    OSSNConv2d,
    PlainConv2d,
    RKOConv2d,
    SVCMConv2d,
)
from bcop.layers.downsample import InvertibleDownsample
from bcop.layers.linear import LipschitzLinear, OrthogonalLinear, Orthonormal
from bcop.layers.parametrization import (
    PAPER_BJORCK,
    POLAR,
    CachedParametrization,
    OrthoParams,
    frozen_weights,
)
from bcop.orthogonal import bcop_kernel, svcm_project

__all__ = [
    "KERNEL_SIZES",
    "BCOPConv2d",
    "GroupSort",
    "InvertibleDownsample",
    "LipschitzConv2d",
    "LipschitzLinear",
    "MaxMin",
    "OSSNConv2d",
    "OrthogonalLinear",
    "Orthonormal",
    "OrthoParams",
    "PAPER_BJORCK",
    "POLAR",
    "PlainConv2d",
    "RKOConv2d",
    "SVCMConv2d",
    "CachedParametrization",
    "bcop_kernel",
    "frozen_weights",
    "group_sort",
    "svcm_project",
]

__getattr__ = deprecated_names(__name__, {"BjorckLinear": ("bcop.layers.OrthogonalLinear", OrthogonalLinear)})

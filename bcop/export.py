"""Plain export: a trained network as ordinary torch layers, for tools that know only ``torch.nn``.

:func:`export` bakes every constrained weight (BCOP, RKO, OSSN, SVCM, Björck) into an ordinary
``nn.Conv2d`` or ``nn.Linear`` with the same padding, and rewrites invertible downsampling as
``nn.PixelUnshuffle``. The result runs the same function with none of the parametrizations, so
``torch.export.export`` and ``torch.onnx.export`` accept it, and the program they write runs where
bcop is not installed (deel-torchlip calls this ``vanilla_export``). The exported weights are
the eval-mode ones (float64 Gram matrix), so the network's certificate carries over unchanged:
its Lipschitz bound is the product of the layers' bounds, computed on these very weights.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn

from bcop.layers import GroupSort, InvertibleDownsample, LipschitzConv2d, LipschitzLinear, OrthogonalLinear

__all__ = ["export", "save_onnx"]

# Layers that are already plain torch (GroupSort and MaxMin are a few torch operators).
_PLAIN = (nn.Flatten, nn.ReLU, nn.Identity, GroupSort)


def _plain_conv(conv: LipschitzConv2d) -> nn.Conv2d:
    """The ``nn.Conv2d`` computing what ``conv`` computes in eval mode (stride 1, "same" size)."""
    plain = nn.Conv2d(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,
        padding="same",
        padding_mode=conv.padding_mode,
        bias=conv.bias is not None,
    )
    plain.weight.copy_(conv.weight)
    if conv.bias is not None:
        plain.bias.copy_(conv.bias)
    return plain


def _plain_linear(linear: LipschitzLinear) -> nn.Linear:
    plain = nn.Linear(linear.in_features, linear.out_features, bias=linear.bias is not None)
    plain.weight.copy_(linear.weight)
    if linear.bias is not None:
        plain.bias.copy_(linear.bias)
    return plain


def _applies_its_weight(module: nn.Module) -> bool:
    """Whether ``module`` computes, in eval mode, exactly a convolution or product with its
    ``weight`` (a layer that overrides how it applies the weight cannot be baked into one)."""
    cls = type(module)
    if isinstance(module, LipschitzConv2d):
        return cls.forward is LipschitzConv2d.forward and cls._conv_forward is LipschitzConv2d._conv_forward
    return cls.forward in (LipschitzLinear.forward, OrthogonalLinear.forward)


def _plain_layer(name: str, module: nn.Module) -> nn.Module:
    if isinstance(module, (LipschitzConv2d, LipschitzLinear)) and not _applies_its_weight(module):
        raise TypeError(
            f"cannot export layer {name!r} of type {type(module).__name__}: it applies its weight in "
            "its own way, which one nn.Conv2d / nn.Linear would not reproduce"
        )
    if isinstance(module, LipschitzConv2d):
        return _plain_conv(module)
    if isinstance(module, LipschitzLinear):
        return _plain_linear(module)
    if isinstance(module, InvertibleDownsample):
        return nn.PixelUnshuffle(module.factor)
    if isinstance(module, _PLAIN):
        return copy.deepcopy(module)
    raise TypeError(
        f"cannot export layer {name!r} of type {type(module).__name__}: export() knows bcop's "
        "convolutions, dense layers, activations and downsampling, and nn.Flatten / nn.ReLU"
    )


@torch.no_grad()
def export(model: nn.Sequential) -> nn.Sequential:
    """A copy of ``model`` built from ordinary torch layers, computing the same function.

    Args:
        model: a feed-forward network of bcop layers, such as any ``LipschitzNet`` (its
            children are converted one by one; their weights are read in eval mode).

    Returns:
        An ``nn.Sequential`` in eval mode with the same child names: ``nn.Conv2d`` (stride 1,
        ``padding="same"``, the layer's padding mode), ``nn.Linear``, ``nn.PixelUnshuffle``,
        ``GroupSort`` / ``MaxMin`` (torch operators only), ``nn.Flatten`` and ``nn.ReLU``.
        Input (N, C, H, W) -> logits, as ``model``; it does not check the input's shape.

    Raises:
        TypeError: ``model`` has a layer this function does not know.
    """
    was_training = model.training
    model.eval()
    try:
        layers = OrderedDict((name, _plain_layer(name, child)) for name, child in model.named_children())
    finally:
        model.train(was_training)
    return nn.Sequential(layers).eval()


def save_onnx(model: nn.Sequential, path: str | Path, input_shape: tuple[int, int, int]) -> Path:
    """Export ``model`` (through :func:`export`) to an ONNX file with a dynamic batch size.

    Needs ``onnx`` and ``onnxscript`` (``pip install onnx onnxscript``), which torch's exporter uses.

    Args:
        model: as :func:`export`.
        path: the ``.onnx`` file to write.
        input_shape: (C, H, W) of one input, e.g. ``model.input_shape``.

    Returns:
        ``path`` as a ``Path``. The graph's input is ``"image"`` (N, C, H, W), its output
        ``"logits"``.
    """
    path = Path(path)
    example = torch.zeros(2, *input_shape)
    batch = torch.export.Dim("batch", min=1)
    torch.onnx.export(
        export(model),
        (example,),
        str(path),
        input_names=["image"],
        output_names=["logits"],
        dynamic_shapes=({0: batch},),
        dynamo=True,
        verbose=False,
    )
    return path

"""Spectra that show whether a network preserves norms: the singular values of every
convolution, and of the Jacobian from each layer's input to the logits.

* :func:`conv_spectra` -- every convolution's exact singular values on the input size it sees
  (all 1 for an orthogonal convolution such as BCOP's).
* :func:`jacobian_spectra` -- for one input, the singular values of the Jacobian of the logits
  with respect to each weight layer's input: how much of *every* output direction's gradient
  survives back-propagation to that depth, not just one loss's.

Note [Channel-expanding layers]: a convolution from ``c`` to ``c' > c`` channels (on the same
grid) maps a smaller space into a larger one. At best it is an isometry (orthonormal columns,
as BCOP makes it); its transpose, which back-propagation applies, is then a projection and
cannot preserve the norm of every gradient. So in a gradient-norm-preserving network the
Jacobian's singular values are exactly 1 from the logits back to the last layer that adds
channels, and may drop below 1 at each layer that does; layers that keep or reduce the channel
count keep them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from bcop.certify import layer_input_shapes
from bcop.layers.parametrization import frozen_weights
from bcop.orthogonal import conv_singular_values

__all__ = ["LayerSpectrum", "conv_spectra", "LayerJacobian", "jacobian_spectra", "shrinking_layers"]


@dataclass
class LayerSpectrum:
    """Singular values of one convolution, as a linear operator on its input.

    Attributes:
        name: the layer's name in the network (``conv1``, ...).
        input_shape: (C, H, W) of the layer's input.
        singular_values: (H * W * min(C_in, C_out),) all singular values of the circular
            convolution on an H x W grid ((H + k - 1) x (W + k - 1) for zero padding, whose
            operator this one is a restriction of, so the largest value is still an upper bound).
    """

    name: str
    input_shape: tuple[int, ...]
    singular_values: torch.Tensor


@torch.no_grad()
def conv_spectra(model: nn.Sequential, input_shape: Sequence[int] | None = None) -> list[LayerSpectrum]:
    """Exact singular values of every top-level ``nn.Conv2d`` of ``model``, input to output.

    An orthogonal convolution (BCOP) has all of them equal to 1; other 1-Lipschitz
    parameterisations (RKO, OSSN, SVCM) spread below 1, and unconstrained ones also above.
    A layer with an ``operator_singular_values(input_shape)`` method reports those (SOC's
    truncated series, AOC's strided operator); one that returns None (SLL, not linear) is
    left out.

    Args:
        model: a sequential network (e.g. :class:`~bcop.models.LipschitzNet`).
        input_shape: (C, H, W) of the network input; defaults to ``model.input_shape``.
    """
    shape = input_shape if input_shape is not None else model.input_shape
    spectra = []
    for name, module, in_shape in layer_input_shapes(model, shape):
        if not isinstance(module, nn.Conv2d):
            continue
        own = getattr(module, "operator_singular_values", None)
        if own is not None:  # a layer whose weight is not its operator's kernel (SOC, AOC, SLL)
            values = own(in_shape)
            if values is not None:  # None: not a linear layer (SLL's residual block)
                spectra.append(LayerSpectrum(name, tuple(in_shape), values.float()))
            continue
        h, w = in_shape[-2:]
        if module.padding_mode == "zeros":
            kh, kw = module.kernel_size
            h, w = h + kh - 1, w + kw - 1
        values = conv_singular_values(module.weight.detach(), (h, w))
        spectra.append(LayerSpectrum(name, tuple(in_shape), values))
    return spectra


@dataclass
class LayerJacobian:
    """Singular values of the Jacobian of the logits with respect to one layer's input.

    Attributes:
        name: the layer's name, or ``"output"`` for the logits themselves (all values 1).
        channels: (in, out) features of the layer (channels for a convolution), or None for
            ``"output"``.
        singular_values: (K,) descending, K = number of logits. For any unit vector ``u`` of
            logit space, the gradient of ``u . logits`` at this layer's input has a norm between
            the smallest and the largest of them.
    """

    name: str
    channels: tuple[int, int] | None
    singular_values: torch.Tensor

    @property
    def adds_channels(self) -> bool:
        """Whether the layer maps to more channels than it reads (Note [Channel-expanding layers])."""
        return self.channels is not None and self.channels[1] > self.channels[0]


def _features(module: nn.Module) -> tuple[int, int]:
    if isinstance(module, nn.Conv2d):
        return module.in_channels, module.out_channels
    return module.in_features, module.out_features


def jacobian_spectra(
    model: nn.Sequential,
    x: torch.Tensor,
    layer_types: tuple[type[nn.Module], ...] = (nn.Conv2d, nn.Linear),
) -> list[LayerJacobian]:
    """Singular values of d logits / d (layer input) at ``x``, for each weight layer, input to output.

    One backward pass over ``K`` copies of ``x`` (``K`` logits): copy ``k`` back-propagates the
    ``k``-th unit vector, so the gradients at a layer's input are the rows of that Jacobian.
    Examples do not interact in these networks (eval mode), so the copies are independent.

    Args:
        model: a sequential network (its top-level children are the layers), in eval mode.
        x: (1, C, H, W) in [0, 1].
        layer_types: report the inputs of layers of these types, plus ``"output"``.

    Returns:
        One :class:`LayerJacobian` per reported layer, from the input side to ``"output"``.
    """
    if x.dim() != 4 or x.shape[0] != 1:
        raise ValueError(f"x must be one image (1, C, H, W), got shape {tuple(x.shape)}")
    with frozen_weights(model):
        with torch.no_grad():
            k = model(x).shape[1]
        layers, inputs = [], []
        h = x.detach().repeat(k, 1, 1, 1).requires_grad_(True)
        for name, module in model.named_children():
            if isinstance(module, layer_types):
                layers.append((name, _features(module)))
                inputs.append(h)
            h = module(h)
        grads = torch.autograd.grad((h * torch.eye(k, dtype=h.dtype)).sum(), inputs)
    result = [
        LayerJacobian(name, channels, torch.linalg.svdvals(grad.detach().flatten(1).double()).float())
        for (name, channels), grad in zip(layers, grads, strict=True)
    ]
    result.append(LayerJacobian("output", None, torch.ones(k)))
    return result


def shrinking_layers(jacobian: Sequence[LayerJacobian], rtol: float = 0.01) -> list[tuple[str, float, float]]:
    """The layers that shrink every gradient although they do not add channels.

    For each reported layer that keeps or reduces the channel count, the largest singular value
    at its input is compared with the largest at the next reported layer's input: smaller by more
    than ``rtol`` (relative) means that even the best-kept output direction loses norm on the way
    back through this layer (and what follows it up to the next reported one), so the segment is
    not gradient-norm-preserving. Layers that add channels are left out: they cannot keep every
    gradient's norm (Note [Channel-expanding layers]).

    Args:
        jacobian: :func:`jacobian_spectra`'s result, input side first.
        rtol: relative drop counted (float rounding of a preserving network is ~1e-6).

    Returns:
        (name, largest value at the next layer's input, largest value at this layer's input),
        input side first.
    """
    found = []
    for layer, after in zip(jacobian[:-1], jacobian[1:], strict=True):
        if layer.adds_channels:
            continue
        top, top_after = float(layer.singular_values.max()), float(after.singular_values.max())
        if top < (1 - rtol) * top_after:
            found.append((layer.name, top_after, top))
    return found

"""Per-layer gradient norms: the measurement behind "gradient norm attenuation".

For a scalar objective of the network's output (the loss, or a logit margin), the gradient with
respect to each layer's input shows how much of the output signal survives back-propagation to
that depth. In a gradient-norm-preserving network (BCOP or Björck layers with GroupSort) it stays
constant from the output back to the input; in other 1-Lipschitz networks it can only shrink.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from bcop.certify import margins
from bcop.layers.parametrization import frozen_weights

__all__ = ["OBJECTIVES", "LayerGradNorm", "layer_gradient_norms"]

OBJECTIVES = ("loss", "margin")


@dataclass
class LayerGradNorm:
    """Gradient norm at one layer's input.

    Attributes:
        name: the layer's name in the network (the gradient at that layer's input), or
            ``"output"`` for the gradient at the logits.
        mean: mean over the batch of the per-example gradient L2 norm.
        per_example: (N,) per-example norms.
    """

    name: str
    mean: float
    per_example: torch.Tensor


def _objective(logits: torch.Tensor, y: torch.Tensor, objective: str) -> torch.Tensor:
    if objective == "loss":
        return F.cross_entropy(logits, y, reduction="sum")
    if objective == "margin":
        return margins(logits, y).sum()
    raise ValueError(f"unknown objective {objective!r}; known: {OBJECTIVES}")


def layer_gradient_norms(
    model: nn.Sequential,
    x: torch.Tensor,
    y: torch.Tensor | None = None,
    objective: str = "margin",
    layer_types: tuple[type[nn.Module], ...] = (nn.Conv2d, nn.Linear),
) -> list[LayerGradNorm]:
    """Norm of the gradient of ``objective`` with respect to each layer's input, input to output.

    Examples do not interact in these networks, so the gradient of the summed objective splits
    into per-example gradients, whose norms are reported.

    Args:
        model: a sequential network (its top-level children are the layers).
        x: (N, C, H, W) batch in [0, 1].
        y: (N,) labels; defaults to the model's own predictions.
        objective: ``"margin"`` (true-class logit minus the best other; 1-Lipschitz heads give
            a gradient of norm at most sqrt(2)) or ``"loss"`` (cross-entropy).
        layer_types: report the inputs of layers of these types (weight layers by default),
            plus the gradient at the logits as ``"output"``.

    Returns:
        One :class:`LayerGradNorm` per reported layer, from the input side to the output.
    """
    if x.dim() != 4:
        raise ValueError(f"x must be (N, C, H, W), got shape {tuple(x.shape)}")
    with frozen_weights(model):
        if y is None:
            with torch.no_grad():
                y = model(x).argmax(dim=1)
        names, inputs = [], []
        h = x.detach().requires_grad_(True)
        for name, module in model.named_children():
            if isinstance(module, layer_types):
                names.append(name)
                inputs.append(h)
            h = module(h)
        logits = h
        targets = [*inputs, logits]
        grads = torch.autograd.grad(_objective(logits, y, objective), targets)
    result = []
    for name, grad in zip([*names, "output"], grads, strict=True):
        per_example = grad.flatten(1).norm(dim=1).detach()
        result.append(LayerGradNorm(name, float(per_example.mean()), per_example))
    return result

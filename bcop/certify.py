"""Lipschitz bounds, margins, certified L2 radii and certified accuracy.

For a network ``f`` that is ``L``-Lipschitz in L2, a prediction with margin
``m = f_top(x) - f_second(x)`` cannot change under any perturbation ``delta`` with
``||delta||_2 < m / (sqrt(2) L)``: each logit difference ``f_i - f_j`` is
``sqrt(2) L``-Lipschitz. ``L`` is bounded by the product of the layers' own bounds, each
computed from the weights the layer really uses.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from bcop.deprecation import deprecated_names

__all__ = [
    "layer_input_shapes",
    "layer_lipschitz_bounds",
    "lipschitz_bound",
    "margins",
    "certified_radius",
    "Certificate",
    "certify",
    "CertifiedCounts",
    "count_certified",
    "certified_accuracy_percent",
    "full_float32",
]


@contextmanager
def full_float32() -> Iterator[None]:
    """Compute in IEEE float32 on a GPU too: turn off TF32 (cuDNN uses it for float32
    convolutions on NVIDIA GPUs by default, with 10-bit mantissas), so that margins, bounds and
    certificates computed on a GPU carry float32 precision as on a CPU. Restores the flags on
    exit; usable as a decorator."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


# torch modules that are 1-Lipschitz in L2 and carry no bound method of their own.
ONE_LIPSCHITZ = (nn.ReLU, nn.Flatten, nn.Identity)


def layer_input_shapes(
    model: nn.Sequential, input_shape: Sequence[int]
) -> list[tuple[str, nn.Module, tuple[int, ...]]]:
    """Name, module and per-example input shape of each top-level layer, in order.

    The probe input takes the dtype and device of the model's parameters, so a float64 or GPU
    model can be bounded as it is.
    """
    shapes = []
    param = next(model.parameters(), None)
    like = {} if param is None else {"dtype": param.dtype, "device": param.device}
    x = torch.zeros(1, *input_shape, **like)
    with torch.no_grad():
        for name, module in model.named_children():
            shapes.append((name, module, tuple(x.shape[1:])))
            x = module(x)
    return shapes


@torch.no_grad()
def layer_lipschitz_bounds(
    model: nn.Sequential, input_shape: Sequence[int] | None = None
) -> list[tuple[str, float]]:
    """Each top-level layer's upper bound on its L2 Lipschitz constant, in layer order.

    Each bound is that of the weights in the model's current mode (eval mode: the ones
    inference uses, orthonormalised more precisely; see :func:`bcop.orthogonal.polar`), computed
    without recording gradients.

    Args:
        model: a sequential network whose layers have ``lipschitz_bound(input_shape)`` or are
            known 1-Lipschitz torch modules. Any other module must bound itself with its own
            ``lipschitz_bound`` method (reported as the single layer ``"model"``): its children
            need not be applied one after another, so chaining their bounds would not be sound.
        input_shape: (C, H, W); defaults to ``model.input_shape``.

    Raises:
        ValueError: a layer can not bound itself (so no certificate can be given).
    """
    shape = input_shape if input_shape is not None else model.input_shape
    if not isinstance(model, nn.Sequential):
        if hasattr(model, "lipschitz_bound"):
            return [("model", float(model.lipschitz_bound(shape)))]
        raise ValueError(
            f"{type(model).__name__} is not an nn.Sequential and has no lipschitz_bound method, so "
            "its Lipschitz constant cannot be bounded layer by layer; pass lipschitz=... explicitly"
        )
    bounds = []
    for name, module, in_shape in layer_input_shapes(model, shape):
        if hasattr(module, "lipschitz_bound"):
            bounds.append((name, float(module.lipschitz_bound(in_shape))))
        elif isinstance(module, ONE_LIPSCHITZ):
            bounds.append((name, 1.0))
        else:
            raise ValueError(f"layer {name!r} ({type(module).__name__}) cannot bound its Lipschitz constant")
    return bounds


def lipschitz_bound(model: nn.Sequential, input_shape: Sequence[int] | None = None) -> float:
    """Upper bound on the network's L2 Lipschitz constant: the product of its layers' bounds."""
    return math.prod(bound for _, bound in layer_lipschitz_bounds(model, input_shape))


def margins(logits: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
    """Logit margins.

    Args:
        logits: (N, K).
        labels: (N,) or None.

    Returns:
        (N,): without labels, top logit minus runner-up (>= 0); with labels,
        ``f_y - max_{j != y} f_j`` (negative when the prediction is wrong).
    """
    if logits.dim() != 2 or logits.shape[1] < 2:
        raise ValueError(f"logits must be (N, K) with K >= 2, got {tuple(logits.shape)}")
    if labels is None:
        top2 = logits.topk(2, dim=1).values
        return top2[:, 0] - top2[:, 1]
    true = logits.gather(1, labels[:, None]).squeeze(1)
    others = logits.scatter(1, labels[:, None], float("-inf"))
    return true - others.amax(dim=1)


def certified_radius(
    logits: torch.Tensor, lipschitz: float, labels: torch.Tensor | None = None
) -> torch.Tensor:
    """Certified L2 radius ``margin / (sqrt(2) L)``, clamped at 0 (wrong predictions get 0).

    Args:
        logits: (N, K).
        lipschitz: the network's Lipschitz bound L (> 0).
        labels: (N,) to certify the true class, or None to certify the prediction.
    """
    if not lipschitz > 0:
        raise ValueError(f"Lipschitz bound must be positive, got {lipschitz}")
    return (margins(logits, labels) / (math.sqrt(2) * lipschitz)).clamp_min(0.0)


@dataclass
class Certificate:
    """A batch of predictions with their certificates.

    Attributes:
        prediction: (N,) predicted classes.
        probabilities: (N, K) softmax of the logits (for display only; not calibrated).
        logits: (N, K).
        margin: (N,) top logit minus runner-up.
        radius: (N,) certified L2 radius: no perturbation smaller than this changes the
            prediction.
        lipschitz: the Lipschitz bound used.
    """

    prediction: torch.Tensor
    probabilities: torch.Tensor
    logits: torch.Tensor
    margin: torch.Tensor
    radius: torch.Tensor
    lipschitz: float


@torch.no_grad()
def certify(model: nn.Module, x: torch.Tensor, lipschitz: float | None = None) -> Certificate:
    """Predict and certify a batch.

    Args:
        model: a network with ``input_shape`` and layer bounds.
        x: (N, C, H, W) in [0, 1].
        lipschitz: the network's bound if already known (it is constant for fixed weights).
    """
    L = lipschitz_bound(model) if lipschitz is None else lipschitz
    logits = model(x)
    margin = margins(logits)
    return Certificate(
        prediction=logits.argmax(dim=1),
        probabilities=logits.softmax(dim=1),
        logits=logits,
        margin=margin,
        radius=certified_radius(logits, L),
        lipschitz=L,
    )


@dataclass(frozen=True)
class CertifiedCounts:
    """What a pass over a test set counts (see :func:`count_certified`).

    Attributes:
        n: examples.
        correct: examples classified correctly.
        certified: per radius eps, examples classified correctly with certified radius >= eps.
        lipschitz: the bound L the radii were computed with.
    """

    n: int
    correct: int
    certified: dict[float, int]
    lipschitz: float


@torch.no_grad()
def count_certified(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    epsilons: Sequence[float],
    lipschitz: float | None = None,
) -> CertifiedCounts:
    """Count correct and certified examples over ``batches`` of (x (N, C, H, W), labels (N,)).

    An example counts as certified at ``eps`` when it is classified correctly and its
    certified radius (for the true class) is at least ``eps``.

    Args:
        lipschitz: the network's bound L; default :func:`lipschitz_bound` of ``model``.

    Raises:
        ValueError: ``batches`` is empty.
    """
    L = lipschitz_bound(model) if lipschitz is None else lipschitz
    n = correct = 0
    certified = dict.fromkeys(epsilons, 0)
    for x, y in batches:
        logits = model(x)
        radius = certified_radius(logits, L, y)
        ok = logits.argmax(dim=1) == y
        n += len(y)
        correct += int(ok.sum())
        for eps in epsilons:
            certified[eps] += int((ok & (radius >= eps)).sum())
    if n == 0:
        raise ValueError("no data to certify: the batches were empty")
    return CertifiedCounts(n, correct, certified, L)


def certified_accuracy_percent(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    epsilons: Sequence[float],
    lipschitz: float | None = None,
) -> dict[str, object]:
    """Clean and certified accuracy in percent, as results files, cards and the app report them.

    Returns:
        ``{"n": ..., "clean": ..., "lipschitz": L, "certified": {eps: accuracy}}`` with
        accuracies in [0, 100]; see :func:`count_certified` for the arguments.
    """
    return _accuracies(count_certified(model, batches, epsilons, lipschitz), 100)


def _certified_fractions(*args: Any, **kwargs: Any) -> dict[str, object]:
    """The deprecated ``certified_accuracy``: :func:`certified_accuracy_percent` in [0, 1]."""
    return _accuracies(count_certified(*args, **kwargs), 1)


def _accuracies(counts: CertifiedCounts, unit: float) -> dict[str, object]:
    """Counts as accuracies: ``unit`` 100 for percent, 1 for fractions."""
    return {
        "n": counts.n,
        "clean": unit * counts.correct / counts.n,
        "lipschitz": counts.lipschitz,
        "certified": {eps: unit * count / counts.n for eps, count in counts.certified.items()},
    }


__getattr__ = deprecated_names(
    __name__, {"certified_accuracy": ("bcop.certify.certified_accuracy_percent", _certified_fractions)}
)

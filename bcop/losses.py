"""The training losses: the paper's multi-class hinge loss and cross-entropy, by name.

Attacks maximise other objectives, named in :data:`bcop.attacks.ATTACK_LOSSES`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

__all__ = ["TRAINING_LOSSES", "AUTO_LOSS", "LossFn", "multiclass_hinge", "make_loss", "resolve_loss"]

TRAINING_LOSSES: tuple[str, ...] = ("hinge", "ce")
"""The training losses, by the names :func:`make_loss` takes."""
AUTO_LOSS = "auto"
"""Not a loss: the choice :func:`resolve_loss` makes for a network by its name."""

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (logits (N, K), labels (N,)) -> scalar


def multiclass_hinge(logits: torch.Tensor, labels: torch.Tensor, margin: float) -> torch.Tensor:
    """Multi-class hinge loss ``mean_i sum_{j != y_i} max(0, margin - (f_y - f_j)) / K``.

    Args:
        logits: (N, K).
        labels: (N,).
        margin: required logit gap; ``eps * sqrt(2) * L`` certifies radius eps at zero loss.
    """
    return F.multi_margin_loss(logits, labels, margin=margin)


def make_loss(loss: str, hinge_eps: float = 1.5) -> LossFn:
    """The training loss by name: ``"hinge"`` (margin ``hinge_eps * sqrt(2)``) or ``"ce"``."""
    if loss == "hinge":
        margin = hinge_eps * math.sqrt(2)
        return lambda logits, y: multiclass_hinge(logits, y, margin)
    if loss == "ce":
        return F.cross_entropy
    raise ValueError(f"unknown loss {loss!r}; known: {', '.join(TRAINING_LOSSES)}")


def resolve_loss(loss: str, model_name: str) -> str:
    """The loss a network trains with: ``loss``, or for ``"auto"`` cross-entropy on unconstrained
    (``plain-``) networks and the hinge loss on Lipschitz ones."""
    if loss != AUTO_LOSS and loss not in TRAINING_LOSSES:
        raise ValueError(f"unknown loss {loss!r}; known: {', '.join((AUTO_LOSS, *TRAINING_LOSSES))}")
    if loss != AUTO_LOSS:
        return loss
    return "ce" if model_name.startswith("plain-") else "hinge"

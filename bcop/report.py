"""What one model says about one image, and what its evaluation recorded: the per-model
computations the demo shows, as functions that scripts and tests call too.

* :func:`certify_image` -- prediction, margin and certified radius (a proven lower bound on the
  distance to the nearest adversarial example).
* :func:`attack_image` -- PGD at a radius and the smallest adversarial example a binary search
  finds (an upper bound on that distance), set against the certificate.
* :func:`read_results` / :func:`certified_curve` -- a model folder's ``eval_results.json``, with
  every accuracy in percent.

Each result has a ``row()``: the table row the demo shows (and its API returns), with the column
names below.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from bcop.attacks import AttackResult, minimal_adversarial_distance, pgd_l2
from bcop.certify import certify

__all__ = [
    "PGD_STEPS",
    "PGD_STEP_SIZE",
    "SEARCH_MAX_EPS",
    "CERTIFY_COLUMNS",
    "ATTACK_COLUMNS",
    "ImageCertificate",
    "ImageAttack",
    "certify_image",
    "attack_image",
    "certified_curve",
]

PGD_STEPS, PGD_STEP_SIZE = 200, 0.01  # the paper's MNIST evaluation
SEARCH_STEPS, SEARCH_PGD_STEPS, SEARCH_MAX_EPS = 8, 50, 8.0
CERTIFY_COLUMNS = ["model", "prediction", "probability", "margin", "Lipschitz bound", "certified radius"]
ATTACK_COLUMNS = [
    "model",
    "clean prediction",
    "certified radius (lower bound)",
    "PGD prediction",
    "PGD fooled it",
    "PGD ‖δ‖",
    "smallest adversarial prediction",
    "smallest adversarial ‖δ‖ (upper bound)",
]
Progress = Callable[[float, str], None]


@dataclass
class ImageCertificate:
    """One model's prediction for one image and its certificate.

    Attributes:
        model: the model's name.
        prediction: the predicted class.
        probabilities: (K,) softmax of the logits (for display; not calibrated).
        margin: top logit minus runner-up (>= 0).
        lipschitz: the model's Lipschitz bound L.
        radius: margin / (sqrt(2) L): no perturbation with a smaller L2 norm changes the prediction.
    """

    model: str
    prediction: int
    probabilities: torch.Tensor
    margin: float
    lipschitz: float
    radius: float

    def row(self) -> dict[str, Any]:
        """The row of the certificates table (values rounded to 4 decimals)."""
        values = [
            self.model,
            self.prediction,
            round(float(self.probabilities[self.prediction]), 4),
            round(self.margin, 4),
            round(self.lipschitz, 4),
            round(self.radius, 4),
        ]
        return dict(zip(CERTIFY_COLUMNS, values, strict=True))


def certify_image(name: str, model: nn.Module, x: torch.Tensor, lipschitz: float) -> ImageCertificate:
    """Predict and certify one image.

    Args:
        name: the model's name (carried into the result).
        model: the network, in eval mode.
        x: (1, C, H, W) in [0, 1].
        lipschitz: the network's Lipschitz bound (constant for fixed weights, so computed once).
    """
    cert = certify(model, x, lipschitz)
    return ImageCertificate(
        model=name,
        prediction=int(cert.prediction[0]),
        probabilities=cert.probabilities[0].detach(),
        margin=float(cert.margin[0]),
        lipschitz=lipschitz,
        radius=float(cert.radius[0]),
    )


@dataclass
class ImageAttack:
    """Attacks on one model's prediction for one image, beside its certificate.

    Attributes:
        model: the model's name.
        prediction: the clean prediction (the label the attacks try to change).
        radius: the certified radius (a proven lower bound on the distance to an adversarial).
        eps: the radius of the PGD attack.
        pgd: PGD at ``eps`` (``PGD_STEPS`` steps of ``PGD_STEP_SIZE``).
        smallest: the smallest adversarial example the binary search found (norm ``inf`` if
            none within ``SEARCH_MAX_EPS``).
    """

    model: str
    prediction: int
    radius: float
    eps: float
    pgd: AttackResult
    smallest: AttackResult

    @property
    def upper(self) -> float:
        """The smallest adversarial norm found: an upper bound on the distance (inf if none)."""
        return float(self.smallest.norm[0])

    @property
    def ratio(self) -> float:
        """upper / radius: how far the attack's witness is from the proof (>= 1; inf when the
        certificate is 0 or no adversarial was found). 1 would mean the certificate is exact."""
        if not math.isfinite(self.upper) or self.radius <= 0:
            return math.inf
        return self.upper / self.radius

    def row(self) -> dict[str, Any]:
        """The row of the attacks table (None where the search found no adversarial)."""
        found = bool(self.smallest.success[0])
        values = [
            self.model,
            self.prediction,
            round(self.radius, 4),
            int(self.pgd.prediction[0]),
            bool(self.pgd.success[0]),
            round(float(self.pgd.norm[0]), 4),
            int(self.smallest.prediction[0]) if found else None,
            round(self.upper, 4) if found else None,
        ]
        return dict(zip(ATTACK_COLUMNS, values, strict=True))


def attack_image(
    name: str,
    model: nn.Module,
    x: torch.Tensor,
    eps: float,
    lipschitz: float,
    progress: Progress | None = None,
) -> ImageAttack:
    """PGD at ``eps`` and the smallest-adversarial search against one model's prediction.

    Args:
        name: the model's name.
        model: the network, in eval mode.
        x: (1, C, H, W) in [0, 1].
        eps: PGD radius (L2, >= 0).
        lipschitz: the network's Lipschitz bound.
        progress: called with (fraction of the work done in [0, 1], stage in words).
    """
    cert = certify(model, x, lipschitz)
    y = cert.prediction
    work = PGD_STEPS + (SEARCH_STEPS + 1) * SEARCH_PGD_STEPS

    def stage(start: int, size: int, words: str) -> Callable[[float], None] | None:
        if progress is None:
            return None
        return lambda fraction: progress((start + fraction * size) / work, words)

    pgd = pgd_l2(
        model,
        x,
        y,
        eps,
        steps=PGD_STEPS,
        step_size=PGD_STEP_SIZE,
        progress=stage(0, PGD_STEPS, f"PGD at ε = {eps:g}"),
    )
    smallest = minimal_adversarial_distance(
        model,
        x,
        y,
        max_eps=SEARCH_MAX_EPS,
        search_steps=SEARCH_STEPS,
        pgd_steps=SEARCH_PGD_STEPS,
        progress=stage(PGD_STEPS, work - PGD_STEPS, "smallest adversarial search"),
    )
    return ImageAttack(name, int(y[0]), float(cert.radius[0]), float(eps), pgd, smallest)


def certified_curve(results: dict[str, Any]) -> list[tuple[float, float]]:
    """(eps, certified accuracy in %) pairs of a :func:`bcop.results.read_results` record, by increasing eps
    (empty when it holds none)."""
    certified = results.get("certified")
    if not isinstance(certified, dict):
        return []
    return sorted((float(eps), float(acc)) for eps, acc in certified.items() if isinstance(acc, int | float))

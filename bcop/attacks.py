"""L2 attacks that never leave the valid input box [0, 1].

* :func:`pgd_l2` -- projected gradient descent in an L2 ball with a random start (the paper's
  evaluation: 200 steps of size 0.01 on MNIST).
* :func:`fgm_l2` -- the one-step fast gradient method.
* :func:`minimal_adversarial_distance` -- a binary search over the radius with PGD: the norm of
  the smallest adversarial perturbation it finds is an upper bound on the true distance to the
  decision boundary, to set against the certified radius (a lower bound).

All take ``model(x) -> logits`` with ``x`` (N, C, H, W) in [0, 1] and integer labels (N,), and
maximise the logit margin loss ``max_{j != y} f_j - f_y`` by default (``loss="ce"`` for
cross-entropy). Weights are frozen while attacking, so only the input is differentiated.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from bcop.certify import margins
from bcop.deprecation import deprecated_names
from bcop.layers.parametrization import frozen_weights

__all__ = ["AttackResult", "pgd_l2", "fgm_l2", "minimal_adversarial_distance", "ATTACK_LOSSES", "STARTS"]

ATTACK_LOSSES = ("margin", "ce")
"""What an attack maximises; training minimises other losses (:data:`bcop.losses.TRAINING_LOSSES`)."""
Progress = Callable[[float], None]


@dataclass
class AttackResult:
    """Outcome of an attack on a batch.

    Attributes:
        x_adv: (N, C, H, W) adversarial inputs in [0, 1] (the clean input where none was found).
        success: (N,) bool, the prediction differs from the label.
        prediction: (N,) the model's prediction on ``x_adv``.
        norm: (N,) L2 norm of ``x_adv - x``.
    """

    x_adv: torch.Tensor
    success: torch.Tensor
    prediction: torch.Tensor
    norm: torch.Tensor


def _check(x: torch.Tensor, y: torch.Tensor, eps: float | torch.Tensor) -> torch.Tensor:
    if x.dim() != 4:
        raise ValueError(f"x must be (N, C, H, W), got shape {tuple(x.shape)}")
    if y.shape != (x.shape[0],):
        raise ValueError(f"labels must have shape ({x.shape[0]},), got {tuple(y.shape)}")
    if float(x.min()) < 0 or float(x.max()) > 1:
        raise ValueError("x must lie in [0, 1]")
    eps_t = torch.as_tensor(eps, dtype=x.dtype, device=x.device).expand(x.shape[0]).clone()
    if bool((eps_t < 0).any()) or not bool(torch.isfinite(eps_t).all()):
        raise ValueError(f"epsilon must be finite and >= 0, got {eps}")
    return eps_t


def _loss(logits: torch.Tensor, y: torch.Tensor, loss: str) -> torch.Tensor:
    """Per-example loss to maximise."""
    if loss == "margin":
        return -margins(logits, y)
    if loss == "ce":
        return F.cross_entropy(logits, y, reduction="none")
    raise ValueError(f"unknown attack loss {loss!r}; known: {ATTACK_LOSSES}")


def _flat_norm(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).norm(dim=1)


def _per_example(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.view(-1, *([1] * (like.dim() - 1)))


def _project(x: torch.Tensor, delta: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """Project ``delta`` onto the L2 ball of radius eps, then ``x + delta`` onto [0, 1]."""
    factor = (eps / _flat_norm(delta).clamp_min(1e-12)).clamp(max=1.0)
    delta = delta * _per_example(factor, delta)
    return (x + delta).clamp(0.0, 1.0) - x


def _input_gradient(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss: str
) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.detach().requires_grad_(True)
    logits = model(x)
    (grad,) = torch.autograd.grad(_loss(logits, y, loss).sum(), x)
    return grad, logits.detach()


def _result(model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor, y: torch.Tensor) -> AttackResult:
    with torch.no_grad():
        pred = model(x_adv).argmax(dim=1)
    return AttackResult(x_adv.detach(), pred != y, pred, _flat_norm(x_adv - x).detach())


STARTS = ("ball", "box", "none")


def _unit(grad: torch.Tensor) -> torch.Tensor:
    """Each example's gradient scaled to L2 norm 1 (zero where it vanishes)."""
    return grad / _per_example(_flat_norm(grad).clamp_min(1e-12), grad)


def _start(x: torch.Tensor, eps: torch.Tensor, start: str, seed: int | None) -> torch.Tensor:
    """PGD's first perturbation (see :func:`pgd_l2`'s ``start``), inside the box [0, 1]."""
    gen = None if seed is None else torch.Generator(device=x.device).manual_seed(seed)
    if start == "ball":
        direction = torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)
        radius = torch.rand(x.shape[0], generator=gen, device=x.device, dtype=x.dtype) * eps
        direction = direction * _per_example(radius / _flat_norm(direction), x)
        return _project(x, direction, eps)
    if start == "box":
        uniform = torch.rand(x.shape, generator=gen, device=x.device, dtype=x.dtype) * 2 - 1
        return (x + uniform * _per_example(eps, x)).clamp(0.0, 1.0) - x
    return torch.zeros_like(x)


def _pgd_iterate(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    delta: torch.Tensor,
    eps: torch.Tensor,
    step_size: torch.Tensor,
    steps: int,
    any_iterate: bool,
    loss: str,
    progress: Progress | None,
) -> torch.Tensor:
    """Run PGD from ``delta`` and return the adversarial inputs: for examples fooled inside the
    ball by some iterate (``any_iterate``), that iterate; for the others, the last one.
    ``delta`` is stepped in place."""
    best = x.clone()
    found = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    everyone = torch.arange(x.shape[0], device=x.device)
    for step in range(steps + 1):
        # counting any iterate, a broken example is done: only the others are stepped on
        # (each example's path is its own, so this changes no result, only the time)
        todo = everyone[~found] if any_iterate else everyone
        if todo.numel() == 0:
            break
        xs, ds = x[todo], delta[todo]
        grad, logits = _input_gradient(model, xs + ds, y[todo], loss)
        if any_iterate:
            inside = _flat_norm(ds) <= eps[todo] * (1 + 1e-6)
            fooled = (logits.argmax(dim=1) != y[todo]) & inside
            best[todo[fooled]] = (xs + ds)[fooled]
            found[todo[fooled]] = True
        if step == steps:
            break
        delta[todo] = _project(xs, ds + _per_example(step_size[todo], xs) * _unit(grad), eps[todo])
        if progress is not None:
            progress((step + 1) / steps)
    if progress is not None and step < steps:
        progress(1.0)  # every example broke before the last step
    # (the projection changes nothing after a step; with steps=0 it brings a "box" start in)
    best[~found] = (x + _project(x, delta, eps))[~found]
    return best


def pgd_l2(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float | torch.Tensor,
    steps: int = 200,
    step_size: float | torch.Tensor = 0.01,
    start: str = "ball",
    any_iterate: bool = True,
    loss: str = "margin",
    seed: int | None = 0,
    progress: Progress | None = None,
) -> AttackResult:
    """L2 PGD with a random start, staying in the ball of radius ``eps`` and in [0, 1].

    Each step moves by ``step_size`` along the normalised gradient, then projects onto the ball
    and then onto the box. By default an example counts as broken if any iterate inside the
    ball was misclassified, and that iterate is returned for it.

    The paper's evaluation code (LConvNet's ``PGDAttacker``, with its defaults) differs in two
    ways, both available here: ``start="box"`` and ``any_iterate=False``. Its loss is the
    Carlini-Wagner margin, which is our ``"margin"``.

    Args:
        model: logits function.
        x: (N, C, H, W) in [0, 1].
        y: (N,) labels (use the clean predictions to attack predictions).
        eps: radius, a float or one per example (N,).
        steps, step_size: number and length of the steps (paper: 200, 0.01 on MNIST); the
            length may be one per example.
        start: ``"ball"``: a random point of the ball (uniform direction, radius uniform in
            [0, eps]); ``"box"``: the paper's, every pixel moved by an independent uniform
            amount in [-eps, eps] and clipped to [0, 1], which lies far outside the L2 ball
            (its norm grows with the square root of the number of pixels), so that the first
            step lands on the ball's surface in a random direction; ``"none"``: the input itself.
        any_iterate: count an example as broken when any iterate inside the ball fooled the
            model (default), or only when the last one does (the paper's).
        loss: ``"margin"`` or ``"ce"``.
        seed: seed of the random start (None: global generator).
        progress: called with the fraction done after each step.
    """
    eps_t = _check(x, y, eps)
    if start not in STARTS:
        raise ValueError(f"unknown PGD start {start!r}; known: {STARTS}")
    step_t = torch.as_tensor(step_size, dtype=x.dtype, device=x.device).expand(x.shape[0])
    x = x.detach()
    delta = _start(x, eps_t, start, seed)
    with frozen_weights(model):
        x_adv = _pgd_iterate(model, x, y, delta, eps_t, step_t, steps, any_iterate, loss, progress)
        return _result(model, x, x_adv, y)


def fgm_l2(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float | torch.Tensor,
    loss: str = "margin",
) -> AttackResult:
    """Fast gradient method in L2: one step of length ``eps`` along the gradient, clipped to
    [0, 1]."""
    eps_t = _check(x, y, eps)
    x = x.detach()
    with frozen_weights(model):
        grad, _ = _input_gradient(model, x, y, loss)
        x_adv = (x + _per_example(eps_t, x) * _unit(grad)).clamp(0.0, 1.0)
        return _result(model, x, x_adv, y)


def minimal_adversarial_distance(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    max_eps: float = 8.0,
    search_steps: int = 8,
    pgd_steps: int = 50,
    seed: int | None = 0,
    progress: Progress | None = None,
) -> AttackResult:
    """Smallest adversarial perturbation PGD finds, by binary search on the radius.

    PGD runs at ``max_eps`` first, then ``search_steps`` times at the midpoint of the current
    bracket, with ``step_size = 2.5 * eps / pgd_steps``. The returned norm (``inf`` where no
    attack succeeded within ``max_eps``) is an upper bound on the distance to the nearest
    adversarial example.
    """
    eps_t = _check(x, y, max_eps)
    lo = torch.zeros_like(eps_t)
    hi = eps_t.clone()
    total = search_steps + 1

    def attack(eps: torch.Tensor, done: int) -> AttackResult:
        def report(f: float) -> None:
            if progress is not None:
                progress((done + f) / total)

        return pgd_l2(
            model, x, y, eps, steps=pgd_steps, step_size=2.5 * eps / pgd_steps, seed=seed, progress=report
        )

    best = attack(hi, 0)
    best.norm = torch.where(best.success, best.norm, torch.full_like(best.norm, float("inf")))
    for i in range(search_steps):
        mid = (lo + hi) / 2
        trial = attack(mid, i + 1)
        better = trial.success & (trial.norm < best.norm)
        best.x_adv[better] = trial.x_adv[better]
        best.prediction[better] = trial.prediction[better]
        best.norm[better] = trial.norm[better]
        best.success |= trial.success
        hi = torch.where(trial.success, mid, hi)
        lo = torch.where(trial.success, lo, mid)
    return best


__getattr__ = deprecated_names(__name__, {"LOSSES": ("bcop.attacks.ATTACK_LOSSES", ATTACK_LOSSES)})

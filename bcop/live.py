"""Live training: several fresh networks trained side by side on the same batches, reporting
losses and per-layer gradient norms as they go (the demo's live experiment; usable from scripts).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from bcop.deprecation import deprecated_names
from bcop.factory import create_model
from bcop.gradnorm import LayerGradNorm, layer_gradient_norms
from bcop.losses import LossFn, make_loss
from bcop.train import TrainConfig, svcm_after_step, train_step

__all__ = ["TrainingSnapshot", "train_classifiers_side_by_side"]


@dataclass
class TrainingSnapshot:
    """Progress of :func:`train_classifiers_side_by_side`.

    Attributes:
        step: optimiser steps done so far (the same for every network).
        total_steps: steps requested.
        losses: per network, the training loss at every step so far.
        accuracies: per network, the training-batch accuracy at every step so far.
        grad_norms: per network, the gradient norms at each layer's input (input to output)
            on the fixed probe batch, measured now.
        seconds: wall-clock time since the start.
    """

    step: int
    total_steps: int
    losses: dict[str, list[float]]
    accuracies: dict[str, list[float]]
    grad_norms: dict[str, list[LayerGradNorm]]
    seconds: float


def _check_run(
    names: Sequence[str], images: torch.Tensor, labels: torch.Tensor, steps: int, batch_size: int, every: int
) -> None:
    if not names:
        raise ValueError("choose at least one network to train")
    if len(images) != len(labels) or len(images) == 0:
        raise ValueError(f"need as many labels as images (got {len(images)} images, {len(labels)} labels)")
    if steps < 0 or every < 1 or not 1 <= batch_size <= len(images):
        raise ValueError(
            f"need steps >= 0, report_every >= 1 and 1 <= batch_size <= {len(images)}; "
            f"got {steps}, {every}, {batch_size}"
        )


def _fresh_models(names: Sequence[str], seed: int) -> dict[str, torch.nn.Module]:
    """Each network initialised from the same seed, without touching the global RNG."""
    models = {}
    for name in names:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            models[name] = create_model(name)
    return models


class _SideBySide:
    """Networks trained together: their optimisers, the probe batch and the history so far."""

    def __init__(
        self, names: Sequence[str], probe: tuple[torch.Tensor, torch.Tensor], steps: int, seed: int
    ) -> None:
        self.config = TrainConfig(model="")
        self.models = _fresh_models(names, seed)
        self.optimizers = {
            name: torch.optim.Adam(model.parameters(), lr=self.config.lr)
            for name, model in self.models.items()
        }
        self.probe = probe
        self.steps = steps
        self.losses: dict[str, list[float]] = {name: [] for name in names}
        self.accuracies: dict[str, list[float]] = {name: [] for name in names}
        self.start = time.perf_counter()

    def train_step(self, step: int, x: torch.Tensor, y: torch.Tensor, loss_fn: LossFn) -> None:
        """Optimiser step ``step`` (counted from 1) of every network on the batch (x, y)."""
        for name, model in self.models.items():
            value, acc = train_step(model, self.optimizers[name], x, y, loss_fn)
            self.losses[name].append(value)
            self.accuracies[name].append(acc)
            svcm_after_step(model, step, self.config.svcm_every, self.config.svcm_rounds)

    def snapshot(self, step: int) -> TrainingSnapshot:
        """The state after ``step`` steps, with gradient norms measured on the probe batch now."""
        norms = {}
        for name, model in self.models.items():
            model.eval()
            norms[name] = layer_gradient_norms(model, *self.probe, objective="margin")
        return TrainingSnapshot(
            step,
            self.steps,
            {k: list(v) for k, v in self.losses.items()},
            {k: list(v) for k, v in self.accuracies.items()},
            norms,
            time.perf_counter() - self.start,
        )


def train_classifiers_side_by_side(
    names: Sequence[str],
    images: torch.Tensor,
    labels: torch.Tensor,
    steps: int,
    batch_size: int = 64,
    loss: str = "hinge",
    report_every: int = 10,
    probe_size: int = 64,
    seed: int = 0,
) -> Iterator[TrainingSnapshot]:
    """Train freshly initialised networks on identical batches and report as training runs.

    Every network gets the same sequence of batches, the same loss and the paper's optimiser
    (Adam, learning rate ``TrainConfig.lr``; SVCM layers projected as
    :func:`~bcop.train.svcm_after_step` does with ``TrainConfig``'s defaults), so differences
    come from the architecture alone. The per-layer gradient norms are those of the logit
    margin of the true class on a fixed probe batch (:func:`~bcop.gradnorm.layer_gradient_norms`).

    Args:
        names: registry names, e.g. ``["bcop-small-mnist", "plain-small-mnist"]``.
        images: (N, C, H, W) training images in [0, 1].
        labels: (N,) integer labels.
        steps: optimiser steps (>= 0).
        batch_size: examples per step, drawn at random (1..N).
        loss: ``"hinge"`` or ``"ce"`` (see :func:`~bcop.train.make_loss`), for every network.
        report_every: steps between snapshots (>= 1).
        probe_size: examples in the probe batch.
        seed: seeds the initialisation (per network) and the batch order.

    Yields:
        A snapshot before the first step, every ``report_every`` steps, and after the last.
    """
    _check_run(names, images, labels, steps, batch_size, report_every)
    loss_fn = make_loss(loss)
    gen = torch.Generator().manual_seed(seed)
    probe = torch.randperm(len(images), generator=gen)[:probe_size]
    run = _SideBySide(names, (images[probe], labels[probe]), steps, seed)
    yield run.snapshot(0)
    for step in range(1, steps + 1):
        batch = torch.randint(len(images), (batch_size,), generator=gen)
        run.train_step(step, images[batch], labels[batch], loss_fn)
        if step % report_every == 0 or step == steps:
            yield run.snapshot(step)


__getattr__ = deprecated_names(
    __name__,
    {"train_side_by_side": ("bcop.live.train_classifiers_side_by_side", train_classifiers_side_by_side)},
)

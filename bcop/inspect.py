"""Measurements for looking inside a network: per-layer spectra, evaluation records, and a
side-by-side training run that reports per-layer gradient norms as it goes.

These are the computations the demo app shows; they live here so that the app, scripts and
tests share one code path.

* :func:`conv_spectra` -- every convolution's exact singular values on the input size it sees.
* :func:`read_eval_results` -- a model folder's ``eval_results.json`` (written by evaluation).
* :func:`train_side_by_side` -- train several fresh networks on the same batches, yielding
  losses and per-layer gradient norms every few steps.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bcop.certify import layer_input_shapes
from bcop.gradnorm import LayerGradNorm, layer_gradient_norms
from bcop.hub import EVAL_RESULTS_FILE, LoadedModel
from bcop.models import create_model
from bcop.orthogonal import conv_singular_values
from bcop.train import TrainConfig, make_loss, train_step

__all__ = [
    "LayerSpectrum",
    "conv_spectra",
    "read_eval_results",
    "TrainingSnapshot",
    "train_side_by_side",
]


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

    Args:
        model: a sequential network (e.g. :class:`~bcop.models.LipschitzNet`).
        input_shape: (C, H, W) of the network input; defaults to ``model.input_shape``.
    """
    shape = input_shape if input_shape is not None else model.input_shape
    spectra = []
    for name, module, in_shape in layer_input_shapes(model, shape):
        if not isinstance(module, nn.Conv2d):
            continue
        h, w = in_shape[-2:]
        if module.padding_mode == "zeros":
            kh, kw = module.kernel_size
            h, w = h + kh - 1, w + kw - 1
        values = conv_singular_values(module.weight.detach(), (h, w))
        spectra.append(LayerSpectrum(name, tuple(in_shape), values))
    return spectra


def read_eval_results(loaded: LoadedModel) -> dict[str, Any] | None:
    """The evaluation record saved beside a model, or None when it has not been evaluated.

    Looks for ``eval_results.json`` in the folder the model was loaded from; for a model
    downloaded from the Hub, also tries to download that file from its repo.

    Returns:
        The parsed JSON: ``{"model", "n_test", "clean", "certified": {"1.58": ...}, "pgd",
        "fgm", "lipschitz", "paper", ...}``.

    Raises:
        ValueError: the file exists but is not valid JSON.
    """
    path = Path(loaded.location) / EVAL_RESULTS_FILE
    if not path.is_file() and loaded.repo_id is not None:
        try:
            from huggingface_hub import hf_hub_download

            path = Path(hf_hub_download(loaded.repo_id, EVAL_RESULTS_FILE))
        except Exception:  # no such file in the repo, or the Hub is unreachable
            return None
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON ({err}); evaluate the model again") from err
    if not isinstance(record, dict):
        raise ValueError(f"{path} should hold a JSON object, got {type(record).__name__}")
    return record


@dataclass
class TrainingSnapshot:
    """Progress of :func:`train_side_by_side`.

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


def train_side_by_side(
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
    (Adam, learning rate ``TrainConfig.lr``; SVCM layers projected every
    ``TrainConfig.svcm_every`` steps), so differences come from the architecture alone. The
    per-layer gradient norms are those of the logit margin of the true class on a fixed probe
    batch (:func:`~bcop.gradnorm.layer_gradient_norms`).

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
    if not names:
        raise ValueError("choose at least one network to train")
    if len(images) != len(labels) or len(images) == 0:
        raise ValueError(f"need as many labels as images (got {len(images)} images, {len(labels)} labels)")
    if steps < 0 or report_every < 1 or not 1 <= batch_size <= len(images):
        raise ValueError(
            f"need steps >= 0, report_every >= 1 and 1 <= batch_size <= {len(images)}; "
            f"got {steps}, {report_every}, {batch_size}"
        )
    defaults = TrainConfig(model="")
    loss_fn = make_loss(loss)
    models, optimizers = {}, {}
    for name in names:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            models[name] = create_model(name)
        optimizers[name] = torch.optim.Adam(models[name].parameters(), lr=defaults.lr)
    gen = torch.Generator().manual_seed(seed)
    probe = torch.randperm(len(images), generator=gen)[:probe_size]
    probe_x, probe_y = images[probe], labels[probe]
    losses: dict[str, list[float]] = {name: [] for name in names}
    accuracies: dict[str, list[float]] = {name: [] for name in names}
    start = time.perf_counter()

    def snapshot(step: int) -> TrainingSnapshot:
        norms = {}
        for name, model in models.items():
            model.eval()
            norms[name] = layer_gradient_norms(model, probe_x, probe_y, objective="margin")
        return TrainingSnapshot(
            step,
            steps,
            {k: list(v) for k, v in losses.items()},
            {k: list(v) for k, v in accuracies.items()},
            norms,
            time.perf_counter() - start,
        )

    yield snapshot(0)
    for step in range(1, steps + 1):
        batch = torch.randint(len(images), (batch_size,), generator=gen)
        x, y = images[batch], labels[batch]
        for name, model in models.items():
            value, acc = train_step(model, optimizers[name], x, y, loss_fn)
            losses[name].append(value)
            accuracies[name].append(acc)
            if defaults.svcm_every and step % defaults.svcm_every == 0:
                model.project_(defaults.svcm_rounds)
        if step % report_every == 0 or step == steps:
            yield snapshot(step)

"""Wasserstein-1 distance estimation with provably Lipschitz critics (the paper's second application).

By Kantorovich-Rubinstein duality ``W1(P, Q) = sup_{||f||_L <= 1} E_P f - E_Q f``. A critic is a
network of the registry (``bcop-small-mnist``, ``rko-small-mnist``, ..., with a one-unit head)
trained to maximise ``E_P f - E_Q f``; divided by its exact Lipschitz bound
(:func:`bcop.certify.lipschitz_bound`) it is 1-Lipschitz, so its gap on held-out samples is a
*lower bound* on W1 up to sampling error. A more expressive 1-Lipschitz class gives a higher
(tighter) estimate.

Note [Three sets of samples]: every pair draws its samples for one of three roles. ``"train"``
batches fit the critic, ``"select"`` samples choose the learning rate, ``"report"`` samples give
the reported estimate. MNIST-based pairs take the three roles from MNIST's train (50k), val
(10k) and test (10k) splits; generated pairs draw fresh samples from a random generator seeded
per role. So a model choice never looks at the samples its estimate is reported on.

The comparison of ``docs/wasserstein.md`` is an experiment built on this module:
``python -m bcop.experiments.wasserstein_table``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import sys
import time
from collections.abc import Callable, Iterator, Sequence

import torch

from bcop.certify import lipschitz_bound
from bcop.data import load_dataset
from bcop.deprecation import deprecated_names
from bcop.factory import create_model
from bcop.models import LipschitzNet, dense_layer, parse_model_name
from bcop.train import train_step

__all__ = [
    "PAIRS",
    "ROLES",
    "Pair",
    "make_pair",
    "translation_delta",
    "make_critic",
    "dual_loss",
    "CriticTrainer",
    "Estimate",
    "estimate",
    "EstimateSnapshot",
    "train_critics_side_by_side",
    "held_out",
]

PAIRS = ("real-vs-generator", "class-vs-class", "translated", "gaussians")
ROLES = ("train", "select", "report")
ROLE_SPLITS = {"train": "train", "select": "val", "report": "test"}
ROLE_SEEDS = {"train": 0, "select": 1, "report": 2}
IMAGE_SHAPE = (1, 28, 28)
# The paper decays RMSprop's learning rate by 0.1 ** (1 / 60) per epoch; an epoch is a pass over
# MNIST's 60k training images (for generated pairs too, so every pair decays alike).
LR_DECAY_PER_EPOCH = 0.1 ** (1 / 60)
EPOCH_IMAGES = 60000

Sampler = Callable[[str, int, torch.Generator], tuple[torch.Tensor, torch.Tensor]]


@dataclasses.dataclass(frozen=True)
class Pair:
    """Two distributions on 1x28x28 images (values not clipped) to compare.

    Attributes:
        name: one of ``PAIRS``.
        label: a readable description, e.g. ``"MNIST digit 3 vs digit 5"``.
        true_w1: the exact W1 distance when known, else None.
        sampler: ``(role, n, generator) -> (x_p, x_q)``, two (n, 1, 28, 28) float tensors; see
            Note [Three sets of samples].
    """

    name: str
    label: str
    true_w1: float | None
    sampler: Sampler

    def sample(self, role: str, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` samples of P and of Q for ``role`` (one of ``ROLES``)."""
        if role not in ROLES:
            raise ValueError(f"unknown sample role {role!r}: expected one of {', '.join(ROLES)}")
        if n < 1:
            raise ValueError(f"number of samples must be at least 1, got {n}")
        return self.sampler(role, n, generator)


@functools.cache
def _mnist(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    return load_dataset("mnist", split).tensors


def _draw(pool: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` rows of ``pool``: without replacement while ``n`` allows, else with."""
    if n <= len(pool):
        return pool[torch.randperm(len(pool), generator=generator)[:n]]
    return pool[torch.randint(len(pool), (n,), generator=generator)]


def translation_delta(norm: float) -> torch.Tensor:
    """A uniform brightness shift (1, 28, 28) of L2 norm ``norm``."""
    return torch.full(IMAGE_SHAPE, norm / math.sqrt(math.prod(IMAGE_SHAPE)))


def _bump(norm: float) -> torch.Tensor:
    """A centred Gaussian bump (1, 28, 28) of standard deviation 5 pixels and L2 norm ``norm``."""
    grid = torch.arange(28, dtype=torch.float32) - 13.5
    bump = torch.exp(-(grid[:, None] ** 2 + grid[None, :] ** 2) / (2 * 5.0**2))[None]
    return bump * (norm / bump.norm())


def _real_vs_generator(generator_folder: str | None) -> Pair:
    from bcop.gan import load_generator

    gen = load_generator() if generator_folder is None else load_generator(generator_folder)

    def sampler(role: str, n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        return _draw(_mnist(ROLE_SPLITS[role])[0], n, g), gen.sample(n, g)

    return Pair("real-vs-generator", "MNIST vs the WGAN-GP generator (wgan-gp-mnist)", None, sampler)


def _class_vs_class(a: int, b: int) -> Pair:
    if not (0 <= a <= 9 and 0 <= b <= 9 and a != b):
        raise ValueError(f"classes must be two different digits 0-9, got {a} and {b}")

    def sampler(role: str, n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = _mnist(ROLE_SPLITS[role])
        return _draw(images[labels == a], n, g), _draw(images[labels == b], n, g)

    return Pair("class-vs-class", f"MNIST digit {a} vs digit {b}", None, sampler)


def _translated(norm: float) -> Pair:
    delta = translation_delta(norm)

    def sampler(role: str, n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        images = _mnist(ROLE_SPLITS[role])[0]
        return _draw(images, n, g), _draw(images, n, g) + delta

    return Pair("translated", f"MNIST vs MNIST + δ (uniform shift, ‖δ‖₂ = {norm:g})", norm, sampler)


def _gaussians(distance: float, sigma: float) -> Pair:
    if sigma <= 0:
        raise ValueError(f"the Gaussians' standard deviation must be positive, got {sigma}")
    mu_b = _bump(distance)

    def sampler(role: str, n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        noise = torch.randn(2, n, *IMAGE_SHAPE, generator=g) * sigma
        return noise[0], noise[1] + mu_b

    label = f"N(0, {sigma:g}² I) vs N(μ, {sigma:g}² I), μ a centred bump with ‖μ‖₂ = {distance:g}"
    return Pair("gaussians", label, distance, sampler)


def make_pair(
    name: str,
    *,
    classes: tuple[int, int] = (3, 5),
    delta_norm: float = 2.0,
    distance: float = 3.0,
    sigma: float = 0.5,
    generator_folder: str | None = None,
) -> Pair:
    """A pair of distributions by name (one of ``PAIRS``).

    Args:
        name: ``"real-vs-generator"``, ``"class-vs-class"``, ``"translated"`` or ``"gaussians"``.
        classes: the two digits of ``class-vs-class``.
        delta_norm: ‖δ‖₂ of ``translated`` (= its W1).
        distance: ||μ_a - μ_b||₂ of ``gaussians`` (= its W1).
        sigma: per-pixel standard deviation of ``gaussians``.
        generator_folder: the generator of ``real-vs-generator`` (default: the shipped one).
    """
    if name == "real-vs-generator":
        return _real_vs_generator(generator_folder)
    if name == "class-vs-class":
        return _class_vs_class(*classes)
    if name == "translated":
        return _translated(delta_norm)
    if name == "gaussians":
        return _gaussians(distance, sigma)
    raise ValueError(f"unknown pair {name!r}: expected one of {', '.join(PAIRS)}")


# --- critics and their training ----------------------------------------------------------------


def make_critic(name: str, seed: int = 0) -> LipschitzNet:
    """A freshly initialised registry network for MNIST with its 10-way head replaced by a
    one-unit head of the same kind (Björck-orthonormal, so a unit-norm row; plain for ``plain``
    networks): ``(N, 1, 28, 28) -> (N, 1)``.

    Args:
        name: an MNIST registry name, e.g. ``"bcop-small-mnist"`` or ``"bcop-small-mnist-relu"``.
        seed: seeds the initialisation (the global random state is left as it was).
    """
    config = parse_model_name(name)
    if config.dataset != "mnist":
        raise ValueError(f"critics compare 1x28x28 images: choose an MNIST network, not {name!r}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        critic = create_model(name)
        critic.logits = dense_layer(config, critic.logits.in_features, 1)
    return critic


def dual_loss(scores: torch.Tensor, is_p: torch.Tensor) -> torch.Tensor:
    """The negated dual objective ``-(mean f(x_p) - mean f(x_q))``.

    Args:
        scores: (N, 1) critic outputs.
        is_p: (N,) 1 for samples of P, 0 for samples of Q (both present).
    """
    scores = scores.squeeze(1)
    return scores[is_p == 0].mean() - scores[is_p == 1].mean()


class CriticTrainer:
    """Maximises ``E_P f - E_Q f`` over a critic with :func:`bcop.train.train_step`.

    RMSprop as the paper, learning rate decayed smoothly by ``LR_DECAY_PER_EPOCH`` per
    ``EPOCH_IMAGES`` images of P; SVCM layers are projected ``svcm_rounds`` rounds after every
    step (the classifier training's default).

    Args:
        critic: from :func:`make_critic`.
        pair: the distributions; training batches are drawn for the ``"train"`` role.
        lr: RMSprop's initial learning rate.
        batch_size: samples of P and of Q per step (each).
        seed: seeds the batch order.
    """

    def __init__(
        self,
        critic: LipschitzNet,
        pair: Pair,
        lr: float,
        batch_size: int = 64,
        seed: int = 0,
        svcm_rounds: int = 1,
    ) -> None:
        if not lr > 0 or batch_size < 1:
            raise ValueError(f"need a positive learning rate and batch size, got {lr} and {batch_size}")
        self.critic, self.pair, self.batch_size, self.svcm_rounds = critic, pair, batch_size, svcm_rounds
        self.optimizer = torch.optim.RMSprop(critic.parameters(), lr=lr)
        gamma = LR_DECAY_PER_EPOCH ** (batch_size / EPOCH_IMAGES)
        self.scheduler = torch.optim.lr_scheduler.ExponentialLR(self.optimizer, gamma)
        self.generator = torch.Generator().manual_seed(1000 * seed + ROLE_SEEDS["train"])
        self.labels = torch.cat([torch.ones(batch_size), torch.zeros(batch_size)]).long()

    def step(self) -> float:
        """One step; returns the batch's dual objective (before the step, at the raw bound)."""
        x_p, x_q = self.pair.sample("train", self.batch_size, self.generator)
        loss, _ = train_step(self.critic, self.optimizer, torch.cat([x_p, x_q]), self.labels, dual_loss)
        self.critic.project_(self.svcm_rounds)
        self.scheduler.step()
        return -loss


@dataclasses.dataclass(frozen=True)
class Estimate:
    """A critic's W1 lower bound on held-out samples.

    Attributes:
        value: ``(mean f(x_p) - mean f(x_q)) / L``, the estimate of the 1-Lipschitz ``f / L``.
        stderr: its standard error, ``sqrt(var_p / n + var_q / n) / L``.
        raw: the gap before dividing by L (what the paper's code reported).
        lipschitz: L, the critic's exact Lipschitz bound.
        n: samples of each distribution.
    """

    value: float
    stderr: float
    raw: float
    lipschitz: float
    n: int


@torch.no_grad()
def estimate(critic: LipschitzNet, x_p: torch.Tensor, x_q: torch.Tensor, chunk: int = 2000) -> Estimate:
    """The bound-divided gap of ``critic`` (eval mode) on samples x_p, x_q: (n, 1, 28, 28)."""
    if len(x_p) < 2 or len(x_q) < 2:
        raise ValueError(f"need at least 2 samples of each distribution, got {len(x_p)} and {len(x_q)}")
    critic.eval()
    f_p = torch.cat([critic(c) for c in x_p.split(chunk)]).squeeze(1).double()
    f_q = torch.cat([critic(c) for c in x_q.split(chunk)]).squeeze(1).double()
    L = lipschitz_bound(critic)
    raw = float(f_p.mean() - f_q.mean())
    se = math.sqrt(float(f_p.var()) / len(f_p) + float(f_q.var()) / len(f_q))
    return Estimate(raw / L, se / L, raw, L, min(len(f_p), len(f_q)))


def held_out(pair: Pair, role: str, n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``role`` samples (``"select"`` or ``"report"``) of a pair for a seed, reproducibly."""
    return pair.sample(role, n, torch.Generator().manual_seed(1000 * seed + ROLE_SEEDS[role]))


# --- side by side (the demo and the benchmark) ---------------------------------------------------


@dataclasses.dataclass
class EstimateSnapshot:
    """Progress of :func:`train_critics_side_by_side`.

    Attributes:
        step: steps done by every critic.
        total_steps: steps requested.
        steps: the steps at which estimates were taken.
        estimates: per critic, the :class:`Estimate` at each of ``steps`` (``"select"`` samples).
        seconds: wall-clock time since the start.
    """

    step: int
    total_steps: int
    steps: list[int]
    estimates: dict[str, list[Estimate]]
    seconds: float


DEFAULT_LR = 1e-3


def train_critics_side_by_side(
    names: Sequence[str],
    pair: Pair,
    steps: int,
    batch_size: int = 64,
    lr: float = DEFAULT_LR,
    report_every: int = 25,
    probe_size: int = 1000,
    seed: int = 0,
) -> Iterator[EstimateSnapshot]:
    """Train critics on identical batches, estimating W1 on ``probe_size`` held-out
    ``"select"`` samples as training runs.

    Args:
        names: MNIST registry names (see :func:`make_critic`).
        pair: from :func:`make_pair`.
        steps: steps per critic (>= 0).
        batch_size: samples of P and of Q per step.
        lr: RMSprop's learning rate for every critic.
        report_every: steps between estimates (>= 1).
        probe_size: held-out samples of each distribution per estimate (>= 2).
        seed: seeds initialisation and batches.

    Yields:
        A snapshot before the first step, every ``report_every`` steps and after the last.
    """
    if not names:
        raise ValueError("choose at least one critic")
    if steps < 0 or report_every < 1 or probe_size < 2:
        raise ValueError(
            "need steps >= 0, report_every >= 1 and probe_size >= 2, "
            f"got {steps}, {report_every}, {probe_size}"
        )
    trainers = {name: CriticTrainer(make_critic(name, seed), pair, lr, batch_size, seed) for name in names}
    probe = held_out(pair, "select", probe_size, seed)
    history: dict[str, list[Estimate]] = {name: [] for name in names}
    at: list[int] = []
    start = time.perf_counter()

    def snapshot(step: int) -> EstimateSnapshot:
        at.append(step)
        for name, trainer in trainers.items():
            history[name].append(estimate(trainer.critic, *probe))
        return EstimateSnapshot(
            step, steps, list(at), {k: list(v) for k, v in history.items()}, time.perf_counter() - start
        )

    yield snapshot(0)
    for step in range(1, steps + 1):
        for trainer in trainers.values():
            trainer.step()
        if step % report_every == 0 or step == steps:
            yield snapshot(step)


__getattr__ = deprecated_names(
    __name__,
    {"train_side_by_side": ("bcop.wasserstein.train_critics_side_by_side", train_critics_side_by_side)},
)

if __name__ == "__main__":
    sys.exit("the comparison table moved: python -m bcop.experiments.wasserstein_table --help")

"""A WGAN-GP generator for MNIST: ``python -m bcop.gan train --out runs/wgan-gp-mnist --steps N``.

The generator is the "Q" of the real-vs-generated pair in :mod:`bcop.wasserstein`. Its recipe is
the paper's code's (Gulrajani et al.'s WGAN-GP): gradient-penalty weight 50, Adam 2e-4 with
betas (0.5, 0.999), batch 64, five critic steps per generator step. Both networks are small
DCGAN-style ones sized for 28x28 images on one CPU thread.

``train`` writes a resumable state (both networks, both optimisers, the random generator) to
``OUT/state/`` every ``--save-every`` generator steps and at the end, and appends to
``OUT/metrics.json``; running the same command with a larger ``--steps`` continues.
``export`` writes ``checkpoints/wgan-gp-mnist/`` in Hub layout: ``config.json`` with
``"kind": "generator"``, ``model.safetensors``, a card and a PNG grid of samples.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from huggingface_hub import ModelCard, ModelCardData
from PIL import Image
from safetensors.torch import load_file
from torch import nn

from bcop.cards import HUB_DATASETS
from bcop.certify import certify
from bcop.checkpoint import check_resumable, load_state, save_state
from bcop.data import load_dataset
from bcop.factory import create_model
from bcop.hub import GENERATOR_KIND, LIBRARY_NAME, checkpoints_dir, fetch_folder, save_folder

__all__ = [
    "GENERATOR_NAME",
    "GeneratorConfig",
    "Generator",
    "Critic",
    "gradient_penalty",
    "GanConfig",
    "train_gan",
    "save_generator",
    "load_generator",
    "sample_grid",
    "main",
]

GENERATOR_NAME = "wgan-gp-mnist"
SCHEMA_VERSION = 2
CONFIG_FILE, WEIGHTS_FILE, CARD_FILE, GRID_FILE = (
    "config.json",
    "model.safetensors",
    "README.md",
    "samples.png",
)


@dataclasses.dataclass(frozen=True)
class GeneratorConfig:
    """Shape of the generator: latent size and channel width (the 14x14 stage has ``width``
    channels, the 7x7 stage ``2 * width``)."""

    latent_dim: int = 64
    width: int = 48

    def __post_init__(self) -> None:
        if self.latent_dim < 1 or self.width < 1:
            raise ValueError(f"latent_dim and width must be positive, got {self.latent_dim}, {self.width}")


class Generator(nn.Module):
    """z: (N, latent_dim) standard normal -> images (N, 1, 28, 28) in [0, 1] (a sigmoid)."""

    def __init__(self, config: GeneratorConfig = GeneratorConfig()) -> None:
        super().__init__()
        self.config = config
        w = config.width
        self.net = nn.Sequential(
            nn.Linear(config.latent_dim, 2 * w * 7 * 7),
            nn.BatchNorm1d(2 * w * 7 * 7),
            nn.ReLU(),
            nn.Unflatten(1, (2 * w, 7, 7)),
            nn.ConvTranspose2d(2 * w, w, 4, stride=2, padding=1),
            nn.BatchNorm2d(w),
            nn.ReLU(),
            nn.ConvTranspose2d(w, 1, 4, stride=2, padding=1),
            nn.Sigmoid(),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` images (n, 1, 28, 28) in [0, 1], in eval mode (BatchNorm's running statistics)."""
        if n < 1:
            raise ValueError(f"number of samples must be at least 1, got {n}")
        was_training = self.training
        self.eval()
        z = torch.randn(n, self.config.latent_dim, generator=generator)
        images = self(z.to(next(self.parameters()).device))
        self.train(was_training)
        return images


class Critic(nn.Module):
    """WGAN-GP critic (no normalisation, as the gradient penalty requires): (N, 1, 28, 28) -> (N,)."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, width, 4, stride=2, padding=1),
            nn.LeakyReLU(0.2),
            nn.Conv2d(width, 2 * width, 4, stride=2, padding=1),
            nn.LeakyReLU(0.2),
            nn.Flatten(),
            nn.Linear(2 * width * 7 * 7, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(1)


def gradient_penalty(critic: nn.Module, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """``mean (||grad f(x_hat)||_2 - 1)^2`` at random points ``x_hat`` between real and fake
    (N, C, H, W) images, differentiable with respect to the critic's parameters."""
    alpha = torch.rand(real.shape[0], 1, 1, 1, device=real.device)
    x_hat = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
    (grad,) = torch.autograd.grad(critic(x_hat).sum(), x_hat, create_graph=True)
    return ((grad.flatten(1).norm(dim=1) - 1) ** 2).mean()


@dataclasses.dataclass
class GanConfig:
    """A WGAN-GP run; defaults are the paper's code's recipe."""

    steps: int = 10000
    batch_size: int = 64
    lr: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999
    gp_weight: float = 50.0
    n_critic: int = 5
    latent_dim: int = 64
    width: int = 48
    seed: int = 0
    save_every: int = 250
    out: str = "runs/wgan-gp-mnist"


def _adam(model: nn.Module, cfg: GanConfig) -> torch.optim.Adam:
    return torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))


def _critic_step(
    gen: Generator, critic: Critic, opt: torch.optim.Optimizer, real: torch.Tensor, cfg: GanConfig
) -> tuple[float, float]:
    """One critic update; returns (E_real f - E_fake f, gradient penalty)."""
    with torch.no_grad():
        fake = gen(torch.randn(real.shape[0], cfg.latent_dim))
    gap = critic(real).mean() - critic(fake).mean()
    penalty = gradient_penalty(critic, real, fake)
    opt.zero_grad(set_to_none=True)
    (cfg.gp_weight * penalty - gap).backward()
    opt.step()
    return float(gap.detach()), float(penalty.detach())


def train_gan(cfg: GanConfig, log_every: int = 50) -> dict[str, Any]:
    """Train (or continue) a WGAN-GP run; returns the last metrics record."""
    out = Path(cfg.out)
    torch.manual_seed(cfg.seed)
    images = load_dataset("mnist", "train+val").tensors[0]
    gen = Generator(GeneratorConfig(cfg.latent_dim, cfg.width))
    critic = Critic(cfg.width)
    opt_g, opt_c = _adam(gen, cfg), _adam(critic, cfg)
    step, record = 0, {}
    state = out / "state"
    if (state / "generator" / "state.json").is_file():
        check_resumable(state / "generator", dataclasses.asdict(cfg), ("steps", "out"))
        step = load_state(state / "critic", critic, opt_c)["step"]
        step = load_state(state / "generator", gen, opt_g)["step"]
    metrics_path = out / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else []
    start = time.time()
    while step < cfg.steps:
        for _ in range(cfg.n_critic):
            real = images[torch.randint(len(images), (cfg.batch_size,))]
            gap, penalty = _critic_step(gen, critic, opt_c, real, cfg)
        loss_g = -critic(gen(torch.randn(cfg.batch_size, cfg.latent_dim))).mean()
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
        step += 1
        if step % log_every == 0 or step == cfg.steps:
            record = {"step": step, "critic_gap": gap, "penalty": penalty, "seconds": time.time() - start}
            metrics.append(record)
            print(json.dumps(record), flush=True)
        if step % cfg.save_every == 0 or step == cfg.steps:
            info = {"step": step, "config": dataclasses.asdict(cfg)}
            save_state(state / "critic", critic, opt_c, info)
            save_state(state / "generator", gen, opt_g, info)
            metrics_path.write_text(json.dumps(metrics, indent=1))
    return record


# --- the shipped checkpoint ------------------------------------------------------------------


def save_generator(gen: Generator, folder: str | Path, card: str | None = None) -> Path:
    """Write ``config.json`` (``"kind": "generator"``), ``model.safetensors`` and the card."""
    config = {
        "kind": GENERATOR_KIND,
        "schema_version": SCHEMA_VERSION,
        "model_name": GENERATOR_NAME,
        "library_name": LIBRARY_NAME,
        "output_shape": [1, 28, 28],
        **dataclasses.asdict(gen.config),
    }
    return save_folder(folder, config, gen, card)


def load_generator(name_or_repo_or_path: str | Path = GENERATOR_NAME, **hub_options: Any) -> Generator:
    """A generator from a folder, a Hub repo id or its name (``"wgan-gp-mnist"``: the Hub repo of
    :func:`bcop.hub.hub_owner`, else ``checkpoints/wgan-gp-mnist``), found as
    :func:`bcop.create_model` finds a trained classifier; in eval mode.

    Args:
        name_or_repo_or_path: where the generator is.
        **hub_options: ``revision``, ``cache_dir``, ``token``, ``local_files_only``,
            ``force_download`` (see :func:`bcop.hub.fetch_folder`).

    Raises:
        FileNotFoundError: the folder lacks config.json or model.safetensors.
        ValueError: the folder holds something other than a generator.
    """
    folder, _ = fetch_folder(name_or_repo_or_path, known=(GENERATOR_NAME,), **hub_options)
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if not (folder / name).is_file():
            raise FileNotFoundError(
                f"{folder} has no {name}: train and export a generator with "
                "`python -m bcop.gan train` then `python -m bcop.gan export`"
            )
    config = json.loads((folder / CONFIG_FILE).read_text())
    if not isinstance(config, dict) or config.get("kind") != GENERATOR_KIND:
        kind = config.get("kind", "classifier") if isinstance(config, dict) else "not a JSON object"
        raise ValueError(f"{folder / CONFIG_FILE} describes a {kind}, not a generator")
    fields = {f.name for f in dataclasses.fields(GeneratorConfig)}
    gen = Generator(GeneratorConfig(**{k: v for k, v in config.items() if k in fields}))
    gen.load_state_dict(load_file(str(folder / WEIGHTS_FILE)))
    return gen.eval()


def sample_grid(images: torch.Tensor, columns: int = 10) -> Image.Image:
    """Tile images (N, 1, H, W) in [0, 1] into one grayscale PIL image, ``columns`` per row."""
    n, _, h, w = images.shape
    rows = -(-n // columns)
    grid = np.zeros((rows * h, columns * w), dtype=np.uint8)
    pixels = (images[:, 0].clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    for i in range(n):
        r, c = divmod(i, columns)
        grid[r * h : (r + 1) * h, c * w : (c + 1) * w] = pixels[i]
    return Image.fromarray(grid, mode="L")


def generator_quality(
    gen: Generator, n: int = 10000, threshold: float = 1.0, seed: int = 0
) -> dict[str, Any]:
    """Quality figures computable without FID's weights, from our best classifier
    (``bcop-large-mnist``): the class histogram of ``n`` samples and the share whose predicted
    class is certified at L2 radius ``threshold`` (a confident, unambiguous digit), beside the
    same share on MNIST's test images.

    Returns:
        ``{"n", "classifier", "threshold", "class_share": [10 floats in [0, 1]],
        "confident_share", "confident_share_real"}``.
    """
    classifier = create_model("bcop-large-mnist", pretrained=True)
    fake = gen.sample(n, torch.Generator().manual_seed(seed))
    real = load_dataset("mnist", "test").tensors[0][:n]
    shares = []
    for images in (fake, real):
        certs = [certify(classifier, chunk) for chunk in images.split(500)]
        radius = torch.cat([c.radius for c in certs])
        shares.append(float((radius >= threshold).float().mean()))
    prediction = torch.cat([certify(classifier, chunk).prediction for chunk in fake.split(500)])
    histogram = torch.bincount(prediction, minlength=10).float() / n
    return {
        "n": n,
        "classifier": "bcop-large-mnist",
        "threshold": threshold,
        "class_share": [round(float(v), 4) for v in histogram],
        "confident_share": shares[0],
        "confident_share_real": shares[1],
    }


def _training_seconds(metrics: list[dict[str, Any]]) -> float:
    """Total training time over every session of a run (``seconds`` restarts at each resume)."""
    total, last = 0.0, 0.0
    for record in metrics:
        if record["seconds"] < last:
            total += last
        last = record["seconds"]
    return total + last


_CARD_DATA = ModelCardData(
    model_name=GENERATOR_NAME,
    library_name=LIBRARY_NAME,
    pipeline_tag="unconditional-image-generation",
    license="mit",
    datasets=[HUB_DATASETS["mnist"][0]],
    tags=["wgan-gp", "mnist", "wasserstein"],
)
"""The generator card's metadata, which the Hub indexes."""


def _card(cfg: dict[str, Any], step: int, seconds: float, quality: dict[str, Any]) -> str:
    """The generator's model card: metadata the Hub indexes (built with ``ModelCardData``, as
    the classifiers' in :mod:`bcop.cards`), then training, quality and use."""
    command = (
        "OMP_NUM_THREADS=1 python -m bcop.gan train --out runs/wgan-gp-mnist "
        f"--steps {step} --width {cfg['width']} --latent-dim {cfg['latent_dim']} --seed {cfg['seed']}"
    )
    hist = " | ".join(f"{100 * v:.1f}" for v in quality["class_share"])
    return str(
        ModelCard(
            f"""---
{_CARD_DATA.to_yaml()}
---

# wgan-gp-mnist

A WGAN-GP generator of 28x28 MNIST digits (pixel values in [0, 1]), the generated side of the
real-vs-generated pair on which `bcop.wasserstein` compares Lipschitz critics. It is not a
classifier and is not in `bcop.list_models()`.

![samples](samples.png)

## Training

{step} generator steps ({cfg["n_critic"]} critic steps each) of WGAN-GP on MNIST's 60k training
images: gradient-penalty weight {cfg["gp_weight"]:g}, Adam {cfg["lr"]:g} with betas
({cfg["beta1"]}, {cfg["beta2"]}), batch {cfg["batch_size"]}; generator width {cfg["width"]}, latent
size {cfg["latent_dim"]}; {seconds / 60:.0f} minutes on one CPU thread of a shared machine. The
weights are the run's state saved at step {step}; nothing in the recipe depends on the total
number of steps, so this command reproduces them:

```
{command}
python -m bcop.gan export --run runs/wgan-gp-mnist
```

## Quality

FID's Inception weights cannot be had here; instead our best classifier, `bcop-large-mnist`,
labels {quality["n"]} samples (seed 0). A sample counts as a confident digit when the
classifier's prediction is certified at L2 radius {quality["threshold"]:g} (its logit margin is at
least {quality["threshold"]:g} x sqrt(2) x L): an unambiguous, typical digit.

- share of samples whose predicted digit is certified at L2 radius {quality["threshold"]:g}:
  **{100 * quality["confident_share"]:.1f}%** (MNIST test images:
  {100 * quality["confident_share_real"]:.1f}%);
- predicted class histogram (percent, digits 0-9): {hist} (MNIST is about 10% each).

## Use

```python
from bcop.gan import load_generator
images = load_generator().sample(16)  # (16, 1, 28, 28) in [0, 1]
```
"""
        )
    )


def export_run(run: Path, to: Path | None = None) -> Path:
    """Write a run's latest saved generator as a checkpoint folder with card, samples grid and
    quality figures; returns the folder."""
    state = run / "state" / "generator"
    if not (state / "state.json").is_file():
        raise FileNotFoundError(
            f"{run} has no saved state: train first with `python -m bcop.gan train --out {run}`"
        )
    info = json.loads((state / "state.json").read_text())
    cfg = info["config"]
    gen = Generator(GeneratorConfig(cfg["latent_dim"], cfg["width"]))
    gen.load_state_dict(
        {k[6:]: v for k, v in load_file(str(state / "state.safetensors")).items() if k.startswith("model.")}
    )
    metrics = json.loads((run / "metrics.json").read_text())
    quality = generator_quality(gen)
    folder = save_generator(
        gen,
        to or checkpoints_dir() / GENERATOR_NAME,
        _card(cfg, info["step"], _training_seconds(metrics), quality),
    )
    sample_grid(gen.sample(100, torch.Generator().manual_seed(0))).save(folder / GRID_FILE)
    (folder / "quality.json").write_text(json.dumps({"step": info["step"], **quality}, indent=2) + "\n")
    return folder


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bcop.gan", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train or continue a WGAN-GP run")
    for field in dataclasses.fields(GanConfig):
        train.add_argument(
            f"--{field.name.replace('_', '-')}", type=type(field.default), default=field.default
        )
    export = sub.add_parser("export", help="write the checkpoint folder (weights, config, card, samples)")
    export.add_argument("--run", default="runs/wgan-gp-mnist", help="the run folder written by train")
    export.add_argument("--to", default=None, help="destination (default checkpoints/wgan-gp-mnist)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "train":
        cfg = GanConfig(**{k: v for k, v in vars(args).items() if k != "command"})
        train_gan(cfg)
        return 0
    export_run(Path(args.run), Path(args.to) if args.to else None)
    return 0


if __name__ == "__main__":
    sys.exit(main())

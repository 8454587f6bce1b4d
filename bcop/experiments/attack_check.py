"""An attack independent of the evaluation against every certificate of a model:
``python -m bcop.experiments.attack_check [MODEL ...]``.

For each model (a folder, a registry name or a Hub repo id; by default every later family's
checkpoint in ``checkpoints/``), on ``n`` test images evenly spaced through the test set (as
:func:`bcop.evaluate.pgd_sample` picks them): the certified radius of every correctly classified
image, ``margin / (sqrt(2) L)`` with the network's bound L, against the smallest adversarial
perturbation :func:`bcop.attacks.minimal_adversarial_distance` finds from ``restarts`` random
starts (the smallest over them). The certificate is a lower bound on the distance to the
decision boundary and the attack's distance an upper bound, so a found distance below a radius
would show the bound unsound. The check passes when no certificate is beaten and the attack
found an adversarial example for every correctly classified image (every distance finite).

It writes the figures to a JSON file and a section of ``docs/successors.md``, and exits with
status 1 when a check fails.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from bcop.attacks import minimal_adversarial_distance
from bcop.certify import certified_radius, full_float32, lipschitz_bound
from bcop.data import load_mnist
from bcop.evaluate import pgd_sample
from bcop.experiments.successors_table import write_section
from bcop.hub import checkpoints_dir, load_model, local_checkpoints
from bcop.models import SUCCESSORS, LipschitzNet, parse_model_name

__all__ = ["CheckConfig", "check_model", "record", "render", "main"]

SECTION = "## Independent attack check"


@dataclasses.dataclass(frozen=True)
class CheckConfig:
    """How hard the attack tries: ``restarts`` binary searches over the radius up to ``max_eps``
    (``search_steps`` halvings, ``pgd_steps`` PGD steps each), each from its own random start."""

    n: int = 500
    restarts: int = 3
    max_eps: float = 8.0
    search_steps: int = 8
    pgd_steps: int = 50
    batch_size: int = 250


@full_float32()
def check_model(
    model: LipschitzNet,
    x: torch.Tensor,
    y: torch.Tensor,
    cfg: CheckConfig = CheckConfig(),
    progress: bool = False,
) -> dict[str, Any]:
    """The check on the images ``x`` (N, C, H, W) with labels ``y``: counts, the smallest ratio of
    found distance to certified radius, and ``passed``.

    Misclassified images are not attacked (their radius is 0 and so is their distance).
    """
    model.eval()
    start = time.perf_counter()
    bound = lipschitz_bound(model)
    with torch.no_grad():
        logits = torch.cat([model(xb) for xb in x.split(cfg.batch_size)])
    radius = certified_radius(logits, bound, y)
    correct = logits.argmax(1) == y
    distance = torch.where(correct, float("inf"), 0.0)
    idx = correct.nonzero().squeeze(1)
    bar = tqdm(total=cfg.restarts * len(idx.split(cfg.batch_size)), desc="attack", disable=not progress)
    for seed in range(cfg.restarts):
        for part in idx.split(cfg.batch_size):
            found = minimal_adversarial_distance(
                model, x[part], y[part], cfg.max_eps, cfg.search_steps, cfg.pgd_steps, seed=seed
            ).norm
            distance[part] = torch.minimum(distance[part], found)
            bar.update()
    bar.close()
    certified = correct & (radius > 0)
    ratios = (distance[certified] / radius[certified]).tolist()
    beaten = int((distance[certified] < radius[certified]).sum())
    finite = distance[correct & distance.isfinite()]
    unfound = int(correct.sum()) - len(finite)
    return {
        "n": len(y),
        "lipschitz": bound,
        "correct": int(correct.sum()),
        "certified_1.58": int((correct & (radius >= 1.58)).sum()),
        "found": len(finite),
        "beaten": beaten,
        "min_ratio": min(ratios) if ratios else None,
        "median_ratio": statistics.median(ratios) if ratios else None,
        "mean_radius": float(radius[correct].mean()) if correct.any() else None,
        "mean_distance": float(finite.mean()) if len(finite) else None,
        "passed": beaten == 0 and unfound == 0,
        "seconds": time.perf_counter() - start,
    }


def render(results: dict[str, dict[str, Any]], cfg: CheckConfig) -> str:
    """The Markdown section: how the attack ran, then one row per model."""
    lines = [
        f"`python -m bcop.experiments.attack_check` on {cfg.n} MNIST test images evenly spaced through "
        f"the test set: for each correctly classified image, the smallest adversarial perturbation "
        f"found by {cfg.restarts} binary searches over the radius (up to {cfg.max_eps:g}, "
        f"{cfg.search_steps} halvings of {cfg.pgd_steps} PGD steps each, step 2.5 eps / steps, one random "
        "start each; the smallest kept), set against the image's certified radius. *beaten*: images "
        "whose found distance is below their certified radius (a bound that is not sound would show "
        "here); *found*: correctly classified images with a finite distance; *distance / radius*: "
        "over the certified images, how far above its certificate the attack stays.",
        "",
        "| model | bound | correct | certified at 1.58 | found | beaten | distance / radius (min, median) "
        "| mean radius | mean distance | passed |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        ratios = "" if r["min_ratio"] is None else f"{r['min_ratio']:.3f}, {r['median_ratio']:.3f}"
        lines.append(
            f"| {name} | {r['lipschitz']:.7g} | {r['correct']} / {r['n']} | {r['certified_1.58']} | "
            f"{r['found']} / {r['correct']} | {r['beaten']} | {ratios} | {r['mean_radius']:.3f} | "
            f"{r['mean_distance']:.3f} | {'yes' if r['passed'] else '**no**'} |"
        )
    return "\n".join(lines) + "\n"


def later_family_checkpoints() -> list[str]:
    """The folders of the later families' (:data:`bcop.models.SUCCESSORS`) embedded checkpoints."""
    return [str(checkpoints_dir() / n) for n in local_checkpoints() if _family(n) in SUCCESSORS]


def _family(name: str) -> str | None:
    try:
        return parse_model_name(name).conv
    except ValueError:  # not a classifier of the registry (e.g. the WGAN generator)
        return None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bcop.experiments.attack_check",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    defaults = CheckConfig()
    add = parser.add_argument
    add(
        "models",
        nargs="*",
        help="folders, registry names or Hub repo ids (default: later families' checkpoints)",
    )
    add("--n", type=int, default=defaults.n, help="test images, evenly spaced")
    add("--restarts", type=int, default=defaults.restarts, help="random starts per image")
    add("--max-eps", type=float, default=defaults.max_eps, help="largest radius searched")
    add("--search-steps", type=int, default=defaults.search_steps, help="halvings of the radius bracket")
    add("--pgd-steps", type=int, default=defaults.pgd_steps, help="PGD steps per radius")
    add("--batch-size", type=int, default=defaults.batch_size, help="images per attack")
    add("--results", default="docs/attack_check.json", help="JSON file written (other models in it kept)")
    add("--page", default="docs/successors.md", help='page whose section is rewritten ("": none)')
    add("--data-root", default=None, help="data folder (default: $BCOP_DATA or ~/.cache/bcop)")
    add("--threads", type=int, default=0, help="torch CPU threads (0: torch's choice)")
    return parser


def record(path: Path, cfg: CheckConfig, name: str, result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Add ``name``'s result to the results file and return every model's.

    The file is read again just before it is written, so checks of other models that finished
    meanwhile (another process, the same file) are kept rather than overwritten.
    """
    saved = json.loads(path.read_text()) if path.is_file() else {}
    results = {**saved.get("models", {}), name: result}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"config": dataclasses.asdict(cfg), "models": results}, indent=1) + "\n")
    return results


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point: 0 when every model passes, 1 otherwise."""
    args = _parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = CheckConfig(args.n, args.restarts, args.max_eps, args.search_steps, args.pgd_steps, args.batch_size)
    models = args.models or later_family_checkpoints()
    if not models:
        raise SystemExit("no model to check: no later family's checkpoint in checkpoints/, and none given")
    test = load_mnist("test", args.data_root)
    pick = pgd_sample(len(test), cfg.n)
    x, y = test.tensors[0][pick], test.tensors[1][pick]
    path = Path(args.results)
    saved = json.loads(path.read_text()) if path.is_file() else {}
    if saved and saved.get("config") != dataclasses.asdict(cfg):
        raise SystemExit(f"{path} holds a check with other settings: pass another --results")
    results: dict[str, dict[str, Any]] = saved.get("models", {})
    for target in models:
        loaded = load_model(target)
        name = loaded.model.config.name
        print(f"{name}: attacking {cfg.n} test images, {cfg.restarts} restarts", file=sys.stderr)
        result = check_model(loaded.model, x, y, cfg, progress=True)
        print(json.dumps({"model": name, **result}), flush=True)
        results = record(path, cfg, name, result)
    if args.page:
        write_section(args.page, SECTION, render(results, cfg))
    return 0 if all(results[n]["passed"] for n in results) else 1


if __name__ == "__main__":
    sys.exit(main())

"""Evaluate a model: ``python -m bcop.evaluate MODEL_OR_PATH [options]``.

Measures, on the MNIST (or CIFAR-10) test set: clean accuracy, certified accuracy at
``--eps`` and over a curve of radii, the network's Lipschitz bound, and empirical robust accuracy
under L2 PGD (200 steps of 0.01 with a random start, in the box [0, 1], as in the paper) and
FGM. Writes ``OUT/eval_results.json`` and ``OUT/eval_results.md``.

PGD runs twice on the same images: our attack (a random start inside the ball; an example is
broken if any iterate fools the model) and the paper's (LConvNet's ``PGDAttacker``: every pixel
first moved by a uniform amount in [-eps, eps], far outside the L2 ball, so that the first step
lands on the ball's surface in a random direction; only the last iterate counts). Both maximise
the logit margin (ours another loss with ``--attack-loss``). 200 steps of 0.01 cannot turn the
paper's start round towards the worst direction, so its attack is weaker, and its figures are
the ones to set beside the paper's.

PGD is the expensive part (200 forward/backward passes per example), so it runs on
``--pgd-limit`` test examples evenly spaced through the test set (all by default). Examples
already certified at ``eps`` are provably robust and are counted as such without being
attacked: this changes no number, only the time.

With ``--export FOLDER`` the model is also written there in Hub layout, with the results and a
model card (``README.md``) that puts our numbers beside the paper's and says how the model was
trained (from ``--train-run``, the training output folder).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import TensorDataset
from tqdm import tqdm

from bcop.attacks import ATTACK_LOSSES, AttackResult, fgm_l2, pgd_l2
from bcop.cards import model_card, refresh_folder, results_table, summary_table
from bcop.certify import certified_accuracy_percent, certified_radius, full_float32, lipschitz_bound
from bcop.cli import add_options, from_args, option
from bcop.data import load_dataset, make_loader
from bcop.hardware import describe_hardware
from bcop.hub import LoadedModel, load_model, save_model
from bcop.models import LipschitzNet
from bcop.results import (
    PAPER_RESULTS,
    RESULTS_SCHEMA_VERSION,
    collect_results,
    eps_key,
    hardware_segments,
    percent,
    read_results,
    selection_description,
    write_results,
)
from bcop.train import TrainConfig

__all__ = ["EvalConfig", "evaluate", "complete_curve", "pgd_sample", "main"]

# LConvNet's PGDAttacker as the paper's evaluation ran it: the Carlini-Wagner margin loss,
# uniform per-pixel start in [-eps, eps], only the last iterate counted.
PAPER_PGD: dict[str, Any] = {"start": "box", "any_iterate": False, "loss": "margin"}
# The certified curve's radii: the paper's (1.58 on MNIST) and the CIFAR-10 literature's 36/255
# and 72/255, which the successors' papers report.
CURVE = (0.0, 36 / 255, 0.25, 72 / 255, 0.5, 0.75, 1.0, 1.25, 1.5, 1.58, 1.75, 2.0, 2.5, 3.0)


def default_device() -> str:
    """``"cuda"`` when a GPU is available, else ``"cpu"``."""
    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """How a model is evaluated: the paper's protocol on the test set by default."""

    eps: float = option(1.58, "L2 radius of the headline certified and robust accuracies")
    pgd_limit: int | None = option(
        None, "attack only N test images, evenly spaced through the set", shown="all"
    )
    pgd_steps: int = option(200, "PGD steps")
    pgd_step_size: float = option(0.01, "length of each PGD step")
    attack_loss: str = option(
        "margin", "what PGD and FGM maximise: the logit margin, or cross-entropy", choices=ATTACK_LOSSES
    )
    batch_size: int = option(500, "test images per forward pass")
    device: str | None = option(None, "torch device, e.g. cpu or cuda", shown="cuda when available, else cpu")
    data_root: str | None = option(None, "data folder", shown="$BCOP_DATA or ~/.cache/bcop")


def _robust_accuracy(
    model: LipschitzNet,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    lipschitz: float,
    attack: Callable[[torch.Tensor, torch.Tensor], AttackResult],
    batch_size: int,
    desc: str | None = None,
) -> tuple[float, int]:
    """Fraction of ``(x, y)`` still classified correctly after ``attack(x, y)``; and how many
    were actually attacked (correct but not certified at ``eps``). With ``desc``, a progress
    bar over the batches (on stderr) names the attack and shows the robust accuracy so far."""
    robust = attacked = 0
    batches = range(0, len(y), batch_size)
    bar = tqdm(batches, desc=desc, unit="batch", disable=desc is None, file=sys.stderr)
    for start in bar:
        xb, yb = x[start : start + batch_size], y[start : start + batch_size]
        with torch.no_grad():
            logits = model(xb)
        correct = logits.argmax(dim=1) == yb
        certified = correct & (certified_radius(logits, lipschitz, yb) >= eps)
        todo = correct & ~certified
        robust += int(certified.sum())
        if todo.any():
            attacked += int(todo.sum())
            robust += int((~attack(xb[todo], yb[todo]).success).sum())
        bar.set_postfix(robust=f"{100 * robust / min(start + batch_size, len(y)):.2f}%", attacked=attacked)
    return robust / len(y), attacked


def pgd_sample(n_test: int, n: int) -> torch.Tensor:
    """Indices of the ``n`` test examples PGD attacks: evenly spaced through the test set
    (every 10th of 10,000 for ``n = 1000``). MNIST's test set is not shuffled and its first
    images are harder than the rest, so the first ``n`` would bias a partial evaluation."""
    if not 0 < n <= n_test:
        raise ValueError(f"can attack between 1 and {n_test} test examples, not {n}")
    return torch.arange(n) * n_test // n


def _certify_test_set(
    model: LipschitzNet, test: TensorDataset, cfg: EvalConfig, lipschitz: float, device: torch.device
) -> dict[str, Any]:
    """Clean accuracy and certified accuracy over :data:`CURVE` and ``cfg.eps``."""
    batches = ((x.to(device), y.to(device)) for x, y in make_loader(test, cfg.batch_size, shuffle=False))
    return certified_accuracy_percent(model, batches, sorted({*CURVE, cfg.eps}), lipschitz=lipschitz)


def _attack_test_set(
    model: LipschitzNet,
    test: TensorDataset,
    cfg: EvalConfig,
    lipschitz: float,
    device: torch.device,
    progress: bool,
) -> dict[str, Any]:
    """Robust accuracy under our PGD and the paper's (on ``cfg.pgd_limit`` evenly spaced test
    images) and under FGM (on all); examples certified at ``cfg.eps`` are not attacked."""
    n_pgd = len(test) if cfg.pgd_limit is None else min(cfg.pgd_limit, len(test))
    x_all, y_all = (t.to(device) for t in test.tensors)
    pick = pgd_sample(len(test), n_pgd).to(device)
    x_pgd, y_pgd = x_all[pick], y_all[pick]
    steps = {"steps": cfg.pgd_steps, "step_size": cfg.pgd_step_size}
    pgd = partial(pgd_l2, model, eps=cfg.eps, loss=cfg.attack_loss, **steps)
    pgd_paper = partial(pgd_l2, model, eps=cfg.eps, **steps, **PAPER_PGD)
    fgm = partial(fgm_l2, model, eps=cfg.eps, loss=cfg.attack_loss)

    def robust(x: torch.Tensor, y: torch.Tensor, attack: Callable, name: str) -> tuple[float, int]:
        bar = name if progress else None
        return _robust_accuracy(model, x, y, cfg.eps, lipschitz, attack, cfg.batch_size, bar)

    pgd_acc, attacked = robust(x_pgd, y_pgd, pgd, "PGD")
    pgd_paper_acc, _ = robust(x_pgd, y_pgd, pgd_paper, "PGD paper")
    fgm_acc, _ = robust(x_all, y_all, fgm, "FGM")
    return {
        "pgd": pgd_acc,
        "pgd_paper_attack": pgd_paper_acc,
        "fgm": fgm_acc,
        "n": n_pgd,
        "attacked": attacked,
    }


@full_float32()
def evaluate(
    model: LipschitzNet, config: EvalConfig | None = None, *, progress: bool = False, **overrides: Any
) -> dict[str, Any]:
    """Evaluate ``model`` on its dataset's test split.

    Args:
        model: the network; it is put in eval mode and moved to the evaluation's device.
        config: how to evaluate (default: :class:`EvalConfig`'s, the paper's protocol).
        progress: a progress bar per attack on stderr.
        **overrides: :class:`EvalConfig` fields to change, e.g. ``pgd_limit=1000``. On a GPU the
            attacks' random starts draw other numbers than on the CPU.

    Returns:
        A JSON-ready dict in the results schema (:mod:`bcop.results`): accuracies in percent;
        ``certified`` maps radius -> accuracy.
    """
    cfg = dataclasses.replace(config or EvalConfig(), **overrides)
    t0 = time.perf_counter()
    device = torch.device(cfg.device or default_device())
    model.eval().to(device)
    test = load_dataset(model.config.dataset, "test", cfg.data_root)
    L = lipschitz_bound(model)
    cert = _certify_test_set(model, test, cfg, L, device)
    robust = _attack_test_set(model, test, cfg, L, device, progress)
    key = eps_key(cfg.eps)
    return {
        "schema_version": RESULTS_SCHEMA_VERSION,
        "model": model.config.name,
        "dataset": model.config.dataset,
        "n_test": cert["n"],
        "eps": cfg.eps,
        "clean": cert["clean"],
        "lipschitz": L,
        "certified": {eps_key(e): acc for e, acc in cert["certified"].items()},
        "pgd": {key: percent(robust["pgd"])},
        "pgd_paper_attack": {key: percent(robust["pgd_paper_attack"])},
        "pgd_n": robust["n"],
        "pgd_sample": "evenly spaced",
        "pgd_attacked": robust["attacked"],
        "pgd_steps": cfg.pgd_steps,
        "pgd_step_size": cfg.pgd_step_size,
        "fgm": {key: percent(robust["fgm"])},
        "attack_loss": cfg.attack_loss,
        "paper": PAPER_RESULTS.get(model.config.name),
        "eval_seconds": time.perf_counter() - t0,
        "eval_hardware": describe_hardware(device),
    }


# Percentage points a recertified radius may differ from its recorded figure (one MNIST test
# image is 0.01): float32 margins at a radius's edge can round either way on another machine.
RECERTIFY_TOLERANCE = 0.02


@full_float32()
def complete_curve(folder: str | Path, config: EvalConfig | None = None) -> dict[str, Any]:
    """Add the radii of :data:`CURVE` missing from ``FOLDER/eval_results.json``'s certified curve
    (evaluated when the curve was shorter) and rewrite the folder's card; the attacks are not rerun.

    The test set is certified again with the recorded bound; recorded figures are kept, and the
    recomputed ones at recorded radii must agree with them to :data:`RECERTIFY_TOLERANCE`.

    Returns:
        The updated results (schema 2).

    Raises:
        ValueError: the folder holds no results, or the recertified curve disagrees with them.
    """
    cfg, folder = config or EvalConfig(), Path(folder)
    results = read_results(folder)
    if results is None:
        raise ValueError(f"{folder} holds no eval_results.json: evaluate the model with --export first")
    if all(eps_key(e) in results["certified"] for e in CURVE):
        return results
    device = torch.device(cfg.device or default_device())
    model = load_model(str(folder)).model.eval().to(device)
    test = load_dataset(model.config.dataset, "test", cfg.data_root)
    cert = _certify_test_set(model, test, cfg, results["lipschitz"], device)
    curve = {eps_key(e): acc for e, acc in cert["certified"].items()}
    recorded = results["certified"]
    wrong = {k: (v, curve[k]) for k, v in recorded.items() if abs(curve.get(k, v) - v) > RECERTIFY_TOLERANCE}
    if wrong or abs(cert["clean"] - results["clean"]) > RECERTIFY_TOLERANCE:
        raise ValueError(
            f"{folder}: the test set certifies differently from its recorded results (recorded, now: "
            f"{wrong or (results['clean'], cert['clean'])}): evaluate the model again instead"
        )
    merged = {**curve, **results["certified"]}
    results["certified"] = {k: merged[k] for k in sorted(merged, key=float)}
    write_results(folder, results)
    refresh_folder(folder)
    return results


def _loss_description(cfg: TrainConfig) -> str:
    if cfg.resolved_loss() == "ce":
        return "cross-entropy"
    return (
        f"multi-class hinge, margin {cfg.hinge_eps} * sqrt(2) (certifies eps = {cfg.hinge_eps} at zero loss)"
    )


def _training_summary(run: Path | None) -> dict[str, Any] | None:
    if run is None or not (run / "metrics.json").is_file():
        return None
    data = json.loads((run / "metrics.json").read_text())
    cfg, history = data["config"], data["history"]
    best = max((h for h in history if h.get("best")), key=lambda h: h["epoch"], default=history[-1])
    defaults = dataclasses.asdict(TrainConfig(model=cfg["model"]))
    flags = [cfg["model"]] + [
        f"--{key.replace('_', '-')} {value}"
        for key, value in cfg.items()
        if key not in ("model", "out", "data_root") and value != defaults.get(key)
    ]
    return {
        "command": "python -m bcop.train " + " ".join(flags),
        "epochs": len(history),
        "best_epoch": best["epoch"],
        "selection": selection_description(cfg, best["epoch"]),
        "cpu_hours": history[-1]["cpu_seconds"] / 3600,
        "wall_hours": history[-1]["wall_seconds"] / 3600,
        "hardware": hardware_segments(history),
        "loss": _loss_description(TrainConfig(**cfg)),
        "config": cfg,
    }


def _recorded_training(folder: Path) -> dict[str, Any] | None:
    """The ``training`` record of the results beside an exported model, if there is one."""
    results = read_results(folder)
    return None if results is None else results.get("training")


def _parser() -> argparse.ArgumentParser:
    """The command line: the model (or ``--summary``), one option per :class:`EvalConfig`
    field, and where the results go."""
    parser = argparse.ArgumentParser(prog="python -m bcop.evaluate", description=__doc__.split("\n\n")[0])
    parser.add_argument("model", nargs="?", help="registry name, Hub repo id, or model folder")
    parser.add_argument(
        "--complete-curve",
        metavar="FOLDER",
        nargs="+",
        help="add the certified curve's missing radii to these exported folders' results and cards, "
        "without rerunning the attacks, and exit (default: evaluate MODEL)",
    )
    parser.add_argument(
        "--summary",
        metavar="FOLDER",
        help="print the README's table of the models evaluated under FOLDER (e.g. checkpoints) and exit "
        "(default: evaluate MODEL)",
    )
    add_options(parser, EvalConfig)
    parser.add_argument("--out", help="results folder (default: results/NAME)")
    parser.add_argument(
        "--export", metavar="FOLDER", help="also write the model, results and card there (default: no export)"
    )
    parser.add_argument(
        "--train-run",
        metavar="FOLDER",
        help="training output folder the card describes (default: the training record beside the model)",
    )
    parser.add_argument(
        "--threads", type=int, default=0, help="torch CPU threads (default: 0, torch's choice)"
    )
    return parser


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = _parser()
    args = parser.parse_args(argv)
    if (args.model is not None) + (args.summary is not None) + bool(args.complete_curve) != 1:
        parser.error("give a model to evaluate, or --summary FOLDER, or --complete-curve FOLDER ... (one)")
    return args


def _export(loaded: LoadedModel, results: dict[str, Any], folder: str, train_run: str | None) -> None:
    """Write the model, its results and its card to ``folder``; the card's training record comes
    from ``train_run``, else from the results already beside the model."""
    if train_run:
        training = _training_summary(Path(train_run))
    else:
        training = _recorded_training(loaded.location)
    if training is not None:
        results["training"] = training
    written = save_model(loaded.model, folder, card=str(model_card(results)))
    write_results(written, results)


def main(argv: list[str] | None = None) -> dict[str, Any] | str:
    """Command-line entry point; returns the results (schema 2, see :mod:`bcop.results`), the
    ``--summary`` table, or each ``--complete-curve`` folder's updated results."""
    args = _parse(argv)
    if args.summary is not None:
        table = summary_table(collect_results(args.summary))
        print(table)
        return table
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.complete_curve:
        return {folder: complete_curve(folder, from_args(EvalConfig, args)) for folder in args.complete_curve}
    loaded = load_model(args.model)
    results = evaluate(loaded.model, from_args(EvalConfig, args), progress=True)
    out = Path(args.out or f"results/{results['model']}")
    results = write_results(out, results)
    (out / "eval_results.md").write_text(results_table([results]))
    print(results_table([results]))
    if args.export:
        _export(loaded, results, args.export, args.train_run)
    return results


if __name__ == "__main__":
    main()

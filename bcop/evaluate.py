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

from bcop.attacks import LOSSES as ATTACK_LOSSES
from bcop.attacks import AttackResult, fgm_l2, pgd_l2
from bcop.certify import certified_accuracy, certified_radius, full_float32, lipschitz_bound
from bcop.cli import add_options, from_args, option
from bcop.data import TRAIN_VAL_SIZES, load_dataset, make_loader
from bcop.hub import EVAL_RESULTS_FILE, LoadedModel, load_model, save_model
from bcop.models import LipschitzNet, parse_model_name
from bcop.train import TrainConfig, describe_hardware, is_cpu_hardware

__all__ = [
    "PAPER_RESULTS",
    "EvalConfig",
    "evaluate",
    "pgd_sample",
    "results_table",
    "summary_table",
    "read_results",
    "model_card",
    "main",
]

# The paper's Table (official runs, mean of 5 trials), MNIST, eps = 1.58: percentages.
PAPER_RESULTS: dict[str, dict[str, float]] = {
    "bcop-large-mnist": {"clean": 98.77, "certified": 56.66, "pgd": 86.86},
    "rko-large-mnist": {"clean": 98.44, "certified": 55.18, "pgd": 84.67},
    "ossn-large-mnist": {"clean": 98.31, "certified": 53.77, "pgd": 83.37},
    "svcm-large-mnist": {"clean": 97.93, "certified": 38.00, "pgd": 81.37},
    "bcop-small-mnist": {"clean": 97.54, "certified": 45.84, "pgd": 78.00},
}
ATTACK_LOSS_NAMES = {"margin": "logit margin", "ce": "cross-entropy"}
# LConvNet's PGDAttacker as the paper's evaluation ran it: the Carlini-Wagner margin loss,
# uniform per-pixel start in [-eps, eps], only the last iterate counted.
PAPER_PGD: dict[str, Any] = {"start": "box", "any_iterate": False, "loss": "margin"}
CURVE = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.58, 1.75, 2.0, 2.5, 3.0)


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
    return certified_accuracy(model, batches, sorted({*CURVE, cfg.eps}), lipschitz=lipschitz)


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
        A JSON-ready dict: accuracies in [0, 1]; ``certified`` maps radius -> accuracy.
    """
    cfg = dataclasses.replace(config or EvalConfig(), **overrides)
    t0 = time.perf_counter()
    device = torch.device(cfg.device or default_device())
    model.eval().to(device)
    test = load_dataset(model.config.dataset, "test", cfg.data_root)
    L = lipschitz_bound(model)
    cert = _certify_test_set(model, test, cfg, L, device)
    robust = _attack_test_set(model, test, cfg, L, device, progress)
    key = f"{cfg.eps:g}"
    return {
        "model": model.config.name,
        "dataset": model.config.dataset,
        "n_test": cert["n"],
        "eps": cfg.eps,
        "clean": cert["clean"],
        "lipschitz": L,
        "certified": {f"{e:g}": acc for e, acc in cert["certified"].items()},
        "pgd": {key: robust["pgd"]},
        "pgd_paper_attack": {key: robust["pgd_paper_attack"]},
        "pgd_n": robust["n"],
        "pgd_sample": "evenly spaced",
        "pgd_attacked": robust["attacked"],
        "pgd_steps": cfg.pgd_steps,
        "pgd_step_size": cfg.pgd_step_size,
        "fgm": {key: robust["fgm"]},
        "attack_loss": cfg.attack_loss,
        "paper": PAPER_RESULTS.get(model.config.name),
        "eval_seconds": time.perf_counter() - t0,
        "eval_hardware": describe_hardware(device),
    }


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.2f}"


def _paper(paper: dict[str, float], key: str) -> str:
    return f"{paper[key]:.2f}" if key in paper else "–"


def _headline(r: dict[str, Any]) -> tuple[list[str], list[str]]:
    """Ours and the paper's clean / certified / PGD accuracy at the result's eps, as text."""
    key = f"{r['eps']:g}"
    paper = r.get("paper") or {}
    ours = [_pct(r["clean"]), _pct(r["certified"][key]), _pct(r["pgd"][key])]
    return ours, [_paper(paper, k) for k in ("clean", "certified", "pgd")]


def _pgd_paper_attack(r: dict[str, Any]) -> str:
    """Robust accuracy under the paper's PGD (results written before it was measured: "–")."""
    return _pct((r.get("pgd_paper_attack") or {}).get(f"{r['eps']:g}"))


def results_table(results: list[dict[str, Any]]) -> str:
    """Markdown table: ours (clean / certified / PGD at eps) beside the paper's."""
    lines = [
        "| model | clean | certified | PGD | PGD, paper's attack | FGM | Lipschitz bound "
        "| paper clean | paper certified | paper PGD |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        (clean, certified, pgd), paper = _headline(r)
        fgm = _pct(r["fgm"][f"{r['eps']:g}"])
        lines.append(
            f"| {r['model']} | {clean} | {certified} | {pgd} (n={r['pgd_n']}) | {_pgd_paper_attack(r)} "
            f"| {fgm} | {r['lipschitz']:.7g} | {' | '.join(paper)} |"
        )
    return "\n".join(lines) + "\n"


def summary_table(results: list[dict[str, Any]]) -> str:
    """Markdown table of several evaluated models, as the README shows them: ours beside the
    paper's (clean / certified / PGD at each result's eps), training time and the command that
    trained it (from ``results["training"]``, written by ``--export ... --train-run``)."""
    lines = [
        "| model | ours: clean / certified / PGD | ours: PGD, paper's attack "
        "| paper: clean / certified / PGD | Lipschitz bound | training (CPU-hours, epochs) | reproduce |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        ours, paper = _headline(r)
        paper_text = " / ".join(paper) if r.get("paper") else "–"
        training = r.get("training")
        trained = _time_cell(training) if training else "–"
        command = f"`{training['command']}`" if training else "–"
        lines.append(
            f"| {r['model']} | {' / '.join(ours)} | {_pgd_paper_attack(r)} "
            f"| {paper_text} | {r['lipschitz']:.7g} | {trained} | {command} |"
        )
    return "\n".join(lines) + "\n"


def read_results(folder: str | Path) -> list[dict[str, Any]]:
    """Every ``*/eval_results.json`` under ``folder`` (e.g. ``checkpoints/``): the paper's
    models in its table's order, then the rest by name."""
    files = sorted(Path(folder).glob(f"*/{EVAL_RESULTS_FILE}"))
    if not files:
        raise ValueError(f"no */{EVAL_RESULTS_FILE} under {folder}: evaluate a model with --export first")
    results = [json.loads(f.read_text()) for f in files]
    order = list(PAPER_RESULTS)  # the paper's rows first, in its order
    return sorted(results, key=lambda r: order.index(r["model"]) if r["model"] in order else len(order))


def _loss_description(cfg: TrainConfig) -> str:
    if cfg.resolved_loss() == "ce":
        return "cross-entropy"
    return (
        f"multi-class hinge, margin {cfg.hinge_eps} * sqrt(2) (certifies eps = {cfg.hinge_eps} at zero loss)"
    )


def _selection_description(cfg: dict[str, Any], epoch: int) -> str:
    """Which data the run trained on and how its model was chosen, for the card."""
    dataset = parse_model_name(cfg["model"]).dataset
    n_train, n_val = TRAIN_VAL_SIZES[dataset]
    label = {"mnist": "MNIST", "cifar10": "CIFAR-10"}[dataset]
    if cfg.get("train_split", "train") == "train+val":
        return (
            f"trained on all {n_train + n_val:,} {label} training images, as the paper, "
            f"with no model selection: the model after the last epoch ({epoch})"
        )
    return (
        f"trained on {n_train:,} {label} training images; the epoch with the best validation score "
        f"on the other {n_val:,}: {epoch}"
    )


# What epochs recorded before metrics named their hardware ran on (all of this project's runs
# up to then were trained on its 2-core CPU machine).
LEGACY_HARDWARE = "a 2-core CPU machine"


def hardware_segments(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Consecutive epochs that ran on the same hardware, with the wall-clock and CPU hours each
    stretch took (from the cumulative ``wall_seconds`` / ``cpu_seconds`` of each epoch)."""
    segments: list[dict[str, Any]] = []
    wall = cpu = 0.0
    for h in history:
        hardware = h.get("hardware", LEGACY_HARDWARE)
        if not segments or segments[-1]["hardware"] != hardware:
            segments.append({"hardware": hardware, "epochs": 0, "wall_hours": 0.0, "cpu_hours": 0.0})
        segments[-1]["epochs"] += 1
        segments[-1]["wall_hours"] += (h["wall_seconds"] - wall) / 3600
        segments[-1]["cpu_hours"] += (h["cpu_seconds"] - cpu) / 3600
        wall, cpu = h["wall_seconds"], h["cpu_seconds"]
    return segments


def _on_gpu(hardware: str) -> bool:
    return not (hardware == LEGACY_HARDWARE or is_cpu_hardware(hardware))


def _time_sentence(training: dict[str, Any]) -> str:
    """The model card's sentence on where and how long the model trained."""
    segments = training.get("hardware") or []
    if all(s["hardware"] == LEGACY_HARDWARE for s in segments):
        return (
            f"Time on a 2-core CPU machine: {training['cpu_hours']:.2f} CPU-hours "
            f"({training['wall_hours']:.2f} h wall clock, sharing the machine with other jobs)."
        )
    parts = [
        f"{s['epochs']} epoch{'' if s['epochs'] == 1 else 's'} on {s['hardware']}: "
        f"{s['wall_hours']:.2f} h wall clock"
        + ("" if _on_gpu(s["hardware"]) else f", {s['cpu_hours']:.2f} CPU-hours")
        for s in segments
    ]
    return "Time: " + "; ".join(parts) + " (machines possibly shared with other jobs)."


def _time_cell(training: dict[str, Any]) -> str:
    """The README table's training-time cell: CPU-hours, or wall-clock hours on a GPU."""
    segments = training.get("hardware") or []
    if not any(_on_gpu(s["hardware"]) for s in segments):
        return f"{training['cpu_hours']:.2f} h, {training['epochs']}"
    parts = [
        f"{s['wall_hours']:.2f} h on {s['hardware']}" if _on_gpu(s["hardware"]) else f"{s['cpu_hours']:.2f} h"
        for s in segments
    ]
    return " + ".join(parts) + f", {training['epochs']}"


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
        "selection": _selection_description(cfg, best["epoch"]),
        "cpu_hours": history[-1]["cpu_seconds"] / 3600,
        "wall_hours": history[-1]["wall_seconds"] / 3600,
        "hardware": hardware_segments(history),
        "loss": _loss_description(TrainConfig(**cfg)),
        "config": cfg,
    }


def _recorded_training(folder: Path) -> dict[str, Any] | None:
    """The ``training`` record of the results beside an exported model, if there is one."""
    path = folder / EVAL_RESULTS_FILE
    if not path.is_file():
        return None
    training = json.loads(path.read_text()).get("training")
    if training is not None and "selection" not in training:  # written before cards said it
        training["selection"] = _selection_description(training["config"], training["best_epoch"])
    return training


def _pgd_images(results: dict[str, Any]) -> str:
    """Which test images PGD attacked, in words (results before ``pgd_sample``: the first n)."""
    n, n_test = results["pgd_n"], results["n_test"]
    if n == n_test:
        return f"all {n_test} test images"
    if results.get("pgd_sample") == "evenly spaced":
        return f"{n} test images evenly spaced through the {n_test}"
    return f"the first {n} test images"


def _evaluated_on(results: dict[str, Any]) -> list[str]:
    """The card's line on where the evaluation ran and how long it took (results written
    before evaluations recorded their hardware have none)."""
    if "eval_hardware" not in results:
        return []
    return [f"Evaluated on {results['eval_hardware']} in {results['eval_seconds'] / 60:.1f} min.", ""]


def model_card(results: dict[str, Any], training: dict[str, Any] | None) -> str:
    """A Hugging Face model card (YAML metadata header + markdown) for an evaluated model."""
    name, key = results["model"], f"{results['eps']:g}"
    conv = name.split("-")[0]
    metrics = [
        ("accuracy", "clean accuracy", results["clean"]),
        ("certified_accuracy", f"certified accuracy (L2, eps={key})", results["certified"][key]),
        ("pgd_accuracy", f"PGD-L2 robust accuracy (eps={key})", results["pgd"][key]),
    ]
    if "pgd_paper_attack" in results:
        metrics.append(
            (
                "pgd_accuracy_paper_attack",
                f"PGD-L2 robust accuracy, the paper's attack (eps={key})",
                results["pgd_paper_attack"][key],
            )
        )
    header = [
        "---",
        "library_name: bcop",
        "license: mit",
        "datasets:",
        f"- {results['dataset']}",
        "tags:",
        "- lipschitz",
        "- certified-robustness",
        f"- {conv}",
        "model-index:",
        f"- name: {name}",
        "  results:",
        "  - task:",
        "      type: image-classification",
        "    dataset:",
        f"      name: {results['dataset'].upper()} (test)",
        f"      type: {results['dataset']}",
        "    metrics:",
    ]
    for mtype, mname, value in metrics:
        header += [f"    - type: {mtype}", f"      name: {mname}", f"      value: {100 * value:.2f}"]
    header.append("---")
    body = [
        f"# {name}",
        "",
        f"A {'provably 1-Lipschitz' if conv != 'plain' else 'conventional (unconstrained)'} network from "
        "[bcop](https://arxiv.org/abs/1911.00937) (Li et al., NeurIPS 2019): "
        f'`{name}` in the bcop model registry. Load it with `bcop.hub.load_model("{name}")` '
        "or from this folder.",
        "",
        f"## Evaluation (test set, n = {results['n_test']}, L2 eps = {key})",
        "",
        "Accuracies in %. Certified: correct and certified radius margin/(sqrt(2) L) >= eps. "
        f"PGD: {results['pgd_steps']} steps of {results['pgd_step_size']}, random start, box [0, 1], "
        f"maximising the {ATTACK_LOSS_NAMES[results.get('attack_loss', 'margin')]} "
        "(an example counts as broken if any iterate is misclassified), "
        f"on {_pgd_images(results)} (certified ones counted as robust without attack). "
        "PGD, paper's attack: the same steps from the paper's evaluation code's start (every pixel "
        "moved by a uniform amount in [-eps, eps], which the first step projects onto the ball's "
        "surface in a random direction), maximising the logit margin and counting only the last "
        "iterate; weaker, and the one comparable with the paper's PGD column. "
        "FGM: one step, all test images.",
        "",
        results_table([results]),
        "Certified accuracy over the radius:",
        "",
        "| eps | " + " | ".join(results["certified"]) + " |",
        "|---" * (len(results["certified"]) + 1) + "|",
        "| certified % | " + " | ".join(f"{100 * v:.2f}" for v in results["certified"].values()) + " |",
        "",
        f"Lipschitz bound (product of the layers' exact bounds): {results['lipschitz']:.7g}.",
        "",
        *_evaluated_on(results),
        "Reproduce: `python -m bcop.evaluate "
        + name
        + ("" if results["pgd_n"] == results["n_test"] else f" --pgd-limit {results['pgd_n']}")
        + "`.",
        "",
    ]
    if training is not None:
        body += [
            "## Training",
            "",
            f"`{training['command']}`",
            "",
            f"Loss: {training['loss']}; {training['epochs']} epochs; {training['selection']}. "
            + _time_sentence(training),
            "",
        ]
    if results.get("paper") is None:
        body += ["The paper reports no row for this model.", ""]
    return "\n".join(header + [""] + body)


def _parser() -> argparse.ArgumentParser:
    """The command line: the model (or ``--summary``), one option per :class:`EvalConfig`
    field, and where the results go."""
    parser = argparse.ArgumentParser(prog="python -m bcop.evaluate", description=__doc__.split("\n\n")[0])
    parser.add_argument("model", nargs="?", help="registry name, Hub repo id, or model folder")
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
    if (args.model is None) == (args.summary is None):
        parser.error("give a model to evaluate, or --summary FOLDER (not both)")
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
    written = save_model(loaded.model, folder, card=model_card(results, training))
    (written / EVAL_RESULTS_FILE).write_text(json.dumps(results, indent=2) + "\n")


def main(argv: list[str] | None = None) -> dict[str, Any] | str:
    """Command-line entry point; returns the results dict (or the ``--summary`` table)."""
    args = _parse(argv)
    if args.summary is not None:
        table = summary_table(read_results(args.summary))
        print(table)
        return table
    if args.threads:
        torch.set_num_threads(args.threads)
    loaded = load_model(args.model)
    results = evaluate(loaded.model, from_args(EvalConfig, args), progress=True)
    out = Path(args.out or f"results/{results['model']}")
    out.mkdir(parents=True, exist_ok=True)
    (out / EVAL_RESULTS_FILE).write_text(json.dumps(results, indent=2) + "\n")
    (out / "eval_results.md").write_text(results_table([results]))
    print(results_table([results]))
    if args.export:
        _export(loaded, results, args.export, args.train_run)
    return results


if __name__ == "__main__":
    main()

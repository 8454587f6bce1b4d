"""The Large MNIST models of BCOP's successors (issue 28): ``python -m bcop.experiments.successors``.

Three commands, each resumable (running it again continues where it stopped):

* ``select [--family F ...]``: for every family, a ``select_epochs``-epoch run on the ``train``
  split (validation held out) at each learning rate of :data:`LR_CHOICES`, with
  bcop-large-mnist's recipe (:data:`RECIPE`) otherwise. The rule, the same for every family:
  the learning rate with the highest validation certified accuracy at 1.58 after the last
  epoch (ties go to the smaller rate). Every finished run and each choice go to a small JSON
  file (``docs/successors_lr.json``), written as runs finish, so the runs can be spread over
  sessions; each run resumes through :func:`bcop.train.train`'s own state under ``runs/``.
* ``final --family F``: the 30-epoch ``train+val`` run at the chosen rate (refused while the
  family's selection is unfinished), then the export to ``checkpoints/F-large-mnist/`` with
  config, weights, card and eval results, by ``python -m bcop.evaluate --export`` as for the
  other checkpoints (docs/reproduction.md).
* ``table``: every model in ``checkpoints/`` side by side, written into ``docs/successors.md``
  and the README (:mod:`bcop.experiments.successors_table`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

import torch

from bcop import evaluate
from bcop.experiments import successors_table
from bcop.models import SUCCESSORS, parse_model_name
from bcop.train import TrainConfig, train

__all__ = [
    "LR_CHOICES",
    "RECIPE",
    "SELECT_EPOCHS",
    "FINAL_EPOCHS",
    "RunSettings",
    "choose_lr",
    "select",
    "final",
    "main",
]

LR_CHOICES = (3e-4, 1e-3, 3e-3)
SELECT_EPOCHS = 3
FINAL_EPOCHS = 30
SELECT_EPS = 1.58
# bcop-large-mnist's recorded training options (checkpoints/bcop-large-mnist/eval_results.json,
# training.config) other than the model, the learning rate, the epochs, the split and the
# folders; tests/test_successors_runs.py checks that they still agree.
RECIPE: dict[str, Any] = {
    "batch_size": 128,
    "lr_decay": 0.9,
    "loss": "auto",
    "hinge_eps": 1.5,
    "select_eps": SELECT_EPS,
    "seed": 0,
    "ortho_method": "polar",
    "bjorck_iters": 20,
}


@dataclasses.dataclass(frozen=True)
class RunSettings:
    """Where the runs go and how big they are: the defaults are the real runs; tests shrink
    them (a Small network, ``limit_train`` images, one epoch) and point them at a temporary folder."""

    arch: str = "large"
    runs: str = "runs"
    record: str = "docs/successors_lr.json"
    checkpoints: str = "checkpoints"
    select_epochs: int = SELECT_EPOCHS
    final_epochs: int = FINAL_EPOCHS
    limit_train: int | None = None
    data_root: str | None = None
    eval_options: tuple[str, ...] = ()  # passed on to python -m bcop.evaluate, e.g. --pgd-limit

    def model(self, family: str) -> str:
        """The registry name of ``family``'s MNIST network, e.g. ``aol-large-mnist``."""
        if family not in SUCCESSORS:
            raise ValueError(f"unknown family {family!r}: expected one of {', '.join(SUCCESSORS)}")
        return parse_model_name(f"{family}-{self.arch}-mnist").name

    def config(self, family: str, lr: float, split: str, epochs: int, out: Path) -> TrainConfig:
        """The :class:`TrainConfig` of one run: :data:`RECIPE` with this rate, split and length."""
        return TrainConfig(
            model=self.model(family), epochs=epochs, lr=lr, train_split=split, out=str(out),
            limit_train=self.limit_train, data_root=self.data_root, **RECIPE,
        )  # fmt: skip


def read_record(path: str | Path) -> dict[str, Any]:
    """The selection record (``{"rule": ..., "models": {name: {...}}}``), empty when absent."""
    path = Path(path)
    if not path.is_file():
        return {"rule": _RULE, "lr_choices": list(LR_CHOICES), "models": {}}
    return json.loads(path.read_text())


_RULE = (
    f"the learning rate among {', '.join(f'{lr:g}' for lr in LR_CHOICES)} whose run on the train "
    f"split certifies the most validation images at L2 radius {SELECT_EPS} after its last epoch; "
    "ties go to the smaller rate"
)


def choose_lr(runs: dict[str, dict[str, Any]], epochs: int) -> float | None:
    """The selection rule over finished runs (``{f"{lr:g}": {"epochs": e, "val_certified": c}}``):
    the rate with the highest ``val_certified`` after ``epochs`` epochs, the smaller on a tie;
    None until every rate of :data:`LR_CHOICES` has run ``epochs`` epochs."""
    done = [(lr, runs.get(f"{lr:g}")) for lr in LR_CHOICES]
    if any(run is None or run["epochs"] < epochs for _, run in done):
        return None
    return max(done, key=lambda item: (item[1]["val_certified"], -item[0]))[0]


def _run_record(cfg: TrainConfig, out: Path) -> dict[str, Any]:
    """What the record keeps of a finished run: its last epoch's validation figures and cost."""
    last = json.loads((out / "metrics.json").read_text())["history"][-1]
    keep = ("val_clean", "val_certified", "lipschitz", "cpu_seconds", "wall_seconds", "hardware")
    return {"epochs": last["epoch"], **{k: last[k] for k in keep}, "out": str(out), "lr": cfg.lr}


def _write_record(settings: RunSettings, record: dict[str, Any]) -> None:
    path = Path(settings.record)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2) + "\n")


def select(families: list[str], settings: RunSettings = RunSettings()) -> dict[str, Any]:
    """Run (or resume) the learning-rate selection of ``families``; returns the record.

    Runs already recorded as finished are skipped; the record is rewritten after every run.
    """
    record = read_record(settings.record)
    for family in families:
        name = settings.model(family)
        settled = {"select_epochs": settings.select_epochs, "limit_train": settings.limit_train}
        entry = record["models"].setdefault(name, {**settled, "runs": {}})
        if {k: entry[k] for k in settled} != settled:
            raise ValueError(
                f"{settings.record} holds a selection of {name} with { ({k: entry[k] for k in settled}) }, "
                f"not {settled}: use another --record, or the same settings to continue it"
            )
        for lr in LR_CHOICES:
            if entry["runs"].get(f"{lr:g}", {}).get("epochs", 0) >= settings.select_epochs:
                continue
            out = Path(settings.runs) / "successors-lr" / f"{name}-lr{lr:g}"
            cfg = settings.config(family, lr, "train", settings.select_epochs, out)
            train(cfg)
            entry["runs"][f"{lr:g}"] = _run_record(cfg, out)
            entry["chosen_lr"] = choose_lr(entry["runs"], settings.select_epochs)
            _write_record(settings, record)
    return record


def chosen_lr(family: str, settings: RunSettings = RunSettings()) -> float:
    """The learning rate the selection chose for ``family``.

    Raises:
        ValueError: the selection of that family is missing or unfinished (says what to run).
    """
    name = settings.model(family)
    entry = read_record(settings.record)["models"].get(name, {})
    lr = choose_lr(entry.get("runs", {}), entry.get("select_epochs", settings.select_epochs))
    if lr is None:
        done = ", ".join(sorted(entry.get("runs", {}))) or "none"
        raise ValueError(
            f"the learning-rate selection of {name} is not finished (runs recorded in "
            f"{settings.record}: {done}): run `python -m bcop.experiments.successors select "
            f"--family {family}` first"
        )
    return lr


def final(family: str, settings: RunSettings = RunSettings()) -> Path:
    """Train (or resume) ``family``'s final run and export it to ``checkpoints/NAME``.

    The run: :data:`RECIPE` at the chosen learning rate, ``final_epochs`` epochs on ``train+val``,
    the last epoch kept; then ``python -m bcop.evaluate runs/NAME/best --export checkpoints/NAME
    --train-run runs/NAME --out runs/NAME/results`` (the full test set unless ``eval_options``
    say otherwise).
    Returns the checkpoint folder.
    """
    lr = chosen_lr(family, settings)
    name = settings.model(family)
    out = Path(settings.runs) / name
    train(settings.config(family, lr, "train+val", settings.final_epochs, out))
    destination = Path(settings.checkpoints) / name
    argv = [str(out / "best"), "--export", str(destination), "--train-run", str(out)]
    data = ["--data-root", settings.data_root] if settings.data_root else []
    evaluate.main([*argv, "--out", str(out / "results"), *data, *settings.eval_options])
    return destination


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bcop.experiments.successors", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("command", choices=("select", "final", "table"))
    parser.add_argument(
        "--family", action="append", choices=SUCCESSORS,
        help="a family (repeatable; select: default all five; final: exactly one)",
    )  # fmt: skip
    defaults = RunSettings()
    add = parser.add_argument
    add("--arch", default=defaults.arch, choices=("small", "large"), help="network (default: %(default)s)")
    add("--runs", default=defaults.runs, help="training runs folder (default: %(default)s)")
    add("--record", default=defaults.record, help="selection record (default: %(default)s)")
    add("--checkpoints", default=defaults.checkpoints, help="export folder (default: %(default)s)")
    add("--select-epochs", type=int, default=SELECT_EPOCHS, help="default: %(default)s")
    add("--final-epochs", type=int, default=FINAL_EPOCHS, help="default: %(default)s")
    add("--page", default="docs/successors.md", help="table: the page to write into (default: %(default)s)")
    add("--readme", default="README.md", help="table: the page whose copy is replaced (default: %(default)s)")
    parser.add_argument("--limit-train", type=int, help="train on the first N images only (default: all)")
    parser.add_argument("--data-root", help="data folder (default: $BCOP_DATA or ~/.cache/bcop)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    return parser


def main(argv: list[str] | None = None) -> Any:
    """Command-line entry point; options after ``--`` go to ``python -m bcop.evaluate`` (final)."""
    argv = list(argv if argv is not None else sys.argv[1:])
    own, extra = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    parser = _parser()
    args = parser.parse_args(own)
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = RunSettings(
        args.arch, args.runs, args.record, args.checkpoints, args.select_epochs, args.final_epochs,
        args.limit_train, args.data_root, tuple(extra),
    )  # fmt: skip
    if args.command == "select":
        return select(args.family or list(SUCCESSORS), settings)
    if args.command == "final":
        if not args.family or len(args.family) != 1:
            parser.error("final trains one family: give exactly one --family")
        return final(args.family[0], settings)
    return successors_table.main(settings.checkpoints, args.page, args.readme)


if __name__ == "__main__":
    main()

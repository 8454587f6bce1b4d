"""The evaluation results file ``eval_results.json``: its schema, and one way to read and write it.

Schema 2 (:data:`RESULTS_SCHEMA_VERSION`) holds, for one model on its test set:

* ``schema_version``: 2; ``model``, ``dataset``, ``n_test``, ``eps`` (the headline L2 radius);
* accuracies, every one in **percent** (the paper's unit): ``clean``; ``certified``, ``pgd``,
  ``pgd_paper_attack`` and ``fgm`` map a radius written ``f"{eps:g}"`` (:func:`eps_key`) to
  an accuracy (``certified`` over a curve of radii, the attacks at ``eps``);
  ``pgd_paper_attack`` is None when it was not measured;
* ``lipschitz``: the network's certified bound;
* how PGD ran: ``pgd_n`` images (``pgd_sample``: ``"evenly spaced"`` through the test set, or
  the ``"first"`` ones), ``pgd_attacked``, ``pgd_steps``, ``pgd_step_size``, ``attack_loss``;
* ``paper``: the paper's clean / certified / PGD percentages for this model, or None;
* ``eval_seconds`` and ``eval_hardware`` (None when not recorded);
* ``training`` (optional): how the model was trained, from its run: ``command``, ``epochs``,
  ``best_epoch``, ``selection`` (a sentence), ``loss``, ``cpu_hours``, ``wall_hours``,
  ``hardware`` (consecutive epochs on the same hardware, see :func:`hardware_segments`) and
  the run's ``config``.

Files written before schema versions (version 1: no ``schema_version``, accuracies as
fractions in [0, 1], some fields missing) are upgraded by :func:`upgrade_results`, the only
place that knows older layouts: readers and formatters only ever see schema 2.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from bcop.data import TRAIN_VAL_SIZES
from bcop.hub import EVAL_RESULTS_FILE
from bcop.models import list_models, parse_model_name

__all__ = [
    "RESULTS_SCHEMA_VERSION",
    "PAPER_RESULTS",
    "UNRECORDED_HARDWARE",
    "eps_key",
    "certified_at",
    "pgd_sample_size",
    "percent",
    "upgrade_results",
    "read_results",
    "write_results",
    "collect_results",
    "hardware_segments",
    "selection_description",
]

RESULTS_SCHEMA_VERSION = 2

# The paper's Table (official runs, mean of 5 trials), MNIST, eps = 1.58: percentages.
PAPER_RESULTS: dict[str, dict[str, float]] = {
    "bcop-large-mnist": {"clean": 98.77, "certified": 56.66, "pgd": 86.86},
    "rko-large-mnist": {"clean": 98.44, "certified": 55.18, "pgd": 84.67},
    "ossn-large-mnist": {"clean": 98.31, "certified": 53.77, "pgd": 83.37},
    "svcm-large-mnist": {"clean": 97.93, "certified": 38.00, "pgd": 81.37},
    "bcop-small-mnist": {"clean": 97.54, "certified": 45.84, "pgd": 78.00},
}

# Note [Unrecorded hardware]: training metrics began naming the hardware of each epoch part-way
# through this project; every epoch recorded before that ran on its 2-core CPU machine. Such
# epochs get this label, which reads as a CPU label like describe_hardware's ("CPU (...)"), so
# that formatters treat them like any other CPU epochs.
UNRECORDED_HARDWARE = "CPU (2-core machine)"
_V1_UNRECORDED_HARDWARE = "a 2-core CPU machine"  # schema 1's label for the same epochs

_CURVES = ("certified", "pgd", "pgd_paper_attack", "fgm")  # radius -> accuracy maps
_REQUIRED = ("model", "dataset", "n_test", "eps", "clean", "lipschitz", "certified", "pgd", "fgm", "pgd_n")


def eps_key(eps: float) -> str:
    """The key of radius ``eps`` in the accuracy maps: ``1.58 -> "1.58"``, ``1.0 -> "1"``."""
    return f"{eps:g}"


def certified_at(results: dict[str, Any], eps: float) -> float | None:
    """Schema-2 ``results``' certified accuracy (percent) at radius ``eps``; None when the
    evaluation's curve did not include that radius."""
    return results["certified"].get(eps_key(eps))


def pgd_sample_size(results: dict[str, Any]) -> int | None:
    """How many test images PGD attacked when it ran on a sample of the test set (``pgd_n`` below
    ``n_test``); None when it attacked all of them, or the results do not say."""
    n, n_test = results.get("pgd_n"), results.get("n_test")
    return n if isinstance(n, int) and isinstance(n_test, int) and n < n_test else None


def upgrade_results(results: dict[str, Any]) -> dict[str, Any]:
    """The schema-2 form of results of any schema version (a new dict; ``results`` is untouched).

    Version 1 (no ``schema_version``), what :func:`bcop.evaluate.evaluate` returned and every
    file held before this schema: accuracies in [0, 1]; older files also lack the paper's
    attack, the attack loss (then always the margin), the PGD sample (then the first ``pgd_n``
    images), the evaluation hardware, the training record's ``selection`` sentence and its
    hardware (Note [Unrecorded hardware]).

    Raises:
        ValueError: not a results object, from a newer bcop, or missing a required field.
    """
    if not isinstance(results, dict):
        raise ValueError(f"evaluation results must be a JSON object, got {type(results).__name__}")
    version = results.get("schema_version", 1)
    if type(version) is not int or not 1 <= version <= RESULTS_SCHEMA_VERSION:
        newer = type(version) is int and version > RESULTS_SCHEMA_VERSION
        raise ValueError(
            f"schema_version {version!r} "
            + ("was written by a newer bcop: upgrade bcop" if newer else "is not a known results schema")
        )
    missing = [key for key in _REQUIRED if key not in results]
    if missing:
        raise ValueError(f"evaluation results lack {', '.join(missing)}: evaluate the model again")
    upgraded = copy.deepcopy(results)
    if version == 1:
        upgraded = _upgrade_1_to_2(upgraded)
    return upgraded


def percent(fraction: float) -> float:
    """A fraction in [0, 1] in percent, without float noise (0.9862 -> 98.62, not 98.61999...)."""
    return round(100 * fraction, 10)


def _upgrade_1_to_2(results: dict[str, Any]) -> dict[str, Any]:
    results["clean"] = percent(results["clean"])
    for key in _CURVES:
        if results.get(key) is not None:
            results[key] = {eps: percent(value) for eps, value in results[key].items()}
    results.setdefault("pgd_paper_attack", None)
    results.setdefault("attack_loss", "margin")
    results.setdefault("pgd_sample", "first")
    results.setdefault("eval_hardware", None)
    results.setdefault("paper", None)
    if results.get("training") is not None:
        results["training"] = _upgrade_training_1_to_2(results["training"])
    return {"schema_version": 2, **results}


def _upgrade_training_1_to_2(training: dict[str, Any]) -> dict[str, Any]:
    if "selection" not in training:
        training["selection"] = selection_description(training["config"], training["best_epoch"])
    if not training.get("hardware"):
        training["hardware"] = [
            {
                "hardware": UNRECORDED_HARDWARE,
                "epochs": training["epochs"],
                "wall_hours": training["wall_hours"],
                "cpu_hours": training["cpu_hours"],
            }
        ]
    for segment in training["hardware"]:
        if segment["hardware"] == _V1_UNRECORDED_HARDWARE:
            segment["hardware"] = UNRECORDED_HARDWARE
    return training


def read_results(folder: str | Path) -> dict[str, Any] | None:
    """The results beside a model (``FOLDER/eval_results.json``) in schema 2, or None when
    the model has not been evaluated.

    Raises:
        ValueError: the file is not valid JSON or not valid results; the message names it.
    """
    path = Path(folder) / EVAL_RESULTS_FILE
    if not path.is_file():
        return None
    try:
        return upgrade_results(json.loads(path.read_text()))
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError) as err:
        raise ValueError(f"{path} is not valid evaluation results ({err}); evaluate the model again") from err


def write_results(folder: str | Path, results: dict[str, Any]) -> dict[str, Any]:
    """Write ``FOLDER/eval_results.json`` in schema 2 (``results`` of any version, e.g. what
    :func:`bcop.evaluate.evaluate` returns, is upgraded first); returns what was written."""
    upgraded = upgrade_results(results)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / EVAL_RESULTS_FILE).write_text(json.dumps(upgraded, indent=2) + "\n")
    return upgraded


def collect_results(root: str | Path) -> list[dict[str, Any]]:
    """The results of every model folder under ``root`` (e.g. ``checkpoints/``), in schema 2:
    the paper's models in its table's order, then the other pretrained models in the registry's
    order (:func:`bcop.models.list_models`: the later families after the paper's), then the rest
    by name.

    Raises:
        ValueError: no folder under ``root`` holds results, or one holds invalid results.
    """
    folders = sorted(p.parent for p in Path(root).glob(f"*/{EVAL_RESULTS_FILE}"))
    if not folders:
        raise ValueError(f"no */{EVAL_RESULTS_FILE} under {root}: evaluate a model with --export first")
    results = [read_results(folder) for folder in folders]
    order = list(dict.fromkeys([*PAPER_RESULTS, *list_models(pretrained=True)]))
    return sorted(results, key=lambda r: order.index(r["model"]) if r["model"] in order else len(order))


def hardware_segments(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Consecutive epochs that ran on the same hardware, with the wall-clock and CPU hours each
    stretch took (from the cumulative ``wall_seconds`` / ``cpu_seconds`` of each epoch of a
    run's ``metrics.json`` history; epochs without ``hardware``: Note [Unrecorded hardware])."""
    segments: list[dict[str, Any]] = []
    wall = cpu = 0.0
    for h in history:
        hardware = h.get("hardware", UNRECORDED_HARDWARE)
        if not segments or segments[-1]["hardware"] != hardware:
            segments.append({"hardware": hardware, "epochs": 0, "wall_hours": 0.0, "cpu_hours": 0.0})
        segments[-1]["epochs"] += 1
        segments[-1]["wall_hours"] += (h["wall_seconds"] - wall) / 3600
        segments[-1]["cpu_hours"] += (h["cpu_seconds"] - cpu) / 3600
        wall, cpu = h["wall_seconds"], h["cpu_seconds"]
    return segments


def selection_description(cfg: dict[str, Any], epoch: int) -> str:
    """Which data a run trained on and how its model was chosen, as a sentence for the card.

    Args:
        cfg: the run's training config (``model``, optional ``train_split``).
        epoch: the epoch whose model was kept.
    """
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

"""The table of every model in ``checkpoints/`` (``python -m bcop.experiments.successors table``):
accuracies and bound from each model's ``eval_results.json`` (the numbers its card and the demo
show, read by :func:`bcop.results.collect_results`), training cost from the recorded training,
inference time measured here, and each family's published CIFAR-10 figures beside it.

It rewrites the section :data:`SECTION` of ``docs/successors.md`` (the rest of the page is kept)
and the same table in the README, so that the two never differ.
"""

from __future__ import annotations

import math
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from bcop.cards import training_time_cell
from bcop.data import DATASET_SHAPES, TRAIN_VAL_SIZES
from bcop.hub import load_folder
from bcop.models import SUCCESSOR_PAPERS, parse_model_name
from bcop.results import certified_at, collect_results, eps_key, pgd_sample_size

__all__ = [
    "PUBLISHED",
    "PAPERS",
    "SECTION",
    "RADII",
    "inference_ms",
    "table_rows",
    "render",
    "write_section",
    "replace_table",
    "main",
]

SECTION = "## Results"
RADII = (36 / 255, 72 / 255, 1.58)  # the CIFAR-10 literature's radii, and the paper's MNIST one
# Each family's published CIFAR-10 figures (clean, certified at 36/255, in percent), two sources:
# "own": the family's paper's best model as 1LLC (Prach, Brau, Buttazzo & Lampert, CVPR 2024,
# arXiv 2311.16833) lists it in its Table 4, "SOTA from the literature" (AOL's own Table 3 gives
# the same 71.6 / 64.0); "1llc": 1LLC's Table 2, every family retrained in one architecture for
# 24 hours, the size (XS..L) certifying most. AOC is in neither: None, an empty cell.
PUBLISHED: dict[str, dict[str, tuple[float, float, str] | None]] = {
    "bcop": {"own": (72.1, 58.2, "BCOP Large"), "1llc": (74.6, 61.5, "L")},
    "cayley": {"own": (75.3, 59.1, "KW-Large"), "1llc": (74.2, 61.1, "S")},
    "soc": {"own": (76.4, 61.9, "LipNet-25"), "1llc": (76.9, 66.3, "M")},
    "aol": {"own": (71.6, 64.0, "AOL Large"), "1llc": (73.7, 61.5, "L")},
    "sll": {"own": (73.3, 65.8, "X-Large"), "1llc": (75.3, 62.8, "M")},
    "aoc": {"own": None, "1llc": None},
}
PAPERS = {"bcop": "Li et al., NeurIPS 2019", **{f: paper for f, (_, paper) in SUCCESSOR_PAPERS.items()}}


@torch.no_grad()
def inference_ms(model: torch.nn.Module, batch: int, reps: int = 5) -> float:
    """Median wall-clock milliseconds of one eval-mode forward pass of ``batch`` random images
    (after one warm-up pass, which builds any cached weights), on the CPU threads torch has."""
    model.eval()
    x = torch.rand(batch, *DATASET_SHAPES[model.config.dataset])
    model(x)
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        model(x)
        times.append(1000 * (time.perf_counter() - start))
    return statistics.median(times)


def _seconds_per_step(training: dict[str, Any] | None) -> float | None:
    """Wall-clock seconds per optimiser step over the recorded run (None when not recorded)."""
    if not training:
        return None
    cfg = training["config"]
    n_train, n_val = TRAIN_VAL_SIZES[parse_model_name(cfg["model"]).dataset]
    images = n_train + n_val if cfg.get("train_split") == "train+val" else n_train
    images = min(images, cfg.get("limit_train") or images)
    steps = training["epochs"] * math.ceil(images / cfg["batch_size"])
    return 3600 * training["wall_hours"] / steps


def table_rows(root: str | Path, timing: bool = True) -> list[dict[str, Any]]:
    """One row per evaluated model under ``root``, in :func:`collect_results`' order: accuracies
    (percent, None when not evaluated at that radius), bound, training cost, inference
    milliseconds at batch 1 and 128 (None unless ``timing``) and parameters."""
    rows = []
    for r in collect_results(root):
        model, _ = load_folder(Path(root) / r["model"])
        training = r.get("training")
        rows.append({
            "model": r["model"],
            "family": model.config.conv,
            "clean": r["clean"],
            **{f"certified {eps_key(e)}": certified_at(r, e) for e in RADII},
            "pgd": r["pgd"].get(eps_key(1.58)),
            "pgd_sample": pgd_sample_size(r),
            "lipschitz": r["lipschitz"],
            "s_per_step": _seconds_per_step(training),
            "training_time": training_time_cell(training) if training else "",
            "ms_1": inference_ms(model, 1) if timing else None,
            "ms_128": inference_ms(model, 128) if timing else None,
            "parameters": sum(p.numel() for p in model.parameters()),
        })  # fmt: skip
    return rows


def _cell(value: float | None, spec: str) -> str:
    return "" if value is None else format(value, spec)


def _pgd_cell(row: dict[str, Any]) -> str:
    """PGD accuracy, with the number of attacked images when PGD ran on a sample of the test set
    (its card says which images), so that a sample's figure never reads as the full set's."""
    cell = _cell(row["pgd"], ".2f")
    return f"{cell} (n = {row['pgd_sample']:,})" if cell and row["pgd_sample"] else cell


def _published(figures: tuple[float, float, str] | None, label: str = "") -> str:
    return "" if figures is None else f"{figures[0]:.1f} / {figures[1]:.1f} ({label}{figures[2]})"


def render(rows: list[dict[str, Any]]) -> str:
    """The Markdown table (accuracies on MNIST; the published columns are CIFAR-10's)."""
    lines = [
        "| model | clean | cert. 36/255 | cert. 72/255 | cert. 1.58 | PGD 1.58 | bound | s / step "
        "| training (CPU-h, epochs) | ms, batch 1 | ms, batch 128 | parameters | paper "
        "| its CIFAR-10 clean / cert. 36/255 | 1LLC's 24-h CIFAR-10 clean / cert. 36/255 |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        published = PUBLISHED.get(row["family"], {})
        cells = [
            row["model"], _cell(row["clean"], ".2f"),
            *(_cell(row[f"certified {eps_key(e)}"], ".2f") for e in RADII),
            _pgd_cell(row), _cell(row["lipschitz"], ".7g"), _cell(row["s_per_step"], ".2f"),
            row["training_time"], _cell(row["ms_1"], ".1f"), _cell(row["ms_128"], ".1f"),
            f"{row['parameters']:,}", PAPERS.get(row["family"], ""),
            _published(published.get("own")), _published(published.get("1llc"), "size "),
        ]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


NOTES = (
    "Ours are MNIST test-set figures (accuracies in %, from each model's `eval_results.json`, "
    "the numbers its card and the demo show). The last two columns are CIFAR-10, another task, at "
    "radius 36/255, not comparable with ours: the family's paper's best model as 1LLC (Prach et "
    "al., CVPR 2024) lists it in its Table 4, and 1LLC's own retraining of every family in one "
    "architecture for 24 hours (its Table 2, the size certifying most); AOC is in neither. An "
    "empty certified cell: "
    "the model was evaluated before the curve had that radius (`python -m bcop.evaluate "
    "--complete-curve checkpoints/NAME` adds it). A PGD cell with n: PGD attacked n test images "
    "evenly spaced through the test set (the card says which); without n, all of it. "
    "s / step: wall clock over the recorded training, whatever hardware it ran on; the "
    "training time is the summary table's (`python -m bcop.evaluate --summary`): CPU-hours, GPU "
    "epochs as wall-clock hours; "
    "ms: measured by this command ({where}; machines possibly shared with other jobs), eval "
    "mode, median of 5."
)


def write_section(page: str | Path, heading: str, body: str) -> None:
    """Replace the section ``heading`` (e.g. ``"## Results"``) of ``page``, up to the next
    ``## `` heading, with ``body``; appended at the end when the page has no such section."""
    page = Path(page)
    text = page.read_text() if page.is_file() else ""
    section = f"{heading}\n\n{body.strip()}\n"
    if heading + "\n" not in text:
        page.write_text(text.rstrip("\n") + "\n\n" + section)
        return
    before, rest = text.split(heading + "\n", 1)
    after = rest[rest.index("\n## ") + 1 :] if "\n## " in rest else ""
    page.write_text(before + section + ("\n" + after if after else ""))


def replace_table(page: str | Path, table: str) -> None:
    """Replace the Markdown table of ``page`` whose header row is ``table``'s with ``table``.

    Raises:
        ValueError: ``page`` has no table with that header row (or more than one).
    """
    page = Path(page)
    lines = page.read_text().split("\n")
    new = table.rstrip("\n").split("\n")
    starts = [i for i, line in enumerate(lines) if line == new[0]]
    if len(starts) != 1:
        raise ValueError(f"{page} has {len(starts)} tables with the header {new[0][:60]!r}...; expected 1")
    end = starts[0]
    while end < len(lines) and lines[end].startswith("|"):
        end += 1
    page.write_text("\n".join(lines[: starts[0]] + new + lines[end:]))


def main(
    root: str | Path = "checkpoints",
    page: str | Path | None = "docs/successors.md",
    readme: str | Path | None = None,
) -> str:
    """Build the table of the models under ``root``, write it into ``page``'s section
    :data:`SECTION` and over the same table in ``readme``, and print it."""
    table = render(table_rows(root))
    where = f"{torch.get_num_threads()} CPU thread(s), {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
    if page is not None:
        write_section(page, SECTION, f"{NOTES.format(where=where)}\n\n{table}")
    if readme is not None:
        replace_table(readme, table)
    print(table)
    return table

"""The "Models" tab: every served model's evaluation results, certified accuracy against ε, and
its model card."""

from __future__ import annotations

import re
from typing import Any

import gradio as gr
import plotly.graph_objects as go

from bcop.hub import checkpoints_dir
from bcop.report import certified_curve
from bcop.results import pgd_sample_size
from demo import figures
from demo.certify_tab import FAST, PRIVATE
from demo.errors import friendly, validated
from demo.store import ModelStore, ServedModel, display_path, hub_url

EVAL_EPS = "1.58"  # the key of the headline metrics in eval_results.json
# The long headers break where <br> says, so that the table fits the page without squeezing a cell.
HEADER = (
    "| model | clean | certified | PGD | PGD,<br>paper's attack | Lipschitz<br>bound "
    "| paper:<br>clean / certified / PGD | loaded from | model<br>card |\n"
    "|---|---|---|---|---|---|---|---|---|"
)
COLUMNS_NOTE = (
    "Accuracies on the 10,000 MNIST test images, in %, at the L2 radius ε = 1.58 of the paper. "
    "**Certified**: correct, with a certified radius of at least ε, a proven lower bound on robust "
    "accuracy. The two PGD columns are attacks, "
    "upper bounds on it: **PGD** is 200 steps of 0.01 from a random start in the ε-ball, maximising "
    "the logit margin, and an image counts as broken if any step fools the model (the stronger "
    "attack); **PGD, paper's attack** starts where the paper's evaluation code does and counts only "
    "the last step: weaker, and the one to compare with the paper's PGD column. A PGD figure "
    "with *n* attacked only *n* test images, evenly spaced through the set (the card says which)."
)
FRONT_MATTER = re.compile(r"\A---\s*\n.*?\n---\s*(\n|\Z)", re.DOTALL)


def card_body(card: str) -> str:
    """A model card without its YAML front matter (the metadata the Hub reads), for display."""
    return FRONT_MATTER.sub("", card, count=1).lstrip()


def _pct(value: Any) -> str:
    return f"{value:.1f}%" if isinstance(value, int | float) else "—"


def _pgd(results: dict[str, Any], key: str) -> str:
    """A PGD column's cell, with the number of attacked images when PGD ran on a sample."""
    cell, n = _pct(_at(results.get(key))), pgd_sample_size(results)
    return f"{cell} (*n* = {n:,})" if n and cell != "—" else cell


def _at(metric: Any) -> Any:
    return metric.get(EVAL_EPS) if isinstance(metric, dict) else metric


def _metrics(served: ServedModel) -> list[str]:
    try:
        results = served.results()
    except ValueError as err:
        return [str(err), "", "", "", f"{served.lipschitz:.4g}", ""]
    if results is None:
        return ["not evaluated yet", "—", "—", "—", f"{served.lipschitz:.4g}", "—"]
    paper = results.get("paper") or {}
    return [
        _pct(results.get("clean")),
        _pct(_at(results.get("certified"))),
        _pgd(results, "pgd"),
        _pgd(results, "pgd_paper_attack"),
        f"{results.get('lipschitz', served.lipschitz):.7g}",
        " / ".join(_pct(paper.get(k)) for k in ("clean", "certified", "pgd")) if paper else "—",
    ]


class Actions:
    """The tab's event handlers (also the API endpoints ``models`` and ``model_card``)."""

    def __init__(self, store: ModelStore) -> None:
        self.store = store

    def overview_row(self, name: str) -> str:
        """One model's row of the overview table (markdown)."""
        try:
            served = self.store.get(name)
        except Exception as err:
            return f"| {name} | could not be loaded: {err} | | | | | | | |"
        repo = served.loaded.repo_id
        card = f"[{repo}]({hub_url(repo)})" if repo else ("below" if served.loaded.card else "none")
        return "| " + " | ".join([name, *_metrics(served), self.store.source(served), card]) + " |"

    @friendly
    def overview(self) -> str:
        """A markdown table of every served model's evaluation results."""
        if not self.store.names:
            return f"No MNIST models found in `{display_path(checkpoints_dir())}`."
        return "\n".join([HEADER, *(self.overview_row(name) for name in self.store.names)])

    @friendly
    def accuracy_chart(self) -> go.Figure:
        """Certified accuracy against ε for every evaluated model."""
        curves = []
        for name in self.store.names:
            try:
                results = self.store.get(name).results()
            except Exception:  # the overview table says why
                continue
            if results and certified_curve(results):
                curves.append((name, certified_curve(results)))
        return figures.certified_accuracy_figure(curves, float(EVAL_EPS))

    @friendly
    def model_card(self, name: str) -> str:
        """The model card (README.md) of one served model, without its YAML metadata."""
        card = self.store.get(name).loaded.card
        return card_body(card) if card else f"{name} has no model card."


def create_tab(store: ModelStore, demo: gr.Blocks) -> None:
    """Build the tab inside an open ``gr.Tab``; its contents load with the page of ``demo``."""
    actions, names = Actions(store), store.names
    gr.Markdown(COLUMNS_NOTE)
    overview = gr.Markdown(
        "Loading the models…", label="Models table", show_label=False, elem_id="models-table"
    )
    chart = gr.Plot(label="Certified accuracy against ε")
    gr.Markdown("### Model card")
    card_choice = validated(gr.Dropdown(names, value=names[0] if names else None, label="Model"))
    card = gr.Markdown(label="Model card", show_label=False, elem_id="model-card")
    demo.load(actions.overview, None, [overview], api_name="models", **FAST)
    demo.load(actions.accuracy_chart, None, [chart], **PRIVATE, **FAST)
    card_choice.change(actions.model_card, [card_choice], [card], api_name="model_card", **FAST)
    demo.load(actions.model_card, [card_choice], [card], **PRIVATE, **FAST)

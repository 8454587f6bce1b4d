"""The "Orthogonality" tab: every singular value of each convolution of the chosen models."""

from __future__ import annotations

from typing import Any

import gradio as gr
import pandas as pd
import plotly.graph_objects as go

from demo import figures
from demo.certify_tab import FAST, PRIVATE
from demo.errors import friendly, validated
from demo.store import ModelStore

NO_MODEL_NOTE = "*Choose at least one model.*"
SPECTRA_COLUMNS = ["model", "layer", "input (C×H×W)", "count", "min σ", "median σ", "max σ"]
# Checked against the shipped checkpoints by tests/test_app.py (test_the_orthogonality_caption_...).
INTRO = (
    "Every singular value of each convolution, as a linear operator on the input size that layer "
    "sees (the table gives each layer's smallest, median and largest). **BCOP**'s are all 1 "
    "(orthogonal): its box is flat and its markers (◆ smallest and largest) sit on the σ = 1 "
    "line, and so are those of the later orthogonal families (**Cayley, SOC, AOC**). **RKO, OSSN "
    "and SVCM**, and the later **AOL**, are 1-Lipschitz too: their largest value is 1 (OSSN's, "
    "from power iteration, up to 1% above), the rest spread below it. (**SLL**'s layers are not "
    "linear: they have no singular values to show.) The **unconstrained** "
    "convolution (plain) has no bound: its largest values lie well above 1, while its medians "
    "can lie below 1."
)


class Actions:
    """The tab's event handlers (also the API endpoint ``singular_values``)."""

    def __init__(self, store: ModelStore) -> None:
        self.store = store

    @friendly
    def singular_values(self, models: list[str]) -> tuple[go.Figure, pd.DataFrame]:
        """Singular values of every convolution of each chosen model: chart and summary table."""
        rows, table = [], []
        for name in self.store.check(models):
            spectra = self.store.get(name).spectra()
            rows.append((name, spectra))
            for s in spectra:
                v = s.singular_values
                shape = "×".join(map(str, s.input_shape))
                stats = [round(float(t), 4) for t in (v.min(), v.median(), v.max())]
                table.append([name, s.name, shape, v.numel(), *stats])
        return figures.spectra_figure(rows), pd.DataFrame(table, columns=SPECTRA_COLUMNS)

    @friendly
    def when_shown(self, models: list[str]) -> tuple[Any, ...]:
        """:meth:`singular_values` when the tab opens or the models change: (chart, table, note,
        their frame); with no model chosen the frame is hidden and the note says so."""
        if not models:
            return None, None, NO_MODEL_NOTE, gr.Column(visible=False)
        return *self.singular_values(models), "", gr.Column(visible=True)


def create_tab(store: ModelStore, tab: gr.Tab) -> None:
    """Build the tab inside the open ``tab`` (drawn when it is opened)."""
    actions = Actions(store)
    gr.Markdown(INTRO)
    with gr.Row():
        sv_models = validated(
            gr.CheckboxGroup(store.choices(), value=store.defaults(), label="Models", scale=3)
        )
        sv_btn = gr.Button("Show singular values", scale=1)
    sv_note = gr.Markdown()
    with gr.Column() as sv_box:
        sv_plot = gr.Plot(label="Singular values per layer")
        sv_table = gr.Dataframe(headers=SPECTRA_COLUMNS, label="Summary", interactive=False)
    drawn = sv_btn.click(
        actions.singular_values, [sv_models], [sv_plot, sv_table], api_name="singular_values", **FAST
    )
    drawn.success(lambda: ("", gr.Column(visible=True)), None, [sv_note, sv_box], queue=False, **PRIVATE)
    for shown in (tab.select, sv_models.change):
        shown(actions.when_shown, [sv_models], [sv_plot, sv_table, sv_note, sv_box], **PRIVATE, **FAST)

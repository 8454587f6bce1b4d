"""The "Wasserstein distance" tab: Lipschitz critics trained live, side by side, each estimate of
W1 drawn against steps (with the true value where it is known).

The computation is :func:`bcop.wasserstein.train_critics_side_by_side`; this module only lays out the
widgets, checks the user's choices and draws the figure.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import gradio as gr
import plotly.graph_objects as go

from bcop.models import list_models
from bcop.wasserstein import PAIRS, make_pair, train_critics_side_by_side
from demo import figures

__all__ = ["LIVE_CRITICS", "create_tab", "estimate_wasserstein"]

LIVE_CRITICS = tuple(n for n in list_models() if n.split("-")[1:3] == ["small", "mnist"])
DEFAULT_CRITICS = ("bcop-small-mnist", "rko-small-mnist", "ossn-small-mnist", "svcm-small-mnist")
PAIR_LABELS = {
    "translated": "MNIST vs MNIST shifted by an image δ (W1 = ‖δ‖₂ known)",
    "gaussians": "two Gaussians N(μa, σ²I), N(μb, σ²I) (W1 = ‖μa − μb‖₂ known)",
    "class-vs-class": "one MNIST digit vs another (W1 unknown)",
    "real-vs-generator": "MNIST vs our WGAN-GP generator (W1 unknown)",
}
MAX_STEPS, DEFAULT_STEPS = 1000, 300
MIN_BATCH, MAX_BATCH, DEFAULT_BATCH = 8, 64, 64
MAX_SECONDS, DEFAULT_SECONDS = 120, 60
PROBE_SIZE = 500  # held-out samples of each distribution per estimate
REPORTS = 20  # estimates drawn per run


def _checked(
    pair: str, critics: Sequence[str] | None, steps: float, batch_size: float, seconds: float
) -> list[str]:
    names = list(dict.fromkeys(critics or []))
    unknown = [n for n in names if n not in LIVE_CRITICS]
    if not names or unknown:
        raise gr.Error(
            f"choose one or more critics among {', '.join(LIVE_CRITICS)}"
            + (f" (not {unknown})" if unknown else "")
        )
    if pair not in PAIRS:
        raise gr.Error(f"choose a pair among {', '.join(PAIRS)}, not {pair!r}")
    if not (isinstance(steps, int | float) and 1 <= steps <= MAX_STEPS and float(steps).is_integer()):
        raise gr.Error(f"steps must be a whole number between 1 and {MAX_STEPS}, got {steps!r}")
    if not (isinstance(batch_size, int | float) and MIN_BATCH <= batch_size <= MAX_BATCH):
        raise gr.Error(f"batch size must be between {MIN_BATCH} and {MAX_BATCH}, got {batch_size!r}")
    if not (isinstance(seconds, int | float) and 1 <= seconds <= MAX_SECONDS):
        raise gr.Error(f"the time budget must be between 1 and {MAX_SECONDS} seconds, got {seconds!r}")
    return names


def estimate_wasserstein(
    pair: str, critics: list[str], steps: float, batch_size: float, seconds: float
) -> Iterator[tuple[go.Figure, str]]:
    """Train the chosen critics on ``pair`` and stream (figure, status) until the step or time
    budget is spent."""
    names = _checked(pair, critics, steps, batch_size, seconds)
    try:
        distributions = make_pair(pair)
    except (FileNotFoundError, ValueError) as err:
        raise gr.Error(f"the pair {pair!r} is not available: {err}") from err
    steps = int(steps)
    runs = train_critics_side_by_side(
        names,
        distributions,
        steps,
        batch_size=int(batch_size),
        report_every=max(1, steps // REPORTS),
        probe_size=PROBE_SIZE,
    )
    for snapshot in runs:
        latest = ", ".join(f"{n} {h[-1].value:.3f}" for n, h in snapshot.estimates.items())
        status = f"step {snapshot.step}/{steps} · {snapshot.seconds:.1f} s · W1 ≥ {latest}"
        figure = figures.estimates_figure(snapshot, distributions.true_w1, distributions.label)
        if snapshot.seconds > seconds and snapshot.step < steps:
            yield figure, status + f" · stopped at the {seconds:g} s time budget"
            return
        yield figure, status + (" · done" if snapshot.step == steps else "")


def create_tab() -> None:
    """Build the tab's widgets and events inside an open ``gr.Tab`` (or ``gr.Blocks``)."""
    gr.Markdown(
        "Any 1-Lipschitz critic f gives a lower bound E_P f − E_Q f on the Wasserstein-1 distance. "
        "Critics of each kind (the registry's Small networks with a one-unit head) are trained "
        "on the same batches; each estimate is on held-out samples and divided by the critic's "
        "exact Lipschitz bound, so it is a true lower bound up to sampling error (the bars show "
        "one standard error). Higher is tighter."
    )
    with gr.Row():
        pair = gr.Dropdown(
            [(label, name) for name, label in PAIR_LABELS.items()], value="translated", label="Distributions"
        )
        critics = gr.CheckboxGroup(list(LIVE_CRITICS), value=list(DEFAULT_CRITICS), label="Critics", scale=2)
    with gr.Row():
        steps = gr.Slider(10, MAX_STEPS, value=DEFAULT_STEPS, step=10, label="Steps")
        batch = gr.Slider(
            MIN_BATCH, MAX_BATCH, value=DEFAULT_BATCH, step=8, label="Batch (each distribution)"
        )
        seconds = gr.Slider(5, MAX_SECONDS, value=DEFAULT_SECONDS, step=5, label="Time budget (s)")
    with gr.Row():
        run_btn = gr.Button("Estimate", variant="primary")
        stop_btn = gr.Button("Stop")
    status = gr.Markdown()
    plot = gr.Plot(label="W1 estimates")
    event = run_btn.click(
        estimate_wasserstein,
        [pair, critics, steps, batch, seconds],
        [plot, status],
        api_name="estimate_wasserstein",
        concurrency_id="wasserstein",
        concurrency_limit=1,
    )
    stop_btn.click(None, cancels=[event])

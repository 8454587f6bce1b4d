"""The "Wasserstein distance" tab: Lipschitz critics trained live, side by side, each estimate of
W1 drawn against steps (with the true value where it is known).

The computation is :func:`bcop.wasserstein.train_critics_side_by_side`; this module only lays out the
widgets, checks the user's choices and draws the figure.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from threading import Event

import gradio as gr
import plotly.graph_objects as go

from bcop.models import list_models
from bcop.wasserstein import PAIRS, EstimateSnapshot, Pair, make_pair, train_critics_side_by_side
from demo import figures
from demo.certify_tab import PRIVATE
from demo.errors import friendly, validated
from demo.runs import STOPPED, TakingTurns

__all__ = ["LIVE_CRITICS", "Actions", "create_tab", "estimate_wasserstein"]

LIVE_CRITICS = tuple(n for n in list_models() if n.split("-")[1:3] == ["small", "mnist"])
DEFAULT_CRITICS = ("bcop-small-mnist", "rko-small-mnist", "ossn-small-mnist", "svcm-small-mnist")
PAIR_LABELS = {
    "translated": "MNIST vs MNIST shifted by an image δ (W1 = ‖δ‖₂ known)",
    "gaussians": "two Gaussians N(μa, σ²I), N(μb, σ²I) (W1 = ‖μa − μb‖₂ known)",
    "class-vs-class": "one MNIST digit vs another (W1 unknown)",
    "real-vs-generator": "MNIST vs our WGAN-GP generator (W1 unknown)",
}
# The default run (4 critics, 200 steps, 10 estimates) takes about 50 s on one thread of a
# loaded 2-core machine (0.23 s a step, 0.6 s an estimate): it ends within its 90 s budget.
MAX_STEPS, DEFAULT_STEPS = 1000, 200
MIN_BATCH, MAX_BATCH, DEFAULT_BATCH = 8, 64, 64
MAX_SECONDS, DEFAULT_SECONDS = 120, 90
PROBE_SIZE = 500  # held-out samples of each distribution per estimate
REPORTS = 10  # estimates drawn per run
INTRO = (
    "Any 1-Lipschitz critic f gives a lower bound E_P f − E_Q f on the Wasserstein-1 distance. "
    "Critics of each kind (the registry's Small networks with a one-unit head) are trained "
    "on the same batches; each estimate is on held-out samples and divided by the critic's "
    "exact Lipschitz bound, so it is a lower bound up to sampling error: read it as estimate ± "
    "standard error (the bars), which can reach a little above a known W1. Higher is tighter. "
    "One run at a time: a visitor who asks during another visitor's run is told how long it has left."
)


def _checked(
    pair: str, critics: Sequence[str] | None, steps: float, batch_size: float, seconds: float
) -> list[str]:
    names = list(dict.fromkeys(critics or []))
    unknown = [n for n in names if n not in LIVE_CRITICS]
    if not names or unknown:
        raise ValueError(
            f"choose one or more critics among {', '.join(LIVE_CRITICS)}"
            + (f" (not {unknown})" if unknown else "")
        )
    if pair not in PAIRS:
        raise ValueError(f"choose a pair among {', '.join(PAIRS)}, not {pair!r}")
    if not (isinstance(steps, int | float) and 1 <= steps <= MAX_STEPS and float(steps).is_integer()):
        raise ValueError(f"steps must be a whole number between 1 and {MAX_STEPS}, got {steps!r}")
    if not (isinstance(batch_size, int | float) and MIN_BATCH <= batch_size <= MAX_BATCH):
        raise ValueError(f"batch size must be between {MIN_BATCH} and {MAX_BATCH}, got {batch_size!r}")
    if not (isinstance(seconds, int | float) and 1 <= seconds <= MAX_SECONDS):
        raise ValueError(f"the time budget must be between 1 and {MAX_SECONDS} seconds, got {seconds!r}")
    return names


def _status(snapshot: EstimateSnapshot) -> str:
    """Progress and each critic's latest estimate ± its standard error (a lower bound on W1 only
    up to that sampling error, so an estimate can read a little above a known W1)."""
    latest = ", ".join(f"{n} {h[-1].value:.3f} ± {h[-1].stderr:.3f}" for n, h in snapshot.estimates.items())
    progress = f"step {snapshot.step}/{snapshot.total_steps} · {snapshot.seconds:.1f} s"
    return f"{progress} · W1 estimate ± standard error: {latest}"


def _reported(
    runs: Iterator[EstimateSnapshot], distributions: Pair, seconds: float, stop: Event
) -> Iterator[tuple[go.Figure, str]]:
    """Figure and status of each snapshot, until the last, the time budget or ``stop``."""
    for snapshot in runs:
        figure = figures.estimates_figure(snapshot, distributions.true_w1, distributions.label)
        status, done = _status(snapshot), snapshot.step == snapshot.total_steps
        if stop.is_set() and not done:
            yield figure, status + STOPPED
            return
        if snapshot.seconds > seconds and not done:
            yield figure, status + f" · stopped at the {seconds:g} s time budget"
            return
        yield figure, status + (" · done" if done else "")


def estimate_wasserstein(
    pair: str, critics: list[str], steps: float, batch_size: float, seconds: float, stop: Event | None = None
) -> Iterator[tuple[go.Figure, str]]:
    """Train the chosen critics on ``pair`` and stream (figure, status) until the step or time
    budget is spent, or ``stop`` is set.

    Raises:
        ValueError: a choice out of range, or a pair that cannot be made here.
    """
    names = _checked(pair, critics, steps, batch_size, seconds)
    try:
        distributions = make_pair(pair)
    except (FileNotFoundError, ValueError) as err:
        raise ValueError(f"the pair {pair!r} is not available: {err}") from err
    steps = int(steps)
    runs = train_critics_side_by_side(
        names,
        distributions,
        steps,
        batch_size=int(batch_size),
        report_every=max(1, steps // REPORTS),
        probe_size=PROBE_SIZE,
    )
    yield from _reported(runs, distributions, float(seconds), stop or Event())


class Actions:
    """The tab's event handlers (also the API endpoint ``estimate_wasserstein``)."""

    def __init__(self) -> None:
        self.turns = TakingTurns()

    def waiting(self, request: gr.Request) -> str:
        """The status while a run waits for its turn (another visitor's may hold it)."""
        return self.turns.waiting_note(request.session_hash)

    def stop(self, request: gr.Request) -> None:
        """Stop this visitor's run at its next estimate, which then says it stopped."""
        self.turns.stop(request.session_hash)

    @friendly
    def estimate_wasserstein(
        self,
        pair: str,
        critics: list[str],
        steps: float,
        batch_size: float,
        seconds: float,
        request: gr.Request,
    ) -> Iterator[tuple[go.Figure, str]]:
        """Train the chosen critics on ``pair`` and stream (figure, status) until the step or
        time budget is spent, or Stop."""
        budget = float(seconds) if isinstance(seconds, int | float) else 0.0
        with self.turns.running(request.session_hash, budget) as stop:
            yield from estimate_wasserstein(pair, critics, steps, batch_size, seconds, stop)


def create_tab() -> None:
    """Build the tab's widgets and events inside an open ``gr.Tab`` (or ``gr.Blocks``)."""
    actions = Actions()
    gr.Markdown(INTRO)
    with gr.Row():
        pair = validated(
            gr.Dropdown(
                [(label, name) for name, label in PAIR_LABELS.items()],
                value="translated",
                label="Distributions",
            )
        )
        critics = validated(
            gr.CheckboxGroup(list(LIVE_CRITICS), value=list(DEFAULT_CRITICS), label="Critics", scale=2)
        )
    with gr.Row():
        steps = validated(gr.Slider(10, MAX_STEPS, value=DEFAULT_STEPS, step=10, label="Steps"))
        batch = validated(
            gr.Slider(MIN_BATCH, MAX_BATCH, value=DEFAULT_BATCH, step=8, label="Batch (each distribution)")
        )
        seconds = validated(gr.Slider(5, MAX_SECONDS, value=DEFAULT_SECONDS, step=5, label="Time budget (s)"))
    with gr.Row():
        run_btn = gr.Button("Estimate", variant="primary")
        stop_btn = gr.Button("Stop")
    status = gr.Markdown(label="Status", show_label=False, elem_id="wasserstein-status")
    plot = gr.Plot(label="W1 estimates")
    waiting = run_btn.click(actions.waiting, None, [status], queue=False, **PRIVATE)
    waiting.then(
        actions.estimate_wasserstein,
        [pair, critics, steps, batch, seconds],
        [plot, status],
        api_name="estimate_wasserstein",
        concurrency_id="wasserstein",
        concurrency_limit=1,
        show_progress_on=[plot],
    )
    stop_btn.click(actions.stop, None, None, queue=False, **PRIVATE)

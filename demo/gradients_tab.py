"""The "Gradient norms" tab: how much of the output's gradient reaches each layer, for the current
image (one gradient, and every output direction through the Jacobian's singular values), and a
live side-by-side training run from scratch."""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from threading import Event
from typing import Any

import gradio as gr
import plotly.graph_objects as go
import torch

from bcop.data import load_dataset
from bcop.gradnorm import layer_gradient_norms
from bcop.live import TrainingSnapshot, train_classifiers_side_by_side
from bcop.losses import TRAINING_LOSSES
from bcop.spectra import jacobian_spectra
from demo import figures
from demo.certify_tab import FAST, PRIVATE, CertifyTab
from demo.errors import friendly, validated
from demo.inputs import current_input, model_input
from demo.runs import STOPPED, TakingTurns
from demo.store import ModelStore

LIVE_MODELS = (
    "bcop-small-mnist",
    "ossn-small-mnist",
    "plain-small-mnist",
    "bcop-small-mnist-relu",
    "svcm-small-mnist",
    "rko-small-mnist",
)
DEFAULT_LIVE_MODELS = LIVE_MODELS[:4]
MAX_TRAIN_STEPS, DEFAULT_TRAIN_STEPS = 500, 200
MIN_BATCH, MAX_BATCH, DEFAULT_BATCH = 8, 128, 64
TRAIN_TIME_LIMIT_S = 180.0
NO_IMAGE_NOTE = (
    "*No image yet: draw a digit, upload an image or pick an example on the Certify & attack tab.*"
)
UNUSABLE_NOTE = "*The image on the Certify & attack tab cannot be used: that tab says why.*"
NO_MODEL_NOTE = "*Choose at least one model.*"

INTRO = (
    "How much of the output's gradient reaches each layer of the current image's networks. "
    "**Left:** one gradient, that of the logit margin for this image, as a fraction of its norm "
    "at the logits (√2 for every network). **Right:** every output direction at once: the band "
    "runs from the smallest to the largest singular value of the Jacobian of the ten logits with "
    "respect to each layer's input, so any gradient of the logits keeps between those fractions "
    "of its norm; the left curve, one such gradient, lies in its band. A gradient-norm-preserving "
    "network (BCOP or Björck layers with MaxMin) keeps every value at 1 from the logits back to "
    "the last layer that adds channels.\n\n"
    "**A convolution that adds channels cannot preserve every gradient's norm** (layers marked "
    "*adds*): it maps a smaller space into a larger one, so its transpose, which "
    "back-propagation applies, must drop the part of the gradient outside its range, and the "
    "band falls below 1 there. So on a given image the left curve can end lower for BCOP than "
    "for another network. Where a band's top drops at a layer that does not add channels, that "
    "layer shrinks every gradient, and the chart names the model and the layer."
)
LIVE_INTRO = (
    "### Live: train from scratch, side by side\n"
    "Small networks that differ only in their convolution (or activation) train on the same "
    "MNIST batches; the chart updates every few steps with the gradient norm at each layer "
    "(true-class logit margin, fixed probe batch) and the loss. "
    f"At most {MAX_TRAIN_STEPS} steps and {TRAIN_TIME_LIMIT_S:.0f} s."
)


@functools.lru_cache(maxsize=1)
def _mnist_train() -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = load_dataset("mnist", "train").tensors
    return images, labels


def _check_training(models: Sequence[str], steps: Any, batch_size: Any, loss: Any) -> list[str]:
    """The chosen live networks; raises ValueError naming the first bad setting."""
    names = list(dict.fromkeys(models or []))
    unknown = [n for n in names if n not in LIVE_MODELS]
    if not names or unknown:
        raise ValueError(
            f"choose one or more of {', '.join(LIVE_MODELS)}" + (f" (not {unknown})" if unknown else "")
        )
    if not (isinstance(steps, int | float) and 1 <= steps <= MAX_TRAIN_STEPS and float(steps).is_integer()):
        raise ValueError(f"steps must be a whole number between 1 and {MAX_TRAIN_STEPS}, got {steps!r}")
    if not (isinstance(batch_size, int | float) and MIN_BATCH <= batch_size <= MAX_BATCH):
        raise ValueError(f"batch size must be between {MIN_BATCH} and {MAX_BATCH}, got {batch_size!r}")
    if loss not in TRAINING_LOSSES:
        raise ValueError(f"loss must be one of {TRAINING_LOSSES}, got {loss!r}")
    return [n for n in LIVE_MODELS if n in names]


def _status(snapshot: TrainingSnapshot) -> str:
    last = ", ".join(f"{n} {v[-1]:.3f}" for n, v in snapshot.losses.items() if v)
    status = f"step {snapshot.step}/{snapshot.total_steps} · {snapshot.seconds:.1f} s"
    return status + (f" · loss: {last}" if last else "")


class Actions:
    """The tab's event handlers (also the API endpoints ``gradient_norms`` and ``train_live``)."""

    def __init__(self, store: ModelStore) -> None:
        self.store = store
        self.turns = TakingTurns()

    def waiting(self, request: gr.Request) -> str:
        """The status while a training waits for its turn (another visitor's may hold it)."""
        return self.turns.waiting_note(request.session_hash)

    def stop(self, request: gr.Request) -> None:
        """Ask the live training of this visitor's session to stop at its next snapshot, which
        it then shows as stopped (cancelling the event instead would leave the page's status at
        the last snapshot, with no word that it stopped)."""
        self.turns.stop(request.session_hash)

    @friendly
    def gradient_norms(self, sketch: dict | None, upload: str | None, models: list[str]) -> go.Figure:
        """Per-layer gradient norms of the predicted class's margin, and the Jacobian's singular
        values per layer, for the image."""
        names = self.store.check(models)
        x = model_input(sketch, upload)
        rows = []
        for name in names:
            model = self.store.get(name).model
            rows.append((name, layer_gradient_norms(model, x), jacobian_spectra(model, x)))
        return figures.gradnorm_figure(rows)

    @friendly
    def when_shown(self, sketch: dict | None, upload: str | None, models: list[str]) -> tuple[Any, ...]:
        """:meth:`gradient_norms` when the tab opens or the models change: (chart, note, chart's
        frame). Without a usable image or a model the frame is hidden and the note says why."""
        try:
            x = current_input(sketch, upload)
        except ValueError:  # an unusable image: the Certify tab says why
            return _no_chart(UNUSABLE_NOTE)
        if x is None:
            return _no_chart(NO_IMAGE_NOTE)
        if not models:
            return _no_chart(NO_MODEL_NOTE)
        return self.gradient_norms(sketch, upload, models), "", gr.Column(visible=True)

    @friendly
    def train_live(
        self, models: list[str], steps: float, batch_size: float, loss: str, request: gr.Request
    ) -> Iterator[tuple[go.Figure, str]]:
        """Train small networks from scratch side by side, streaming gradient norms and losses."""
        names = _check_training(models, steps, batch_size, loss)
        try:
            images, labels = _mnist_train()
        except Exception as err:
            raise ValueError(
                f"MNIST could not be loaded ({err}). The live experiment trains on MNIST: load it once "
                'with internet access (python -c "from bcop.data import load_dataset; '
                "load_dataset('mnist', 'train')\")."
            ) from err
        steps = int(steps)
        runs = train_classifiers_side_by_side(
            names,
            images,
            labels,
            steps,
            batch_size=int(batch_size),
            loss=loss,
            report_every=max(5, steps // 50),
        )
        with self.turns.running(request.session_hash, TRAIN_TIME_LIMIT_S) as stop:
            yield from _reported(runs, stop)


def _no_chart(note: str) -> tuple[Any, ...]:
    return None, note, gr.Column(visible=False)


def _reported(runs: Iterator[TrainingSnapshot], stop: Event) -> Iterator[tuple[go.Figure, str]]:
    """Chart and status of each snapshot, until the last, the time limit or ``stop``."""
    for snapshot in runs:
        done = snapshot.step == snapshot.total_steps
        if stop.is_set() and not done:
            yield figures.training_figure(snapshot), _status(snapshot) + STOPPED
            return
        if snapshot.seconds > TRAIN_TIME_LIMIT_S and not done:
            limit = f" · stopped at the {TRAIN_TIME_LIMIT_S:.0f} s time limit"
            yield figures.training_figure(snapshot), _status(snapshot) + limit
            return
        yield figures.training_figure(snapshot), _status(snapshot) + (" · done" if done else "")


def _live_section() -> tuple[gr.CheckboxGroup, gr.Slider, gr.Slider, gr.Radio, gr.Button, gr.Button]:
    gr.Markdown(LIVE_INTRO)
    with gr.Row():
        live_models = validated(
            gr.CheckboxGroup(list(LIVE_MODELS), value=list(DEFAULT_LIVE_MODELS), label="Networks", scale=3)
        )
        with gr.Column(scale=2):
            steps = validated(gr.Slider(1, MAX_TRAIN_STEPS, value=DEFAULT_TRAIN_STEPS, step=1, label="Steps"))
            batch = validated(
                gr.Slider(MIN_BATCH, MAX_BATCH, value=DEFAULT_BATCH, step=8, label="Batch size")
            )
            loss = validated(gr.Radio(list(TRAINING_LOSSES), value="hinge", label="Loss (same for all)"))
    with gr.Row():
        train_btn = gr.Button("Train", variant="primary")
        stop_btn = gr.Button("Stop")
    return live_models, steps, batch, loss, train_btn, stop_btn


def create_tab(store: ModelStore, tab: gr.Tab, certify: CertifyTab) -> None:
    """Build the tab inside the open ``tab``; it draws the current image of ``certify``."""
    actions, image_inputs = Actions(store), certify.image_inputs
    gr.Markdown(INTRO)
    with gr.Row():
        grad_models = validated(
            gr.CheckboxGroup(store.choices(), value=store.defaults(), label="Models", scale=3)
        )
        grad_btn = gr.Button("Gradient norms for the current image", scale=1)
    grad_note = gr.Markdown(elem_id="gradient-note")
    with gr.Column() as grad_box:
        grad_plot = gr.Plot(label="Per-layer gradient norms")
    live_models, steps, batch, loss, train_btn, stop_btn = _live_section()
    train_status = gr.Markdown(label="Status", show_label=False, elem_id="train-status")
    with gr.Column(visible=False) as train_box:  # no empty frame before the first run
        train_plot = gr.Plot(label="Live training")

    inputs = [*image_inputs, grad_models]
    drawn = grad_btn.click(actions.gradient_norms, inputs, [grad_plot], api_name="gradient_norms", **FAST)
    drawn.success(lambda: ("", gr.Column(visible=True)), None, [grad_note, grad_box], queue=False, **PRIVATE)
    for shown in (tab.select, grad_models.change):
        shown(actions.when_shown, inputs, [grad_plot, grad_note, grad_box], **PRIVATE, **FAST)
    for changed in (certify.sketch.change, certify.upload.change):  # the chart belongs to the old image
        changed(lambda: None, None, [grad_plot], queue=False, show_progress="hidden", **PRIVATE)
    waiting = train_btn.click(actions.waiting, None, [train_status], queue=False, **PRIVATE)
    waiting.then(
        actions.train_live,
        [live_models, steps, batch, loss],
        [train_plot, train_status],
        api_name="train_live",
        concurrency_id="train",
        concurrency_limit=1,
        show_progress_on=[train_plot],
    )
    train_btn.click(lambda: gr.Column(visible=True), None, [train_box], queue=False, **PRIVATE)
    stop_btn.click(actions.stop, None, None, queue=False, **PRIVATE)

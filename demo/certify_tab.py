"""The "Certify & attack" tab: an image in, each model's prediction with its certificate, and
on request attacks that try to change it.

The results always belong to the image shown: any change of the input (a stroke, an upload,
an example, clearing) certifies the new image at once (cheap) and clears the attack results
(costly, so only on request), cancelling an attack still running.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd
import torch
from gradio.components import Component

from bcop.report import (
    ATTACK_COLUMNS,
    CERTIFY_COLUMNS,
    SEARCH_MAX_EPS,
    ImageAttack,
    ImageCertificate,
    attack_image,
    certify_image,
)
from demo import figures
from demo.errors import friendly, log, validated
from demo.inputs import (
    NO_IMAGE_MESSAGE,
    current_input,
    model_input,
    png_file,
    readable_upload,
)
from demo.store import ModelStore

EXAMPLES_DIR = Path(__file__).resolve().parent.parent / "examples"
EXAMPLES = tuple(sorted(EXAMPLES_DIR.glob("digit_*.png")))
LANDING_EXAMPLE = EXAMPLES_DIR / "digit_7_0.png"
EPS_MIN, EPS_MAX, EPS_DEFAULT = 0.05, 5.0, 1.58
VACUOUS_LIPSCHITZ = 2.0  # above this bound a certificate says next to nothing (see _certificate_line)
FAST = {"concurrency_id": "fast"}  # limited by the queue's default_concurrency_limit
PRIVATE = {"api_visibility": "private"}

DIGITS_ONLY = (
    "The networks learnt MNIST digits only: any image, noise or a letter too, gets one of the ten "
    "classes. A certificate says the answer cannot change within its radius, not that the image is "
    "a digit."
)
BOUNDS_CAPTION = (
    "**Reading the chart.** The certified radius (●) is a *proof*: no perturbation with a smaller "
    "L2 norm can change the prediction, so it is a lower bound on the distance to the nearest "
    "adversarial example. The smallest adversarial example the attack found (✕) is a *witness*: "
    "an upper bound. The true distance lies on the bar between them. The summary above says, for "
    "this image, how many times the certified radius the attack needed (1× would mean the "
    "certificate is exact)."
)
MODELS_INFO = (
    "The paper's models (BCOP and the baselines it was compared with) first, then later families "
    "(Cayley, SOC, AOL, SLL, AOC) when their checkpoints are present."
)
ATTACK_PROMPT = "Press **Attack** to look for adversarial examples of this image."
ATTACK_DONE = "Done: the attack's results are below the certificates."
NO_IMAGE_SUMMARY = f"*{NO_IMAGE_MESSAGE.capitalize()}.*"
NO_MODEL_SUMMARY = "*Choose at least one model.*"


@dataclass
class CertifyTab:
    """The components other tabs and the app use."""

    sketch: gr.Sketchpad
    upload: gr.Image

    @property
    def image_inputs(self) -> list[Component]:
        return [self.sketch, self.upload]


# --- text -----------------------------------------------------------------------------------------


def _certificate_line(cert: ImageCertificate) -> str:
    head = f"- **{cert.model}** predicts **{cert.prediction}** (margin {cert.margin:.3f}): "
    if cert.lipschitz > VACUOUS_LIPSCHITZ:
        return head + (
            f"certified radius **{cert.radius:.3f}**, a useless certificate: its layers are "
            f"unconstrained, so the only bound on its Lipschitz constant is the product of their "
            f"norms, L = {cert.lipschitz:,.0f}, and the radius margin / (√2 L) is tiny. Attacks "
            "still need a large perturbation to fool it (press Attack)."
        )
    return head + (
        f"certified radius **{cert.radius:.3f}** (Lipschitz bound {cert.lipschitz:.3g}): no "
        f"perturbation with ‖δ‖₂ < {cert.radius:.3f} can change this prediction."
    )


def _attack_line(attack: ImageAttack) -> str:
    pgd = attack.pgd
    outcome = (
        f"fooled it ({attack.prediction} → {int(pgd.prediction[0])}, ‖δ‖ = {float(pgd.norm[0]):.3f})"
        if bool(pgd.success[0])
        else "did not change the prediction"
    )
    line = f"- **{attack.model}**: PGD at ε = {attack.eps:g} {outcome}. "
    if attack.upper == float("inf"):
        return line + (
            f"The nearest adversarial example is at least {attack.radius:.3f} away (certified); the "
            f"search found none within {SEARCH_MAX_EPS:g}."
        )
    ratio = f"{attack.ratio:,.{2 if attack.ratio < 100 else 0}f}×" if attack.ratio != float("inf") else "∞×"
    return line + (
        f"The nearest adversarial example is between {attack.radius:.3f} (certified) and "
        f"{attack.upper:.3f} (found) away: the attack needed {ratio} the certified radius."
    )


# --- actions --------------------------------------------------------------------------------------


def _empty(columns: list[str]) -> pd.DataFrame:
    return pd.DataFrame(columns=columns)


def _certify_outputs(store: ModelStore, x: torch.Tensor, names: list[str]) -> tuple[str, Any, Any, str]:
    """(preview, certificates table, probabilities chart, summary) for the input ``x``."""
    certs = [certify_image(n, store.get(n).model, x, store.get(n).lipschitz) for n in names]
    rows = [{**c.row(), "loaded from": store.source(store.get(c.model)).replace("`", "")} for c in certs]
    table = pd.DataFrame(rows, columns=[*CERTIFY_COLUMNS, "loaded from"])
    summary = "\n".join(_certificate_line(c) for c in certs)
    return png_file(x), table, figures.probabilities_figure(certs), summary


def _cleared_attack(ready: bool = True) -> tuple[Any, ...]:
    """The attack outputs reset and hidden; the attack button enabled, with its prompt, when
    there is an image to attack (``ready``)."""
    button, prompt = gr.Button(interactive=ready), ATTACK_PROMPT if ready else ""
    return None, _empty(ATTACK_COLUMNS), None, "", button, prompt, gr.Column(visible=False)


def _nothing(summary: str = NO_IMAGE_SUMMARY) -> tuple[Any, ...]:
    """Every result cleared and its frames hidden, the summary saying why (by default: there is
    no image)."""
    empty = _empty([*CERTIFY_COLUMNS, "loaded from"])
    return None, empty, None, summary, *_cleared_attack(ready=False), gr.Column(visible=False)


def _unusable(message: str) -> tuple[Any, ...]:
    """Every result cleared, the summary saying why the new image cannot be used."""
    log.info("input refused: %s", message)
    gr.Warning(message)
    return _nothing(f"**{message}**")


def _follow(store: ModelStore, x: torch.Tensor | None, models: list[str]) -> tuple[Any, ...]:
    """Results for a new input ``x`` or a new choice of models: certified by the chosen models,
    attacks cleared."""
    if x is None:
        return _nothing()
    if not models:
        return png_file(x), *_nothing(NO_MODEL_SUMMARY)[1:]
    return *_certify_outputs(store, x, store.check(models)), *_cleared_attack(), gr.Column(visible=True)


def _unchanged(extra: int = 0) -> tuple[Any, ...]:
    """No result changes (and ``extra`` more outputs neither)."""
    return (gr.skip(),) * (extra + len(_nothing()))


class Actions:
    """The tab's event handlers (also the API endpoints ``preprocess``, ``certify``, ``attack``)."""

    def __init__(self, store: ModelStore) -> None:
        self.store = store

    @friendly
    def preprocess(self, sketch: dict | None, upload: str | None) -> str:
        """The 28 x 28 image the models see (MNIST format, PNG), from the upload or the drawing."""
        return png_file(model_input(sketch, upload))

    @friendly
    def certify(self, sketch: dict | None, upload: str | None, models: list[str]) -> tuple[Any, ...]:
        """Predict and certify the image with each chosen model."""
        names = self.store.check(models)
        return _certify_outputs(self.store, model_input(sketch, upload), names)

    @friendly
    def from_sketch(self, sketch: dict | None, models: list[str], source: str = "draw") -> tuple[Any, ...]:
        """A stroke (or Clear) on the canvas: the drawing becomes the input, the upload goes;
        nothing changes when the visitor is no longer on the Draw tab (``source``; see
        Note [the last input wins] in ``_wire_inputs``)."""
        if source != "draw":
            return _unchanged(1)
        return None, *_follow(self.store, current_input(sketch, None), models)

    @friendly
    def from_upload(self, upload: str | None, models: list[str]) -> tuple[Any, ...]:
        """A file uploaded: it becomes the input and the drawing goes. An unusable file is removed
        (no broken image stays on show) and the summary and a warning say why; removing the
        file clears the results."""
        if upload is None:
            return gr.skip(), gr.skip(), *_nothing()
        try:
            x = model_input(None, upload)
        except ValueError as err:
            return None, None, *_unusable(str(err))
        return None, gr.skip(), *_follow(self.store, x, models)

    @friendly
    def from_example(self, index: int, models: list[str]) -> tuple[Any, ...]:
        """An example picked: it becomes the input, shown on the Upload tab, and the drawing goes.
        The image and its results arrive in one update, so they always agree."""
        if not (isinstance(index, int) and 0 <= index < len(EXAMPLES)):
            raise ValueError(f"choose an example between 0 and {len(EXAMPLES) - 1}, got {index!r}")
        path = str(EXAMPLES[index])
        x = model_input(None, path)
        return None, path, *_follow(self.store, x, models)

    @friendly
    def from_models(self, sketch: dict | None, upload: str | None, models: list[str]) -> tuple[Any, ...]:
        """A model ticked or unticked: the image certified by the chosen models. An unusable
        image keeps its message."""
        try:
            x = current_input(sketch, upload)
        except ValueError:
            return _unchanged()
        return _follow(self.store, x, models)

    def attack_stopped(self, sketch: dict | None, upload: str | None, models: list[str]) -> tuple[Any, ...]:
        """The attack button and its prompt after an attack failed (its error says why) or was
        cancelled by a new input: ready again when there is an image and a model."""
        try:
            ready = bool(models) and current_input(sketch, upload) is not None
        except ValueError:  # an unusable image: the summary says why
            ready = False
        return _cleared_attack(ready)[-3:]

    @friendly
    def attack(
        self,
        sketch: dict | None,
        upload: str | None,
        models: list[str],
        epsilon: float,
        progress: gr.Progress = gr.Progress(),  # noqa: B008 (Gradio injects the tracker)
    ) -> tuple[Any, ...]:
        """L2 PGD at ``epsilon`` and a minimal-norm search against each chosen model."""
        eps = float(epsilon) if isinstance(epsilon, int | float) else float("nan")
        if not EPS_MIN <= eps <= EPS_MAX:
            raise ValueError(f"epsilon must be a number between {EPS_MIN} and {EPS_MAX}, got {epsilon!r}")
        names = self.store.check(models)
        x = model_input(sketch, upload)
        attacks = []
        for i, name in enumerate(names):
            served = self.store.get(name)

            def report(done: float, stage: str, i: int = i, name: str = name) -> None:
                progress((i + done) / len(names), desc=f"{name}: {stage}")

            attacks.append(attack_image(name, served.model, x, eps, served.lipschitz, _throttled(report)))
        progress(1.0, desc="done")
        table = pd.DataFrame([a.row() for a in attacks], columns=ATTACK_COLUMNS)
        summary = "\n".join(_attack_line(a) for a in attacks)
        return figures.attack_figure(x, attacks), table, figures.bounds_figure(attacks), summary


def _throttled(report: Any, every: float = 0.02) -> Any:
    """Pass progress on only when it advanced by ``every`` (or finished)."""
    last = [-1.0]

    def call(fraction: float, stage: str) -> None:
        if fraction - last[0] >= every or fraction >= 1.0:
            last[0] = fraction
            report(fraction, stage)

    return call


def landing(store: ModelStore) -> dict[str, Any]:
    """The worked example the page opens on (certified once, at start-up): initial values of
    the upload, the preview, the certificates table, the chart and the summary."""
    names = store.defaults()
    if not names or not LANDING_EXAMPLE.is_file():
        return {}
    preview, table, chart, summary = _certify_outputs(store, model_input(None, str(LANDING_EXAMPLE)), names)
    return {
        "upload": str(LANDING_EXAMPLE),
        "preview": preview,
        "table": table,
        "chart": chart,
        "summary": summary,
    }


# --- layout and events ----------------------------------------------------------------------------


@dataclass
class _Inputs:
    tabs: gr.Tabs
    draw_tab: gr.Tab
    upload_tab: gr.Tab
    sketch: gr.Sketchpad
    upload: gr.Image
    examples: gr.Dataset
    source: gr.State  # "draw" or "upload": the input tab the visitor is on


def _input_column(start: dict[str, Any]) -> _Inputs:
    first = "upload" if start else "draw"
    with gr.Tabs(selected=first) as input_tabs:
        with gr.Tab("Draw", id="draw") as draw_tab:
            sketch = gr.Sketchpad(
                label="Draw a digit",
                type="numpy",
                canvas_size=(336, 336),
                fixed_canvas=True,
                brush=gr.Brush(default_size=22, colors=["#000000"], color_mode="fixed"),
                layers=False,
                transforms=(),
                elem_id="sketch-input",
            )
        with gr.Tab("Upload", id="upload") as upload_tab:
            upload = readable_upload(
                gr.Image(
                    value=start.get("upload"),
                    label="Upload an image of a digit",
                    type="filepath",
                    image_mode=None,
                    sources=["upload", "clipboard"],
                    height=336,
                    elem_id="upload-input",
                )
            )
    # A Dataset with its own event, not gr.Examples: an example then arrives as a plain value with
    # its results (gr.Examples sends the upload a component update, after which Gradio serves
    # that session a new copy of the component, without readable_upload's checks).
    examples = gr.Dataset(
        components=[gr.Image(type="filepath", render=False)],
        samples=[[str(p)] for p in EXAMPLES],
        type="index",
        label="Or pick an MNIST test digit",
        samples_per_page=len(EXAMPLES) or 1,
        elem_id="examples",
    )
    return _Inputs(input_tabs, draw_tab, upload_tab, sketch, upload, examples, gr.State(first))


@dataclass
class _Widgets:
    inputs: _Inputs
    models: gr.CheckboxGroup
    epsilon: gr.Slider
    certify_btn: gr.Button
    preprocess_btn: gr.Button
    attack_btn: gr.Button
    attack_status: gr.Markdown
    certified: list[Component]  # preview, table, chart, summary: the certify outputs
    attacked: list[Component]  # grid, table, bounds chart, summary: the attack outputs
    attack_box: gr.Column
    certify_box: gr.Column  # the certificates' table and chart


def _results(start: dict[str, Any]) -> tuple[list[Component], list[Component], gr.Column, gr.Column]:
    """The certificates' table and chart, then the attack's results; their frames are hidden
    while they are empty (no image; no attack yet)."""
    with gr.Column(visible=bool(start)) as certify_box:
        table = gr.Dataframe(
            value=start.get("table"),
            headers=[*CERTIFY_COLUMNS, "loaded from"],
            label="Certificates",
            interactive=False,
            elem_classes=["results-table"],
        )
        chart = gr.Plot(value=start.get("chart"), label="Probabilities")
    with gr.Column(visible=False) as attack_box:
        attack_md = gr.Markdown(label="Attack summary", show_label=False, elem_id="attack-summary")
        bounds_plot = gr.Plot(label="Certified radius vs. attack")
        gr.Markdown(BOUNDS_CAPTION)
        attack_table = gr.Dataframe(
            headers=ATTACK_COLUMNS,
            label="Attacks",
            interactive=False,
            elem_classes=["results-table"],
        )
        attack_plot = gr.Plot(label="Adversarial images and perturbations")
    return [table, chart], [attack_plot, attack_table, bounds_plot, attack_md], certify_box, attack_box


def _controls(store: ModelStore, start: dict[str, Any]) -> tuple[Component, ...]:
    """The models to use, Certify, and the attack's radius, button and status."""
    models = validated(
        gr.CheckboxGroup(
            store.choices(), value=store.defaults(), label="Models", info=MODELS_INFO, elem_id="model-choice"
        )
    )
    certify_btn = gr.Button("Certify", variant="primary")
    preprocess_btn = gr.Button("Preprocess", visible=False)  # API endpoint only
    epsilon = validated(
        gr.Slider(EPS_MIN, EPS_MAX, value=EPS_DEFAULT, step=0.01, label="Attack radius ε (L2)")
    )
    attack_btn = gr.Button(
        "Attack (PGD + smallest-perturbation search)", interactive=bool(start), elem_id="attack-button"
    )
    attack_status = gr.Markdown(ATTACK_PROMPT if start else "", elem_id="attack-status", min_height=60)
    return models, certify_btn, preprocess_btn, epsilon, attack_btn, attack_status


def _layout(store: ModelStore, start: dict[str, Any]) -> _Widgets:
    """Left the input; right what the models see and, under it, the first results (within the
    first screen at 1024×768), then the controls; the tables and charts below both."""
    with gr.Row(equal_height=False):
        with gr.Column(scale=1, min_width=320):
            inputs = _input_column(start)
            gr.Markdown(DIGITS_ONLY, elem_id="digits-only")
        with gr.Column(scale=1, min_width=320):
            preview = gr.Image(
                value=start.get("preview"),
                label="What the models see (28×28, MNIST format)",
                type="numpy",
                image_mode="L",
                interactive=False,
                format="png",
                height=168,
                elem_id="model-input",
            )
            summary = gr.Markdown(
                start.get("summary", NO_IMAGE_SUMMARY),
                label="Summary",
                show_label=False,
                elem_id="certify-summary",
            )
            models, certify_btn, preprocess_btn, epsilon, attack_btn, attack_status = _controls(store, start)
    (table, chart), attacked, certify_box, attack_box = _results(start)
    return _Widgets(
        inputs, models, epsilon, certify_btn, preprocess_btn, attack_btn, attack_status,
        [preview, table, chart, summary], attacked, attack_box, certify_box,
    )  # fmt: skip


def _wire_attack(actions: Actions, w: _Widgets) -> gr.events.Dependency:
    """Attack on click, the button disabled and the progress shown under it while it runs; then
    "Done" and the results (hidden until they are there), or the button ready again when the
    attack failed or a new input cancelled it."""
    busy = w.attack_btn.click(
        lambda: (gr.Button(interactive=False), "Attacking…", gr.Column(visible=False)),
        None,
        [w.attack_btn, w.attack_status, w.attack_box],
        queue=False,
        **PRIVATE,
    )
    running = busy.then(
        actions.attack,
        [w.inputs.sketch, w.inputs.upload, w.models, w.epsilon],
        w.attacked,
        api_name="attack",
        concurrency_id="attack",
        concurrency_limit=1,
        show_progress_on=[w.attack_status],
    )
    ended = [w.attack_btn, w.attack_status, w.attack_box]
    running.success(
        lambda: (gr.Button(interactive=True), ATTACK_DONE, gr.Column(visible=True)),
        None,
        ended,
        queue=False,
        **PRIVATE,
    )
    image = [w.inputs.sketch, w.inputs.upload]
    running.failure(actions.attack_stopped, [*image, w.models], ended, queue=False, **PRIVATE)
    return running


@dataclass
class _Latest:
    """One visitor's newest choices, kept on the server (a ``gr.State`` is one object per
    session, handed to every handler by reference): the models last ticked and the number of the
    newest results update begun (Note [the last input wins])."""

    models: list[str]
    begun: int = 0


def _remember(models: list[str], latest: _Latest) -> None:
    """A new choice of models, noted at once (before any queued update starts)."""
    latest.models = list(models or [])


def _newest(handler: Any, models_at: int, outputs: int, chooses: bool = False) -> Any:
    """``handler`` with one more input, the visitor's :class:`_Latest`: it certifies with the
    models last chosen (or, if it ``chooses``, notes its own argument ``models_at`` as the
    choice) and changes nothing when a newer update began while it ran."""

    def run(*args: Any) -> tuple[Any, ...]:
        *args, latest = args
        latest.begun += 1
        mine = latest.begun
        if chooses:
            _remember(args[models_at], latest)
        else:
            args[models_at] = latest.models
        out = handler(*args)
        return out if latest.begun == mine else (gr.skip(),) * outputs

    return run


def _wire_inputs(actions: Actions, w: _Widgets, following: list[Component], running: Any) -> None:
    """A new input (a stroke or Clear, an upload or its removal, an example) and a new choice of
    models update the results; only the visitor's own actions trigger these, not the values the
    handlers set, so no update sets off another.

    Note [the last input wins]: an input's update cancels the other inputs' updates still under
    way (and a running attack), so the results shown are the last input's. A stroke's event can
    fire a moment after the stroke, later than a click on an example that followed it: the
    stroke then finds that the visitor has moved to the Upload tab (``source``, set at once on
    every tab change and example click) and changes nothing. The Draw tab is the only place to
    draw, so its selection cancels the updates for uploads instead of the stroke.

    Cancelling is not enough under load: an update dispatched before a new choice of models
    (a stroke's second event, held back by ``always_last``) carries the old choice and may
    finish after the newer update. So every update certifies with the models last chosen, kept
    on the server (:class:`_Latest`, noted by a quick handler at once), and one that finds a
    newer update begun since it started changes nothing (:func:`_newest`). A stroke and a new
    choice of models therefore need not cancel each other's updates, and do not: a cancelled
    update could take with it the stroke's second event that ``always_last`` held back behind
    it, and leave the results of neither on show.
    """
    i, models = w.inputs, w.models
    latest = gr.State(_Latest(list(models.value or [])))
    changed = {"trigger_mode": "always_last", "show_progress": "hidden", **PRIVATE, **FAST}
    quick = {"queue": False, **PRIVATE}
    sketch_out, upload_out = [i.upload, *following], [i.sketch, i.upload, *following]
    by_sketch = i.sketch.input(
        _newest(actions.from_sketch, 1, len(sketch_out)), [i.sketch, models, i.source, latest], sketch_out,
        **changed,
    )  # fmt: skip
    from_upload = _newest(actions.from_upload, 1, len(upload_out))
    by_upload = i.upload.upload(from_upload, [i.upload, models, latest], upload_out, **changed)
    by_clear = i.upload.clear(from_upload, [i.upload, models, latest], upload_out, **changed)
    by_example = i.examples.click(
        lambda: ("upload", gr.Tabs(selected="upload")),
        None,
        [i.source, i.tabs],
        cancels=[running, by_sketch, by_upload, by_clear],
        **quick,
    ).then(
        _newest(actions.from_example, 1, len(upload_out)), [i.examples, models, latest], upload_out, **changed
    )
    uploads = [by_upload, by_clear, by_example]
    models.input(_remember, [models, latest], None, **quick)
    by_models = models.input(
        _newest(actions.from_models, 2, len(following), chooses=True), [i.sketch, i.upload, models, latest],
        following, cancels=[running], **changed,
    )  # fmt: skip
    for trigger in (i.upload.upload, i.upload.clear):
        trigger(None, cancels=[running, by_sketch, by_example, by_models], **quick)
    i.sketch.input(None, cancels=[running], **quick)
    i.draw_tab.select(lambda: "draw", None, [i.source], cancels=uploads, **quick)
    i.upload_tab.select(lambda: "upload", None, [i.source], **quick)


def create_tab(store: ModelStore) -> CertifyTab:
    """Build the tab inside an open ``gr.Tab``; it opens on the worked example (:func:`landing`)."""
    actions, w = Actions(store), _layout(store, landing(store))
    image_inputs = [w.inputs.sketch, w.inputs.upload]
    w.preprocess_btn.click(actions.preprocess, image_inputs, w.certified[:1], api_name="preprocess", **FAST)
    w.certify_btn.click(actions.certify, [*image_inputs, w.models], w.certified, api_name="certify", **FAST)
    running = _wire_attack(actions, w)
    following = [*w.certified, *w.attacked, w.attack_btn, w.attack_status, w.attack_box, w.certify_box]
    _wire_inputs(actions, w, following, running)
    return CertifyTab(w.inputs.sketch, w.inputs.upload)

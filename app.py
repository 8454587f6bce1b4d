"""Gradio demo: certify, attack and look inside provably Lipschitz CNNs (BCOP, Li et al. 2019).

``python app.py`` serves the models in ``checkpoints/`` (or, with ``--hub-repo NAMESPACE`` /
``$BCOP_HUB_REPO``, from the Hugging Face Hub, falling back to ``checkpoints/``). Every number
on the page comes from the ``bcop`` library; this file wires widgets to library calls and draws
the figures.

Tabs: Certify & attack, Gradient norms (with a live side-by-side training run), Orthogonality,
Models. Each action is also a named API endpoint for ``gradio_client``.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import inspect
import io
import logging
import math
import os
import tempfile
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
import pandas as pd
import plotly.graph_objects as go
import torch
from PIL import Image
from plotly.subplots import make_subplots

from bcop.attacks import AttackResult, minimal_adversarial_distance, pgd_l2
from bcop.certify import certify, lipschitz_bound
from bcop.data import BLANK_MESSAGE, load_dataset, to_mnist_format
from bcop.gradnorm import LayerGradNorm, layer_gradient_norms
from bcop.hub import CARD_FILE, LoadedModel, checkpoints_dir, load_model, local_checkpoints
from bcop.inspect import LayerSpectrum, conv_spectra, read_eval_results, train_side_by_side
from bcop.models import MODEL_NAMES, parse_model_name

log = logging.getLogger("bcop.app")

ROOT = Path(__file__).resolve().parent
EXAMPLES_DIR = ROOT / "examples"
PREVIEW_DIR = Path(tempfile.gettempdir()) / "bcop-app" / "inputs"
SHIPPED_MODELS = (
    "bcop-large-mnist",
    "rko-large-mnist",
    "ossn-large-mnist",
    "svcm-large-mnist",
    "plain-large-mnist",
    "bcop-small-mnist",
)
DEFAULT_MODELS = ("bcop-large-mnist", "rko-large-mnist", "plain-large-mnist")
LIVE_MODELS = (
    "bcop-small-mnist",
    "ossn-small-mnist",
    "plain-small-mnist",
    "bcop-small-mnist-relu",
    "svcm-small-mnist",
    "rko-small-mnist",
)
DEFAULT_LIVE_MODELS = LIVE_MODELS[:4]
MAX_MODELS = len(SHIPPED_MODELS)

EPS_MIN, EPS_MAX, EPS_DEFAULT = 0.05, 5.0, 1.58
EVAL_EPS = "1.58"  # the key of the headline metrics in eval_results.json
PGD_STEPS, PGD_STEP_SIZE = 200, 0.01  # the paper's MNIST evaluation
SEARCH_STEPS, SEARCH_PGD_STEPS, SEARCH_MAX_EPS = 8, 50, 8.0
MAX_TRAIN_STEPS, DEFAULT_TRAIN_STEPS = 500, 200
MIN_BATCH, MAX_BATCH, DEFAULT_BATCH = 8, 128, 64
TRAIN_TIME_LIMIT_S = 180.0
TRAIN_LOSSES = ("hinge", "ce")

CERTIFY_COLUMNS = [
    "model",
    "prediction",
    "probability",
    "margin",
    "Lipschitz bound",
    "certified radius",
    "loaded from",
]
ATTACK_COLUMNS = [
    "model",
    "clean prediction",
    "certified radius (lower bound)",
    "PGD prediction",
    "PGD fooled it",
    "PGD ‖δ‖",
    "smallest adversarial prediction",
    "smallest adversarial ‖δ‖ (upper bound)",
]
SPECTRA_COLUMNS = ["model", "layer", "input (C×H×W)", "count", "min σ", "median σ", "max σ"]
CONV_COLORS = {"bcop": "#1f77b4", "rko": "#ff7f0e", "ossn": "#2ca02c", "svcm": "#9467bd", "plain": "#d62728"}
CSS = (
    "#model-input img, #upload-input img "
    "{ image-rendering: pixelated; object-fit: contain; width: 100%; height: 100%; }"
)

BOUNDS_CAPTION = (
    "**How robust is the prediction, really?** The certified radius (●) is a *proof*: no "
    "perturbation with a smaller L2 norm can change the prediction, so it is a lower bound on "
    "the distance to the nearest adversarial example. The attack's smallest adversarial example "
    "(✕) is a *witness*: an upper bound. The true distance lies on the bar between them. "
    "For the plain network the certificate is close to zero, useless, although the attack "
    "needs a large perturbation; for BCOP the two bounds nearly meet, the certificate is tight."
)


# --- models --------------------------------------------------------------------------------------


@dataclass
class ServedModel:
    """A loaded network with its constant Lipschitz bound (computed once)."""

    name: str
    loaded: LoadedModel
    lipschitz: float
    _spectra: list[LayerSpectrum] | None = field(default=None, repr=False)

    @property
    def model(self) -> torch.nn.Module:
        return self.loaded.model

    def spectra(self) -> list[LayerSpectrum]:
        """Singular values of every convolution (constant for fixed weights, so cached)."""
        if self._spectra is None:
            self._spectra = conv_spectra(self.model)
        return self._spectra


class ModelStore:
    """Loads models lazily through :func:`bcop.hub.load_model` and keeps them.

    Args:
        hub_repo: Hub namespace to load from ("" for the embedded checkpoints only).
    """

    def __init__(self, hub_repo: str = "") -> None:
        self.hub_repo = hub_repo
        self.hub_reachable = bool(hub_repo) and hub_reachable(hub_repo)
        self.names = self._available()
        self._models: dict[str, ServedModel] = {}
        self._lock = threading.Lock()

    def _available(self) -> list[str]:
        found = set(local_checkpoints()) | (set(SHIPPED_MODELS) if self.hub_reachable else set())
        mnist = {n for n in found if n in MODEL_NAMES and parse_model_name(n).dataset == "mnist"}
        return [n for n in SHIPPED_MODELS if n in mnist] + sorted(mnist - set(SHIPPED_MODELS))

    def defaults(self) -> list[str]:
        chosen = [n for n in DEFAULT_MODELS if n in self.names]
        return chosen or self.names[:3]

    def check(self, names: Sequence[str] | str | None) -> list[str]:
        """Validate a selection of model names; raises ValueError naming the problem."""
        if isinstance(names, str):
            names = [names]
        names = list(dict.fromkeys(names or []))
        if not self.names:
            raise ValueError(f"no MNIST models found in {checkpoints_dir()}: train or download some first")
        if not names:
            raise ValueError("choose at least one model")
        unknown = [n for n in names if n not in self.names]
        if unknown:
            raise ValueError(
                f"unknown model {', '.join(map(repr, unknown))}; available: {', '.join(self.names)}"
            )
        if len(names) > MAX_MODELS:
            raise ValueError(f"choose at most {MAX_MODELS} models")
        return names

    def get(self, name: str) -> ServedModel:
        """The served model ``name`` (loaded on first use)."""
        self.check([name])
        with self._lock:
            if name not in self._models:
                loaded = load_model(name, hub_namespace=self.hub_repo if self.hub_reachable else "")
                loaded.model.requires_grad_(False)  # inference only: attacks differentiate the input
                self._models[name] = ServedModel(name, loaded, lipschitz_bound(loaded.model))
            return self._models[name]

    def source(self, served: ServedModel) -> str:
        """Where a model was loaded from, in words (markdown)."""
        loaded = served.loaded
        if loaded.source == "hub":
            return f"Hub: [{loaded.repo_id}]({hub_url(loaded.repo_id)})"
        where = _display_path(loaded.location)
        if not self.hub_repo:
            return f"`{where}`"
        if not self.hub_reachable:
            return f"`{where}` (the Hub could not be reached)"
        return f"`{where}` (could not download {self.hub_repo}/{served.name} from the Hub)"

    def warm(self) -> None:
        """Load every available model now (run in a background thread at start-up)."""
        for name in self.names:
            try:
                self.get(name)
            except Exception as err:  # reported again, to the user, when the model is chosen
                log.warning("could not load %s: %s", name, err)


def hub_url(repo_id: str) -> str:
    """The web page of a Hub model repo."""
    from huggingface_hub import constants

    return f"{constants.ENDPOINT}/{repo_id}"


def hub_reachable(namespace: str, timeout: float = 3.0) -> bool:
    """Whether the Hub answers at all (any HTTP status counts), checked once at start-up so that
    an offline app does not wait for the Hub client's retries for every model."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    url = f"{constants.ENDPOINT}/api/models?author={urllib.parse.quote(namespace)}&limit=1"
    try:
        urllib.request.urlopen(url, timeout=timeout).close()
    except urllib.error.HTTPError:
        return True
    except (OSError, ValueError):
        return False
    return True


def _display_path(path: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


@functools.lru_cache(maxsize=1)
def _mnist_train() -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = load_dataset("mnist", "train").tensors
    return images, labels


# --- error handling ------------------------------------------------------------------------------


def _user_error(err: Exception) -> gr.Error:
    if isinstance(err, gr.Error):
        return err
    if isinstance(err, ValueError | TypeError | RuntimeError | OSError):
        return gr.Error(str(err))
    log.exception("unexpected error")
    return gr.Error(f"internal error ({type(err).__name__}: {err}); please report it")


def friendly(fn: Callable) -> Callable:
    """Turn any exception of ``fn`` into a gr.Error with a readable message (no traceback)."""
    if inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)
        def generator(*args: Any, **kwargs: Any) -> Iterator[Any]:
            try:
                yield from fn(*args, **kwargs)
            except Exception as err:
                raise _user_error(err) from err

        return generator

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as err:
            raise _user_error(err) from err

    return wrapper


def readable_upload(component: gr.Image) -> gr.Image:
    """Make an image input raise a gr.Error saying so when an upload is not a readable image
    (the stock component lets the imaging library's exception through as an opaque server
    error). Wraps the instance's ``preprocess``: a subclass would make Gradio write a ``.pyi``
    stub beside this file."""
    preprocess = component.preprocess

    @functools.wraps(preprocess)
    def checked(payload: Any) -> Any:
        try:
            return preprocess(payload)
        except Exception as err:
            name = getattr(payload, "orig_name", None) or "the upload"
            raise gr.Error(
                f"could not read {name} as an image ({type(err).__name__}): "
                "upload a PNG, JPEG or GIF of a digit"
            ) from err

    component.preprocess = checked  # type: ignore[method-assign]
    return component


# --- inputs --------------------------------------------------------------------------------------


def _model_input(sketch: dict | None, upload: str | None) -> torch.Tensor:
    """The (1, 1, 28, 28) input from the upload when there is one, else from the drawing."""
    image = upload if upload is not None else sketch
    if image is None:
        raise ValueError("no image: draw a digit, upload an image or pick an example")
    return to_mnist_format(image).unsqueeze(0)


def _as_image(x: torch.Tensor) -> np.ndarray:
    """(1, 1, H, W) or (H, W) in [0, 1] -> (H, W) uint8 for display."""
    return (x.detach().reshape(x.shape[-2:]).clamp(0, 1) * 255).round().to(torch.uint8).numpy()


def _png_file(x: torch.Tensor) -> str:
    """The image ``x`` in [0, 1] as a lossless grayscale PNG file named after its content.

    Gradio caches an array output by rewriting one content-named file in place, so a client
    fetching the same image for a concurrent request can read it half written. Returning a
    path instead makes Gradio copy the file with an atomic rename; the file here is written
    the same way.
    """
    buffer = io.BytesIO()
    Image.fromarray(_as_image(x)).save(buffer, format="PNG")
    data = buffer.getvalue()
    path = PREVIEW_DIR / f"{hashlib.sha256(data).hexdigest()[:40]}.png"
    if not path.is_file():
        PREVIEW_DIR.mkdir(parents=True, exist_ok=True)
        fd, staging = tempfile.mkstemp(dir=PREVIEW_DIR, suffix=".part")
        with os.fdopen(fd, "wb") as file:
            file.write(data)
        os.replace(staging, path)
    return str(path)


def _ink(image: Any) -> torch.Tensor | None:
    """The model input for ``image``, or None when it is empty or blank."""
    if image is None:
        return None
    try:
        return to_mnist_format(image).unsqueeze(0)
    except ValueError as err:
        if str(err) == BLANK_MESSAGE:
            return None
        raise


# --- figures -------------------------------------------------------------------------------------


def _style(name: str) -> dict[str, str]:
    config = parse_model_name(name)
    dash = "dot" if name.endswith(f"-{config.activation}") else "solid"
    return {"color": CONV_COLORS.get(config.conv, "#7f7f7f"), "dash": dash}


def _probabilities_figure(rows: list[tuple[str, np.ndarray]]) -> go.Figure:
    fig = go.Figure()
    for name, probs in rows:
        fig.add_bar(x=list(range(10)), y=probs, name=name, marker_color=_style(name)["color"])
    fig.update_layout(
        barmode="group",
        title="Class probabilities (softmax of the logits; not calibrated)",
        xaxis={"title": "digit", "dtick": 1},
        yaxis={"title": "probability", "range": [0, 1]},
        height=320,
        margin={"t": 50, "b": 40},
        legend={"orientation": "h", "y": -0.25},
    )
    return fig


def _attack_figure(
    x: torch.Tensor, rows: list[tuple[str, AttackResult, AttackResult]], eps: float
) -> go.Figure:
    titles = []
    for name, pgd, smallest in rows:
        pgd_note = f"→ {int(pgd.prediction)}" if bool(pgd.success) else f"still {int(pgd.prediction)}"
        titles += [f"{name}<br>PGD ε={eps:g}: {pgd_note}", f"δ, ‖δ‖={float(pgd.norm):.2f}"]
        if bool(smallest.success):
            titles += [f"smallest found: → {int(smallest.prediction)}", f"δ, ‖δ‖={float(smallest.norm):.2f}"]
        else:
            titles += [f"none found with ‖δ‖ ≤ {SEARCH_MAX_EPS:g}", "δ"]
    fig = make_subplots(
        rows=len(rows),
        cols=4,
        subplot_titles=titles,
        horizontal_spacing=0.03,
        vertical_spacing=0.12 / len(rows),
    )
    deltas = [r.x_adv - x for _, pgd, small in rows for r in (pgd, small)]
    scale = max(1e-6, max(float(d.abs().max()) for d in deltas))
    for i, (_, pgd, smallest) in enumerate(rows, start=1):
        for j, result in enumerate((pgd, smallest)):
            fig.add_trace(
                go.Heatmap(z=_as_image(result.x_adv), colorscale="gray", zmin=0, zmax=255, showscale=False),
                row=i,
                col=2 * j + 1,
            )
            fig.add_trace(
                go.Heatmap(
                    z=(result.x_adv - x).reshape(28, 28).numpy(),
                    colorscale="RdBu_r",
                    zmid=0,
                    zmin=-scale,
                    zmax=scale,
                    showscale=i == 1 and j == 0,
                    colorbar={"title": "δ", "len": min(1.0, 1.2 / len(rows)), "y": 1, "yanchor": "top"},
                ),
                row=i,
                col=2 * j + 2,
            )
    for k in range(1, 4 * len(rows) + 1):
        suffix = "" if k == 1 else str(k)
        fig.layout[f"xaxis{suffix}"].update(showticklabels=False, constrain="domain")
        fig.layout[f"yaxis{suffix}"].update(
            showticklabels=False, autorange="reversed", scaleanchor=f"x{suffix}", constrain="domain"
        )
    fig.update_annotations(font_size=11)
    fig.update_layout(height=240 * len(rows) + 40, margin={"t": 60, "b": 10, "l": 10, "r": 10})
    return fig


def _bounds_figure(rows: list[tuple[str, float, float]], eps: float) -> go.Figure:
    """rows: (model, certified radius, smallest adversarial norm or inf)."""
    names = [r[0] for r in rows]
    radius = [r[1] for r in rows]
    upper = [r[2] if math.isfinite(r[2]) else SEARCH_MAX_EPS for r in rows]
    fig = go.Figure()
    for name, low, high, found in zip(names, radius, upper, [math.isfinite(r[2]) for r in rows], strict=True):
        fig.add_trace(
            go.Scatter(
                x=[low, high],
                y=[name, name],
                mode="lines",
                line={"color": "rgba(120,120,120,0.35)", "width": 14},
                showlegend=False,
                hoverinfo="skip",
            )
        )
        if not found:
            fig.add_annotation(x=high, y=name, text=f"> {SEARCH_MAX_EPS:g}", showarrow=False, xshift=24)
    fig.add_trace(
        go.Scatter(
            x=radius,
            y=names,
            mode="markers",
            name="certified radius (proven lower bound)",
            marker={"size": 14, "color": "#2ca02c"},
            hovertemplate="%{y}: certified %{x:.3f}<extra></extra>",
        )
    )
    fig.add_trace(
        go.Scatter(
            x=upper,
            y=names,
            mode="markers",
            name="smallest adversarial found (upper bound)",
            marker={"size": 14, "color": "#d62728", "symbol": "x"},
            hovertemplate="%{y}: attack found %{x:.3f}<extra></extra>",
        )
    )
    fig.add_vline(x=eps, line_dash="dash", line_color="#555", annotation_text=f"ε = {eps:g}")
    fig.update_layout(
        title="Distance to the nearest adversarial example is trapped between the two bounds",
        xaxis={"title": "L2 distance ‖δ‖₂", "rangemode": "tozero"},
        yaxis={"autorange": "reversed"},
        height=120 + 60 * len(rows),
        margin={"t": 50, "b": 40},
        legend={"orientation": "h", "y": -0.35},
    )
    return fig


def _gradnorm_traces(fig: go.Figure, name: str, norms: list[LayerGradNorm], **where: int) -> None:
    fig.add_trace(
        go.Scatter(
            x=[n.name for n in norms],
            y=[n.mean for n in norms],
            mode="lines+markers",
            name=name,
            line=_style(name),
            legendgroup=name,
            hovertemplate=f"{name}<br>%{{x}}: %{{y:.4f}}<extra></extra>",
        ),
        **where,
    )


def _gradnorm_figure(rows: list[tuple[str, list[LayerGradNorm]]]) -> go.Figure:
    fig = go.Figure()
    for name, norms in rows:
        _gradnorm_traces(fig, name, norms)
    fig.update_layout(
        title="Gradient norm of the logit margin at each layer's input (input → output)",
        xaxis={"title": "layer (the last point is the gradient at the logits)"},
        yaxis={"title": "‖∂ margin / ∂ layer input‖₂", "type": "log"},
        height=380,
        legend={"orientation": "h", "y": -0.25},
    )
    return fig


def _training_figure(snapshot: Any) -> go.Figure:
    fig = make_subplots(
        rows=1,
        cols=2,
        subplot_titles=(
            "Gradient norm at each layer (probe batch, log scale)",
            "Training loss (same batches for every network)",
        ),
    )
    for name, norms in snapshot.grad_norms.items():
        _gradnorm_traces(fig, name, norms, row=1, col=1)
        losses = snapshot.losses[name]
        fig.add_trace(
            go.Scatter(
                x=list(range(1, len(losses) + 1)),
                y=losses,
                mode="lines",
                name=name,
                line=_style(name),
                legendgroup=name,
                showlegend=False,
            ),
            row=1,
            col=2,
        )
    fig.update_yaxes(type="log", title_text="gradient norm", row=1, col=1)
    fig.update_xaxes(title_text="layer (input → output)", row=1, col=1)
    fig.update_xaxes(title_text="step", range=[0, max(1, snapshot.total_steps)], row=1, col=2)
    fig.update_yaxes(title_text="loss", rangemode="tozero", row=1, col=2)
    fig.update_layout(height=420, legend={"orientation": "h", "y": -0.2}, margin={"t": 50})
    return fig


def _spectra_figure(rows: list[tuple[str, list[LayerSpectrum]]]) -> go.Figure:
    fig = go.Figure()
    for name, spectra in rows:
        stats = [np.quantile(s.singular_values.numpy(), [0, 0.25, 0.5, 0.75, 1]) for s in spectra]
        fig.add_trace(
            go.Box(
                x=[s.name for s in spectra],
                lowerfence=[q[0] for q in stats],
                q1=[q[1] for q in stats],
                median=[q[2] for q in stats],
                q3=[q[3] for q in stats],
                upperfence=[q[4] for q in stats],
                name=name,
                marker_color=_style(name)["color"],
            )
        )
    fig.add_hline(y=1, line_dash="dash", line_color="#555", annotation_text="σ = 1 (orthogonal)")
    fig.update_layout(
        boxmode="group",
        title="Singular values of each convolution on its input size (min, quartiles, max)",
        xaxis={"title": "layer"},
        yaxis={"title": "singular value σ", "rangemode": "tozero"},
        height=420,
        legend={"orientation": "h", "y": -0.2},
    )
    return fig


# --- the app -------------------------------------------------------------------------------------


class Demo:
    """The actions behind the page's widgets and API endpoints."""

    def __init__(self, store: ModelStore) -> None:
        self.store = store

    # Certify & attack

    @friendly
    def preprocess(self, sketch: dict | None, upload: str | None) -> str:
        """The 28 x 28 image the models see (MNIST format, PNG), from the upload or the drawing."""
        return _png_file(_model_input(sketch, upload))

    @friendly
    def sync_from_sketch(self, sketch: dict | None, upload: str | None) -> tuple[Any, Any]:
        """A stroke on the sketchpad makes the drawing the input: clear the upload, show it."""
        x = _ink(sketch)
        if x is not None:
            return None, _png_file(x)
        return gr.update(), (None if upload is None else gr.update())

    @friendly
    def sync_from_upload(self, upload: str | None, sketch: dict | None) -> tuple[Any, Any, Any]:
        """An upload (or an example) becomes the input: clear the drawing, show it."""
        if upload is None:
            return gr.update(), (None if _ink(sketch) is None else gr.update()), gr.update()
        return None, _png_file(_model_input(None, upload)), gr.Tabs(selected="upload")

    @friendly
    def certify(
        self, sketch: dict | None, upload: str | None, models: list[str]
    ) -> tuple[str, pd.DataFrame, go.Figure, str]:
        """Predict and certify the image with each chosen model."""
        names = self.store.check(models)
        x = _model_input(sketch, upload)
        table, probs, lines = [], [], []
        for name in names:
            served = self.store.get(name)
            cert = certify(served.model, x, served.lipschitz)
            pred, radius = int(cert.prediction[0]), float(cert.radius[0])
            table.append(
                [
                    name,
                    pred,
                    round(float(cert.probabilities[0, pred]), 4),
                    round(float(cert.margin[0]), 4),
                    round(served.lipschitz, 4),
                    round(radius, 4),
                    self.store.source(served).replace("`", ""),
                ]
            )
            probs.append((name, cert.probabilities[0].numpy()))
            lines.append(
                f"- **{name}** predicts **{pred}** (margin {float(cert.margin[0]):.3f}, Lipschitz bound "
                f"{served.lipschitz:.3g}): certified radius **{radius:.3f}**, no perturbation with "
                f"‖δ‖₂ < {radius:.3f} can change this prediction."
            )
        frame = pd.DataFrame(
            table,
            columns=CERTIFY_COLUMNS,
        )
        return _png_file(x), frame, _probabilities_figure(probs), "\n".join(lines)

    @friendly
    def attack(
        self,
        sketch: dict | None,
        upload: str | None,
        models: list[str],
        epsilon: float,
        progress: gr.Progress = gr.Progress(),  # noqa: B008 (Gradio injects the tracker)
    ) -> tuple[go.Figure, pd.DataFrame, go.Figure, str]:
        """L2 PGD at ``epsilon`` and a minimal-norm search against each chosen model."""
        eps = float(epsilon) if isinstance(epsilon, int | float) else float("nan")
        if not EPS_MIN <= eps <= EPS_MAX:
            raise ValueError(f"epsilon must be a number between {EPS_MIN} and {EPS_MAX}, got {epsilon!r}")
        names = self.store.check(models)
        x = _model_input(sketch, upload)
        work = PGD_STEPS + (SEARCH_STEPS + 1) * SEARCH_PGD_STEPS
        rows, table, bounds, lines = [], [], [], []
        for i, name in enumerate(names):
            served = self.store.get(name)
            cert = certify(served.model, x, served.lipschitz)
            y = cert.prediction
            radius = float(cert.radius[0])

            def report(done: float, start: float, stage: str, name: str = name, i: int = i) -> None:
                progress((i + (start + done) / work) / len(names), desc=f"{name}: {stage}")

            pgd = pgd_l2(
                served.model,
                x,
                y,
                eps,
                steps=PGD_STEPS,
                step_size=PGD_STEP_SIZE,
                progress=_throttled(lambda f, r=report: r(f * PGD_STEPS, 0, f"PGD at ε={eps:g}")),
            )
            smallest = minimal_adversarial_distance(
                served.model,
                x,
                y,
                max_eps=SEARCH_MAX_EPS,
                search_steps=SEARCH_STEPS,
                pgd_steps=SEARCH_PGD_STEPS,
                progress=_throttled(
                    lambda f, r=report: r(f * (work - PGD_STEPS), PGD_STEPS, "smallest adversarial search")
                ),
            )
            upper = float(smallest.norm[0])
            rows.append((name, pgd, smallest))
            bounds.append((name, radius, upper))
            table.append(
                [
                    name,
                    int(y[0]),
                    round(radius, 4),
                    int(pgd.prediction[0]),
                    bool(pgd.success[0]),
                    round(float(pgd.norm[0]), 4),
                    int(smallest.prediction[0]) if bool(smallest.success[0]) else None,
                    round(upper, 4) if math.isfinite(upper) else None,
                ]
            )
            found = f"≤ {upper:.3f}" if math.isfinite(upper) else f"> {SEARCH_MAX_EPS:g} (no attack found)"
            outcome = (
                f"fooled it ({int(y[0])} → {int(pgd.prediction[0])}, ‖δ‖ = {float(pgd.norm[0]):.3f})"
                if bool(pgd.success[0])
                else "did not change the prediction"
            )
            lines.append(
                f"- **{name}**: PGD at ε = {eps:g} {outcome}; the distance to the nearest adversarial "
                f"example is ≥ {radius:.3f} (certified) and {found} (attack)."
            )
        progress(1.0, desc="done")
        frame = pd.DataFrame(
            table,
            columns=ATTACK_COLUMNS,
        )
        return _attack_figure(x, rows, eps), frame, _bounds_figure(bounds, eps), "\n".join(lines)

    # Gradient norms

    @friendly
    def gradient_norms(self, sketch: dict | None, upload: str | None, models: list[str]) -> go.Figure:
        """Per-layer gradient norms of the predicted class's margin for the image."""
        names = self.store.check(models)
        x = _model_input(sketch, upload)
        rows = [(name, layer_gradient_norms(self.store.get(name).model, x)) for name in names]
        return _gradnorm_figure(rows)

    @friendly
    def gradient_norms_when_shown(
        self, sketch: dict | None, upload: str | None, models: list[str]
    ) -> go.Figure | Any:
        """:meth:`gradient_norms` when the tab opens or the models change; the chart is left as
        it is (no error) while there is no image or no model to show."""
        if not models or (upload is None and _ink(sketch) is None):
            return gr.skip()
        return self.gradient_norms(sketch, upload, models)

    @friendly
    def train_live(
        self, models: list[str], steps: float, batch_size: float, loss: str
    ) -> Iterator[tuple[go.Figure, str]]:
        """Train small networks from scratch side by side, streaming gradient norms and losses."""
        names = list(dict.fromkeys(models or []))
        unknown = [n for n in names if n not in LIVE_MODELS]
        if not names or unknown:
            raise ValueError(
                f"choose one or more of {', '.join(LIVE_MODELS)}" + (f" (not {unknown})" if unknown else "")
            )
        if not (
            isinstance(steps, int | float) and 1 <= steps <= MAX_TRAIN_STEPS and float(steps).is_integer()
        ):
            raise ValueError(f"steps must be a whole number between 1 and {MAX_TRAIN_STEPS}, got {steps!r}")
        if not (isinstance(batch_size, int | float) and MIN_BATCH <= batch_size <= MAX_BATCH):
            raise ValueError(f"batch size must be between {MIN_BATCH} and {MAX_BATCH}, got {batch_size!r}")
        if loss not in TRAIN_LOSSES:
            raise ValueError(f"loss must be one of {TRAIN_LOSSES}, got {loss!r}")
        try:
            images, labels = _mnist_train()
        except Exception as err:
            raise gr.Error(
                f"MNIST could not be loaded ({err}). The live experiment trains on MNIST: load it once "
                'with internet access (python -c "from bcop.data import load_dataset; '
                "load_dataset('mnist', 'train')\")."
            ) from err
        steps = int(steps)
        runs = train_side_by_side(
            names,
            images,
            labels,
            steps,
            batch_size=int(batch_size),
            loss=loss,
            report_every=max(5, steps // 50),
        )
        for snapshot in runs:
            last = ", ".join(f"{n} {v[-1]:.3f}" for n, v in snapshot.losses.items() if v)
            status = f"step {snapshot.step}/{steps} · {snapshot.seconds:.1f} s" + (
                f" · loss: {last}" if last else ""
            )
            if snapshot.seconds > TRAIN_TIME_LIMIT_S and snapshot.step < steps:
                yield (
                    _training_figure(snapshot),
                    status + f" · stopped at the {TRAIN_TIME_LIMIT_S:.0f} s time limit",
                )
                return
            yield _training_figure(snapshot), status + (" · done" if snapshot.step == steps else "")

    # Orthogonality and models

    @friendly
    def singular_values_when_shown(self, models: list[str]) -> tuple[go.Figure, pd.DataFrame] | Any:
        """:meth:`singular_values` when the tab opens or the models change (nothing while no
        model is chosen)."""
        if not models:
            return gr.skip(), gr.skip()
        return self.singular_values(models)

    @friendly
    def singular_values(self, models: list[str]) -> tuple[go.Figure, pd.DataFrame]:
        """Singular values of every convolution of each chosen model."""
        names = self.store.check(models)
        rows, table = [], []
        for name in names:
            spectra = self.store.get(name).spectra()
            rows.append((name, spectra))
            for s in spectra:
                values = s.singular_values
                table.append(
                    [
                        name,
                        s.name,
                        "×".join(map(str, s.input_shape)),
                        values.numel(),
                        round(float(values.min()), 4),
                        round(float(values.median()), 4),
                        round(float(values.max()), 4),
                    ]
                )
        frame = pd.DataFrame(table, columns=SPECTRA_COLUMNS)
        return _spectra_figure(rows), frame

    @friendly
    def models_overview(self) -> str:
        """A markdown table of every served model's evaluation results and model card."""
        if not self.store.names:
            return f"No MNIST models found in `{_display_path(checkpoints_dir())}`."
        header = (
            "| model | loaded from | clean | certified @1.58 | PGD @1.58 | PGD @1.58, paper's attack "
            "| Lipschitz bound | paper (clean / certified / PGD) | model card |\n"
            "|---|---|---|---|---|---|---|---|---|"
        )
        return "\n".join([header, *(self._overview_row(name) for name in self.store.names)])

    def _overview_row(self, name: str) -> str:
        try:
            served = self.store.get(name)
        except Exception as err:
            return f"| {name} | could not be loaded: {err} | | | | | | | |"
        loaded = served.loaded
        if loaded.repo_id:
            card = f"[{loaded.repo_id}]({hub_url(loaded.repo_id)})"
        elif loaded.card:
            path = _display_path(Path(loaded.location) / CARD_FILE)
            card = f"[{path}](/gradio_api/file={path})"
        else:
            card = "none"
        try:
            results = read_eval_results(loaded)
        except ValueError as err:
            bound = f"{served.lipschitz:.4g}"
            return f"| {name} | {self.store.source(served)} | {err} | | | | {bound} | | {card} |"
        if results is None:
            metrics = ["not evaluated yet", "—", "—", "—", f"{served.lipschitz:.4g}", "—"]
        else:
            paper = results.get("paper") or {}
            paper_text = (
                " / ".join(_pct(paper.get(k)) for k in ("clean", "certified", "pgd")) if paper else "—"
            )
            metrics = [
                _pct(results.get("clean")),
                _pct(_at(results.get("certified"))),
                _pct(_at(results.get("pgd"))),
                _pct(_at(results.get("pgd_paper_attack"))),
                f"{results.get('lipschitz', served.lipschitz):.7g}",
                paper_text,
            ]
        return "| " + " | ".join([name, self.store.source(served), *metrics, card]) + " |"

    @friendly
    def model_card(self, name: str) -> str:
        """The model card (README.md) of one served model."""
        served = self.store.get(name)
        return served.loaded.card or f"{name} has no model card."


def _at(metric: Any) -> Any:
    return metric.get(EVAL_EPS) if isinstance(metric, dict) else metric


def _pct(value: Any) -> str:
    if not isinstance(value, int | float):
        return "—"
    return f"{100 * value:.1f}%" if value <= 1 else f"{value:.1f}%"


def _throttled(report: Callable[[float], None], every: float = 0.02) -> Callable[[float], None]:
    """Pass progress on only when it advanced by ``every`` (or finished)."""
    last = [-1.0]

    def call(fraction: float) -> None:
        if fraction - last[0] >= every or fraction >= 1.0:
            last[0] = fraction
            report(fraction)

    return call


def build_demo(hub_repo: str = "") -> gr.Blocks:
    """The Gradio app; models load from the Hub namespace ``hub_repo`` if given and reachable,
    else from :func:`bcop.hub.checkpoints_dir`."""
    store = ModelStore(hub_repo)
    app = Demo(store)
    names, defaults = store.names, store.defaults()
    where = f"`{_display_path(checkpoints_dir())}`"
    if store.hub_reachable:
        source = (
            f"Models load from the Hugging Face Hub namespace `{hub_repo}`; any that cannot be "
            f"downloaded from the embedded checkpoints in {where} (see the Models tab)."
        )
    elif hub_repo:
        source = (
            f"The Hugging Face Hub could not be reached, so models load from the embedded "
            f"checkpoints in {where} instead of the Hub namespace `{hub_repo}`."
        )
    else:
        source = f"Models load from the embedded checkpoints in {where}."
    fast = {"concurrency_id": "fast"}  # limited by the queue's default_concurrency_limit
    examples = sorted(EXAMPLES_DIR.glob("digit_*.png"))

    with gr.Blocks(title="BCOP: provably robust CNNs") as demo:
        gr.Markdown(
            "# Provably Lipschitz CNNs with BCOP\n"
            "Block Convolution Orthogonal Parameterization (Li et al., NeurIPS 2019) makes every "
            "convolution orthogonal, so a network's Lipschitz bound is tight and its certified "
            f"robustness radii are large. {source}"
        )
        with gr.Tabs():
            with gr.Tab("Certify & attack"):
                with gr.Row():
                    with gr.Column(scale=2):
                        with gr.Tabs() as input_tabs:
                            with gr.Tab("Draw", id="draw"):
                                sketch = gr.Sketchpad(
                                    label="Draw a digit",
                                    type="numpy",
                                    canvas_size=(336, 336),
                                    fixed_canvas=True,
                                    brush=gr.Brush(default_size=22, colors=["#000000"], color_mode="fixed"),
                                    layers=False,
                                    transforms=(),
                                )
                            with gr.Tab("Upload", id="upload"):
                                upload = readable_upload(
                                    gr.Image(
                                        label="Upload an image of a digit",
                                        type="filepath",
                                        image_mode=None,
                                        sources=["upload", "clipboard"],
                                        height=336,
                                        elem_id="upload-input",
                                    )
                                )
                        gr.Examples(
                            examples=[[str(p)] for p in examples],
                            inputs=[upload],
                            label="Or pick an MNIST test digit",
                            examples_per_page=len(examples) or 1,
                        )
                    with gr.Column(scale=1):
                        model_input = gr.Image(
                            label="What the models see (28×28, MNIST format)",
                            type="numpy",
                            image_mode="L",
                            interactive=False,
                            format="png",
                            height=224,
                            elem_id="model-input",
                        )
                        models = gr.CheckboxGroup(names, value=defaults, label="Models")
                        certify_btn = gr.Button("Certify", variant="primary")
                        preprocess_btn = gr.Button("Preprocess", visible=False)  # API endpoint only
                        epsilon = gr.Slider(
                            EPS_MIN, EPS_MAX, value=EPS_DEFAULT, step=0.01, label="Attack radius ε (L2)"
                        )
                        attack_btn = gr.Button("Attack (PGD + smallest-perturbation search)")
                certify_md = gr.Markdown(label="certificate summary", elem_id="certify-summary")
                certify_table = gr.Dataframe(
                    headers=CERTIFY_COLUMNS, label="Certificates", interactive=False, wrap=True
                )
                probs_plot = gr.Plot(label="Probabilities")
                attack_md = gr.Markdown(label="attack summary")
                bounds_plot = gr.Plot(label="Certified radius vs. attack")
                gr.Markdown(BOUNDS_CAPTION)
                attack_table = gr.Dataframe(
                    headers=ATTACK_COLUMNS, label="Attacks", interactive=False, wrap=True
                )
                attack_plot = gr.Plot(label="Adversarial images and perturbations")

            with gr.Tab("Gradient norms") as grad_tab:
                gr.Markdown(
                    "How much of the output's gradient reaches each layer. In a gradient-norm-"
                    "preserving network (BCOP with MaxMin) it stays nearly constant from the output "
                    "back to the input; in other 1-Lipschitz networks it can only shrink, which "
                    "makes them hard to train."
                )
                with gr.Row():
                    grad_models = gr.CheckboxGroup(names, value=defaults, label="Models", scale=3)
                    grad_btn = gr.Button("Gradient norms for the current image", scale=1)
                grad_plot = gr.Plot(label="Per-layer gradient norms")
                gr.Markdown(
                    "### Live: train from scratch, side by side\n"
                    "Small networks that differ only in their convolution (or activation) train on "
                    "the same MNIST batches; the chart updates every few steps with the gradient "
                    "norm at each layer (true-class logit margin, fixed probe batch) and the loss. "
                    f"At most {MAX_TRAIN_STEPS} steps and {TRAIN_TIME_LIMIT_S:.0f} s."
                )
                with gr.Row():
                    live_models = gr.CheckboxGroup(
                        list(LIVE_MODELS), value=list(DEFAULT_LIVE_MODELS), label="Networks", scale=3
                    )
                    with gr.Column(scale=2):
                        steps = gr.Slider(
                            1, MAX_TRAIN_STEPS, value=DEFAULT_TRAIN_STEPS, step=1, label="Steps"
                        )
                        batch = gr.Slider(
                            MIN_BATCH, MAX_BATCH, value=DEFAULT_BATCH, step=8, label="Batch size"
                        )
                        loss = gr.Radio(list(TRAIN_LOSSES), value="hinge", label="Loss (same for all)")
                with gr.Row():
                    train_btn = gr.Button("Train", variant="primary")
                    stop_btn = gr.Button("Stop")
                train_status = gr.Markdown(label="training status")
                train_plot = gr.Plot(label="Live training")

            with gr.Tab("Orthogonality") as sv_tab:
                gr.Markdown(
                    "Every singular value of each convolution, as a linear operator on the input "
                    "size that layer sees. BCOP's are all exactly 1 (orthogonal); the other "
                    "parameterisations spread below 1, and an unconstrained convolution above."
                )
                with gr.Row():
                    sv_models = gr.CheckboxGroup(names, value=defaults, label="Models", scale=3)
                    sv_btn = gr.Button("Show singular values", scale=1)
                sv_plot = gr.Plot(label="Singular values per layer")
                sv_table = gr.Dataframe(headers=SPECTRA_COLUMNS, label="Summary", interactive=False)

            with gr.Tab("Models"):
                overview = gr.Markdown("Loading the models…", label="models table")
                with gr.Accordion("Model card", open=False):
                    card_choice = gr.Dropdown(names, value=names[0] if names else None, label="Model")
                    card = gr.Markdown(label="model card")

        image_inputs = [sketch, upload]
        sketch.change(
            app.sync_from_sketch,
            [sketch, upload],
            [upload, model_input],
            api_visibility="private",
            show_progress="hidden",
            **fast,
        )
        upload.change(
            app.sync_from_upload,
            [upload, sketch],
            [sketch, model_input, input_tabs],
            api_visibility="private",
            show_progress="hidden",
            **fast,
        )
        preprocess_btn.click(app.preprocess, image_inputs, [model_input], api_name="preprocess", **fast)
        certify_btn.click(
            app.certify,
            [*image_inputs, models],
            [model_input, certify_table, probs_plot, certify_md],
            api_name="certify",
            **fast,
        )
        attack_btn.click(
            app.attack,
            [*image_inputs, models, epsilon],
            [attack_plot, attack_table, bounds_plot, attack_md],
            api_name="attack",
            concurrency_id="attack",
            concurrency_limit=1,
        )
        grad_btn.click(
            app.gradient_norms, [*image_inputs, grad_models], [grad_plot], api_name="gradient_norms", **fast
        )
        for trigger in (grad_tab.select, grad_models.change):
            trigger(
                app.gradient_norms_when_shown,
                [*image_inputs, grad_models],
                [grad_plot],
                api_visibility="private",
                **fast,
            )
        train_event = train_btn.click(
            app.train_live,
            [live_models, steps, batch, loss],
            [train_plot, train_status],
            api_name="train_live",
            concurrency_id="train",
            concurrency_limit=1,
        )
        stop_btn.click(None, cancels=[train_event])
        sv_btn.click(
            app.singular_values, [sv_models], [sv_plot, sv_table], api_name="singular_values", **fast
        )
        for trigger in (sv_tab.select, sv_models.change):
            trigger(
                app.singular_values_when_shown,
                [sv_models],
                [sv_plot, sv_table],
                api_visibility="private",
                **fast,
            )
        demo.load(app.models_overview, None, [overview], api_name="models", **fast)
        card_choice.change(app.model_card, [card_choice], [card], api_name="model_card", **fast)
        demo.load(app.model_card, [card_choice], [card], api_visibility="private", **fast)
    demo.store = store  # type: ignore[attr-defined]  (for start-up warming and tests)
    return demo


def configure_queue(demo: gr.Blocks, concurrency: int = 2, max_size: int = 64) -> gr.Blocks:
    """Queue every event: at most ``concurrency`` of a kind at once, ``max_size`` waiting."""
    return demo.queue(default_concurrency_limit=concurrency, max_size=max_size)


def launch_options(host: str, port: int, share: bool = False) -> dict[str, Any]:
    """Keyword arguments of ``demo.launch`` shared by ``main`` and the tests."""
    return {
        "server_name": host,
        "server_port": port,
        "share": share,
        "css": CSS,
        "allowed_paths": [str(checkpoints_dir() / name / CARD_FILE) for name in local_checkpoints()],
        "max_file_size": "25mb",
        "show_error": False,
        "footer_links": ["api", "gradio"],
    }


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="BCOP demo: certify, attack and inspect Lipschitz CNNs")
    parser.add_argument(
        "--host",
        default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
        help="address to listen on (default $GRADIO_SERVER_NAME or 127.0.0.1)",
    )
    parser.add_argument(
        "--port",
        type=int,
        default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")),
        help="port (default $GRADIO_SERVER_PORT or 7860)",
    )
    parser.add_argument(
        "--hub-repo",
        default=os.environ.get("BCOP_HUB_REPO", ""),
        help="Hugging Face Hub namespace holding the models (default $BCOP_HUB_REPO; unset: checkpoints/)",
    )
    parser.add_argument(
        "--share", action="store_true", help="create a public gradio.live link (off by default)"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads per request (default 1)")
    parser.add_argument(
        "--concurrency",
        type=int,
        default=2,
        help="quick requests served at once (default 2); attacks and live training run one at a time",
    )
    parser.add_argument("--no-warm", action="store_true", help="load models on first use, not at start-up")
    return parser.parse_args(argv)


def launch(
    hub_repo: str = "",
    host: str = "127.0.0.1",
    port: int = 7860,
    share: bool = False,
    concurrency: int = 2,
    warm: bool = True,
) -> gr.Blocks:
    """Build, queue and start the app without blocking (for ``main``, tests and benchmarks).

    With ``warm``, every model is loaded in a background thread once the server is up.
    """
    demo = configure_queue(build_demo(hub_repo), concurrency=concurrency)
    demo.launch(prevent_thread_lock=True, quiet=True, **launch_options(host, port, share))
    if warm:
        threading.Thread(target=demo.store.warm, name="warm-models", daemon=True).start()
    return demo


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(max(1, args.threads))
    demo = launch(args.hub_repo, args.host, args.port, args.share, args.concurrency, warm=not args.no_warm)
    print(f"BCOP demo running on {demo.local_url}", flush=True)
    if demo.share_url:
        print(f"public link: {demo.share_url}", flush=True)
    demo.block_thread()


if __name__ == "__main__":
    main()

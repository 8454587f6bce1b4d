"""The demo's charts: pure functions from results (``bcop`` dataclasses) to plotly figures.

Every model has one colour of its own, the same in every chart (:func:`model_color`).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from bcop.gradnorm import LayerGradNorm
from bcop.live import TrainingSnapshot
from bcop.models import parse_model_name
from bcop.report import SEARCH_MAX_EPS, ImageAttack, ImageCertificate
from bcop.spectra import LayerJacobian, LayerSpectrum, shrinking_layers
from bcop.wasserstein import EstimateSnapshot
from demo.inputs import as_image

MODEL_COLORS = {
    "bcop-large-mnist": "#1f77b4",
    "bcop-small-mnist": "#17becf",
    "rko-large-mnist": "#ff7f0e",
    "ossn-large-mnist": "#2ca02c",
    "svcm-large-mnist": "#9467bd",
    "plain-large-mnist": "#d62728",
    "rko-small-mnist": "#bcbd22",
    "ossn-small-mnist": "#8c564b",
    "svcm-small-mnist": "#e377c2",
    "plain-small-mnist": "#7f7f7f",
    "bcop-small-mnist-relu": "#393b79",
    # the later families, Large then Small (a hashed spare colour could match BCOP's blue)
    "cayley-large-mnist": "#e6550d",
    "soc-large-mnist": "#637939",
    "aol-large-mnist": "#7b4173",
    "sll-large-mnist": "#8c6d31",
    "aoc-large-mnist": "#843c39",
    "cayley-small-mnist": "#fd8d3c",
    "soc-small-mnist": "#b5cf6b",
    "aol-small-mnist": "#ce6dbd",
    "sll-small-mnist": "#e7ba52",
    "aoc-small-mnist": "#ad494a",
}
_SPARE_COLORS = ("#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd", "#e6550d")
# Darker than every model's colour, so that a marker never reads as a model (ossn is green, plain red).
CERTIFIED_COLOR, ATTACK_COLOR = "#00441b", "#67000d"
LEGEND_BELOW = {"orientation": "h", "y": -0.25}


def model_color(name: str) -> str:
    """The colour of model ``name`` in every chart (distinct for the shipped and live models)."""
    if name in MODEL_COLORS:
        return MODEL_COLORS[name]
    return _SPARE_COLORS[int(hashlib.sha256(name.encode()).hexdigest(), 16) % len(_SPARE_COLORS)]


def log_axis(values: Iterable[float]) -> dict[str, Any]:
    """A log axis for ``values``, labelled 0.1, 0.2, 0.5, 1, 2, 5, ... where they span more than a
    factor of 4 (plotly would label 0.5 and 0.2 as a small "5" and "2", which read as 5 and 2)."""
    positive = [v for v in values if v > 0]
    if not positive or max(positive) <= 4 * min(positive):
        return {"type": "log"}
    low, high = math.floor(math.log10(min(positive))), math.ceil(math.log10(max(positive)))
    ticks = [m * 10.0**e for e in range(low, high + 1) for m in (1, 2, 5)]
    return {"type": "log", "tickvals": ticks, "ticktext": [f"{t:g}" for t in ticks]}


def _line(name: str) -> dict[str, str]:
    dash = "dot" if name.endswith(f"-{parse_model_name(name).activation}") else "solid"
    return {"color": model_color(name), "dash": dash}


def probabilities_figure(certificates: Sequence[ImageCertificate]) -> go.Figure:
    """Grouped bars of each model's class probabilities."""
    fig = go.Figure()
    for cert in certificates:
        fig.add_bar(
            x=list(range(len(cert.probabilities))),
            y=cert.probabilities.tolist(),
            name=cert.model,
            marker_color=model_color(cert.model),
        )
    fig.update_layout(
        barmode="group",
        title="Class probabilities (softmax of the logits; not calibrated)",
        xaxis={"title": "digit", "dtick": 1},
        yaxis={"title": "probability", "range": [0, 1]},
        height=320,
        margin={"t": 50, "b": 40},
        legend=LEGEND_BELOW,
    )
    return fig


def bounds_figure(attacks: Sequence[ImageAttack]) -> go.Figure:
    """Per model, the certified radius (lower bound) and the smallest adversarial found (upper
    bound) on the distance to the nearest adversarial example."""
    names = [a.model for a in attacks]
    upper = [a.upper if np.isfinite(a.upper) else SEARCH_MAX_EPS for a in attacks]
    fig = go.Figure()
    for attack, high in zip(attacks, upper, strict=True):
        fig.add_scatter(
            x=[attack.radius, high],
            y=[attack.model] * 2,
            mode="lines",
            showlegend=False,
            hoverinfo="skip",
            line={"color": model_color(attack.model), "width": 14},
            opacity=0.35,
        )
        if not np.isfinite(attack.upper):
            fig.add_annotation(
                x=high, y=attack.model, text=f"> {SEARCH_MAX_EPS:g}", showarrow=False, xshift=24
            )
    fig.add_scatter(
        x=[a.radius for a in attacks],
        y=names,
        mode="markers",
        name="certified radius (proven lower bound)",
        marker={"size": 14, "color": CERTIFIED_COLOR},
        hovertemplate="%{y}: certified %{x:.3f}<extra></extra>",
    )
    fig.add_scatter(
        x=upper,
        y=names,
        mode="markers",
        name="smallest adversarial found (upper bound)",
        marker={"size": 14, "color": ATTACK_COLOR, "symbol": "x"},
        hovertemplate="%{y}: attack found %{x:.3f}<extra></extra>",
    )
    eps = attacks[0].eps if attacks else 0.0
    right = max([eps, *upper, *(a.radius for a in attacks)], default=1.0)
    fig.add_vline(x=eps, line_dash="dash", line_color="#555", annotation_text=f"ε = {eps:g}")
    fig.update_layout(
        title="The distance to the nearest adversarial example lies between the two bounds",
        xaxis={"title": "L2 distance ‖δ‖₂", "range": [-0.03 * right, 1.06 * right]},  # room for markers at 0
        yaxis={"autorange": "reversed"},
        height=120 + 60 * len(attacks),
        margin={"t": 50, "b": 40},
        legend={"orientation": "h", "y": -0.35},
    )
    return fig


def _attack_titles(attack: ImageAttack) -> list[str]:
    pgd, smallest = attack.pgd, attack.smallest
    pgd_note = f"→ {int(pgd.prediction[0])}" if bool(pgd.success[0]) else f"still {int(pgd.prediction[0])}"
    titles = [f"{attack.model}<br>PGD ε={attack.eps:g}: {pgd_note}", f"δ, ‖δ‖={float(pgd.norm[0]):.2f}"]
    if bool(smallest.success[0]):
        return titles + [f"smallest found: → {int(smallest.prediction[0])}", f"δ, ‖δ‖={attack.upper:.2f}"]
    return titles + [f"none found with ‖δ‖ ≤ {SEARCH_MAX_EPS:g}", "δ"]


def attack_figure(x: torch.Tensor, attacks: Sequence[ImageAttack]) -> go.Figure:
    """Per model: PGD's adversarial image and perturbation, then the smallest one found.

    Args:
        x: (1, 1, H, W) the clean image in [0, 1].
    """
    n = len(attacks)
    titles = [t for a in attacks for t in _attack_titles(a)]
    fig = make_subplots(
        rows=n, cols=4, subplot_titles=titles, horizontal_spacing=0.03, vertical_spacing=0.3 / n
    )
    deltas = [r.x_adv - x for a in attacks for r in (a.pgd, a.smallest)]
    scale = max(1e-6, max(float(d.abs().max()) for d in deltas))
    colorbar = {"title": "δ", "len": min(1.0, 1.2 / n), "y": 1, "yanchor": "top"}
    for i, attack in enumerate(attacks, start=1):
        for j, result in enumerate((attack.pgd, attack.smallest)):
            image = go.Heatmap(z=as_image(result.x_adv), colorscale="gray", zmin=0, zmax=255, showscale=False)
            delta = go.Heatmap(
                z=(result.x_adv - x)[0, 0].numpy(),
                colorscale="RdBu_r",
                zmid=0,
                zmin=-scale,
                zmax=scale,
                showscale=i == 1 and j == 0,
                colorbar=colorbar,
            )
            fig.add_trace(image, row=i, col=2 * j + 1)
            fig.add_trace(delta, row=i, col=2 * j + 2)
    for k in range(1, 4 * n + 1):
        suffix = "" if k == 1 else str(k)
        fig.layout[f"xaxis{suffix}"].update(showticklabels=False, constrain="domain")
        fig.layout[f"yaxis{suffix}"].update(
            showticklabels=False, autorange="reversed", scaleanchor=f"x{suffix}", constrain="domain"
        )
    fig.update_annotations(font_size=11)
    fig.update_layout(height=260 * n + 40, margin={"t": 60, "b": 10, "l": 10, "r": 10})
    return fig


def _layer_label(layer: LayerJacobian) -> str:
    if layer.channels is None:
        return "output"
    c_in, c_out = layer.channels
    return f"{layer.name}<br>{c_in}→{c_out}" + (" (adds)" if layer.adds_channels else "")


def _gradnorm_trace(name: str, x: Sequence[str], y: Sequence[float], legend: bool = True) -> go.Scatter:
    return go.Scatter(
        x=list(x),
        y=list(y),
        mode="lines+markers",
        name=name,
        line=_line(name),
        legendgroup=name,
        showlegend=legend,
        hovertemplate=f"{name}<br>%{{x}}: %{{y:.4f}}<extra></extra>",
    )


def _jacobian_band(fig: go.Figure, name: str, layers: Sequence[LayerJacobian]) -> None:
    labels = [_layer_label(layer) for layer in layers]
    top = [float(layer.singular_values.max()) for layer in layers]
    low = [float(layer.singular_values.min()) for layer in layers]
    color = model_color(name)
    fig.add_trace(_gradnorm_trace(name, labels, top, legend=False), row=1, col=2)
    band = _gradnorm_trace(name, labels, low, legend=False)
    red, green, blue = (int(color[i : i + 2], 16) for i in (1, 3, 5))
    band.update(fill="tonexty", fillcolor=f"rgba({red}, {green}, {blue}, 0.2)")
    fig.add_trace(band, row=1, col=2)


def kept_fraction(norms: Sequence[LayerGradNorm]) -> list[float]:
    """Each layer's gradient norm as a fraction of the gradient's norm at the output (the last
    entry), per example, averaged: the fraction of the gradient's norm that reaches the layer.
    The logit margin's gradient at the logits has norm √2, the same for every network."""
    output = norms[-1].per_example
    return [float((n.per_example / output).mean()) for n in norms]


def gradnorm_figure(rows: Sequence[tuple[str, list[LayerGradNorm], list[LayerJacobian]]]) -> go.Figure:
    """Left: this image's margin gradient at each layer's input, as a fraction of its norm at the
    logits (:func:`kept_fraction`). Right: the range (smallest to largest) of the singular values
    of the Jacobian of the logits at each layer's input. The left value of a layer lies in its
    band: the margin's gradient is the transposed Jacobian applied to one output direction."""
    fig = make_subplots(
        rows=1,
        cols=2,
        horizontal_spacing=0.1,
        subplot_titles=(
            "One gradient, the logit margin's: fraction of its norm kept",
            "Every output direction: Jacobian singular values, smallest to largest",
        ),
    )
    for name, norms, jacobian in rows:
        labels = [_layer_label(layer) for layer in jacobian]
        fig.add_trace(_gradnorm_trace(name, labels, kept_fraction(norms)), row=1, col=1)
        _jacobian_band(fig, name, jacobian)
    norms = [v for _, layers, _ in rows for v in kept_fraction(layers)]
    values = [float(v) for _, _, layers in rows for layer in layers for v in layer.singular_values]
    fig.update_yaxes(
        title_text="‖∂ margin / ∂ layer input‖₂ / ‖∂ margin / ∂ logits‖₂", row=1, col=1, **log_axis(norms)
    )
    fig.update_yaxes(
        title_text="singular value of ∂ logits / ∂ layer input", row=1, col=2, **log_axis(values)
    )
    fig.update_xaxes(title_text="input of layer (channels in → out), input → output")
    shrinking = shrinking_note(rows)
    lines = shrinking.count("<br>") + 1 if shrinking else 0
    if shrinking:  # above the subplot titles, which sit just above the plots
        fig.add_annotation(
            text=shrinking, xref="paper", yref="paper", x=0, y=1.08, xanchor="left", yanchor="bottom",
            showarrow=False, align="left",
        )  # fmt: skip
    top = 60 + 18 * lines
    fig.update_layout(height=460 + top, legend={"orientation": "h", "y": -0.45}, margin={"t": top})
    return fig


def shrinking_note(rows: Sequence[tuple[str, list[LayerGradNorm], list[LayerJacobian]]]) -> str:
    """The chart's caption when a band's top drops at a layer that does not add channels
    (:func:`bcop.spectra.shrinking_layers`): which models, where, by how much; empty otherwise."""
    found = []
    for name, _, jacobian in rows:
        drops = [
            f"{layer} ({after:.3f} → {before:.3f})" for layer, after, before in shrinking_layers(jacobian)
        ]
        if drops:
            found.append(f"{name}: " + ", ".join(drops))
    if not found:
        return ""
    return "<br>".join([
        "<b>Gradient attenuation</b>: the band's top drops at a layer that does not add channels",
        *found,
        "Such a layer shrinks every gradient passing back through it: it does not preserve gradient "
        "norm, which BCOP's orthogonal layers were built to do.",
    ])  # fmt: skip


def training_figure(snapshot: TrainingSnapshot) -> go.Figure:
    """Live training: per-layer gradient norms on the probe batch, and the loss curves."""
    fig = make_subplots(
        rows=1,
        cols=2,
        subplot_titles=(
            "Gradient norm at each layer (probe batch, log scale)",
            "Training loss (same batches for every network)",
        ),
    )
    for name, norms in snapshot.grad_norms.items():
        fig.add_trace(_gradnorm_trace(name, [n.name for n in norms], [n.mean for n in norms]), row=1, col=1)
        losses = snapshot.losses[name]
        loss = go.Scatter(
            x=list(range(1, len(losses) + 1)),
            y=losses,
            mode="lines",
            name=name,
            line=_line(name),
            legendgroup=name,
            showlegend=False,
        )
        fig.add_trace(loss, row=1, col=2)
    norms = [n.mean for layers in snapshot.grad_norms.values() for n in layers]
    fig.update_yaxes(title_text="gradient norm", row=1, col=1, **log_axis(norms))
    fig.update_xaxes(title_text="layer (input → output)", row=1, col=1)
    fig.update_xaxes(title_text="step", range=[0, max(1, snapshot.total_steps)], row=1, col=2)
    fig.update_yaxes(title_text="loss", rangemode="tozero", row=1, col=2)
    fig.update_layout(height=420, legend={"orientation": "h", "y": -0.2}, margin={"t": 50})
    return fig


def spectra_figure(rows: Sequence[tuple[str, list[LayerSpectrum]]]) -> go.Figure:
    """Per layer, one box per model (min, quartiles, max of its singular values), with the
    smallest and largest values also drawn as markers on top, so that a spectrum lying exactly
    on the σ = 1 line stays visible."""
    fig = go.Figure()
    layers = list(dict.fromkeys(s.name for _, spectra in rows for s in spectra))
    width = 0.8 / max(1, len(rows))
    for j, (name, spectra) in enumerate(rows):
        where = [layers.index(s.name) + (j - (len(rows) - 1) / 2) * width for s in spectra]
        q = [np.quantile(s.singular_values.numpy(), [0, 0.25, 0.5, 0.75, 1]) for s in spectra]
        color = model_color(name)
        fig.add_trace(
            go.Box(
                x=where,
                lowerfence=[v[0] for v in q],
                q1=[v[1] for v in q],
                median=[v[2] for v in q],
                q3=[v[3] for v in q],
                upperfence=[v[4] for v in q],
                width=0.8 * width,
                name=name,
                legendgroup=name,
                marker_color=color,
                line={"width": 3},
            )
        )
        fig.add_scatter(
            x=where * 2,
            y=[v[0] for v in q] + [v[4] for v in q],
            mode="markers",
            legendgroup=name,
            showlegend=False,
            marker={"symbol": "diamond", "size": 10, "color": color, "line": {"width": 1}},
            hovertemplate=f"{name}: σ = %{{y:.4f}}<extra></extra>",
        )
    fig.add_hline(
        y=1, line_dash="dash", line_color="#555", layer="below", annotation_text="σ = 1 (orthogonal)"
    )
    fig.update_layout(
        title="Singular values of each convolution on its input size (◆ smallest, largest; box: quartiles)",
        xaxis={"title": "layer", "tickvals": list(range(len(layers))), "ticktext": layers},
        yaxis={"title": "singular value σ", "rangemode": "tozero"},
        height=420,
        legend={"orientation": "h", "y": -0.2},
    )
    return fig


def certified_accuracy_figure(
    curves: Sequence[tuple[str, list[tuple[float, float]]]], eps: float
) -> go.Figure:
    """Certified accuracy (%) against the L2 radius ε, one line per model, the headline ε marked."""
    fig = go.Figure()
    for name, curve in curves:
        fig.add_scatter(
            x=[e for e, _ in curve],
            y=[a for _, a in curve],
            mode="lines+markers",
            name=name,
            line=_line(name),
            hovertemplate=f"{name}<br>ε = %{{x:g}}: %{{y:.1f}}%<extra></extra>",
        )
    fig.add_vline(x=eps, line_dash="dash", line_color="#555", annotation_text=f"ε = {eps:g}")
    fig.update_layout(
        title="Certified accuracy on the MNIST test set against the L2 radius ε",
        xaxis={"title": "ε (L2)", "rangemode": "tozero"},
        yaxis={"title": "certified accuracy (%)", "range": [0, 100]},
        height=400,
        legend=LEGEND_BELOW,
    )
    return fig


def estimates_figure(snapshot: EstimateSnapshot, true_w1: float | None, title: str) -> go.Figure:
    """Each critic's bound-divided estimate (± one standard error) against steps, and the true W1
    as a dashed line when known."""
    fig = go.Figure()
    for name, history in snapshot.estimates.items():
        fig.add_trace(
            go.Scatter(
                x=snapshot.steps,
                y=[e.value for e in history],
                error_y={"type": "data", "array": [e.stderr for e in history], "visible": True},
                mode="lines+markers",
                name=name,
                line={"color": model_color(name)},
            )
        )
    if true_w1 is not None:
        fig.add_hline(y=true_w1, line_dash="dash", annotation_text=f"true W1 = {true_w1:g}")
    fig.update_layout(
        title=title,
        xaxis={"title": "step", "range": [0, max(1, snapshot.total_steps)]},
        yaxis={"title": "(E_P f − E_Q f) / L  (held-out samples)", "rangemode": "tozero"},
        height=420,
        legend={"orientation": "h", "y": -0.2},
    )
    return fig

"""The per-image computations the demo shows (bcop.report) and the Jacobian spectra (bcop.spectra)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from bcop import create_model
from bcop.certify import lipschitz_bound
from bcop.hub import checkpoints_dir
from bcop.preprocess import to_mnist_format
from bcop.report import attack_image, certified_curve, certify_image
from bcop.results import read_results
from bcop.spectra import jacobian_spectra

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "digit_7_0.png"


def test_bcop_jacobian_keeps_every_singular_value_at_one_after_the_last_layer_adding_channels() -> None:
    torch.manual_seed(0)
    model = create_model("bcop-small-mnist").eval()
    layers = jacobian_spectra(model, to_mnist_format(EXAMPLE).unsqueeze(0))
    assert layers[-1].name == "output" and torch.equal(layers[-1].singular_values, torch.ones(10))
    last_expanding = max(i for i, layer in enumerate(layers) if layer.adds_channels)
    for layer in layers[last_expanding + 1 :]:
        torch.testing.assert_close(layer.singular_values, torch.ones(10), atol=1e-4, rtol=0)
    for layer in layers:
        assert float(layer.singular_values.max()) <= 1 + 1e-4, f"{layer.name}: a 1-Lipschitz network"
    assert float(layers[0].singular_values.min()) < 0.99, "conv1 adds channels: its transpose projects"


def test_plain_jacobian_is_not_norm_preserving() -> None:
    torch.manual_seed(0)
    model = create_model("plain-small-mnist").eval()
    layers = jacobian_spectra(model, to_mnist_format(EXAMPLE).unsqueeze(0))
    spread = [float(layer.singular_values.max() / layer.singular_values.min()) for layer in layers[:-1]]
    assert max(spread) > 1.5


def test_the_attack_never_beats_the_certificate_and_the_rows_agree() -> None:
    """On the trained model (radius about 1): the search must find a real adversarial, so its
    norm is a finite upper bound that a broken certificate could exceed (tolerance 1e-4)."""
    torch.manual_seed(0)
    model = create_model("bcop-small-mnist", pretrained=True)
    x = to_mnist_format(EXAMPLE).unsqueeze(0)
    cert = certify_image("bcop-small-mnist", model, x, lipschitz_bound(model))
    attack = attack_image("bcop-small-mnist", model, x, 0.5, cert.lipschitz)
    assert attack.radius == pytest.approx(cert.radius) and attack.prediction == cert.prediction
    assert cert.radius > 0.5, "a trained model certifies this digit"
    assert bool(attack.smallest.success[0]) and math.isfinite(attack.upper), "the search found an adversarial"
    x_adv = attack.smallest.x_adv
    assert int(model(x_adv).argmax()) != cert.prediction
    assert float((x_adv - x).norm()) == pytest.approx(attack.upper, rel=1e-5)
    assert attack.upper >= attack.radius - 1e-4 and 1 - 1e-4 <= attack.ratio < math.inf
    assert attack.row()["certified radius (lower bound)"] == cert.row()["certified radius"]


def test_certified_curve_runs_from_the_clean_accuracy_down_by_increasing_eps() -> None:
    results = read_results(checkpoints_dir() / "bcop-large-mnist")
    curve = certified_curve(results)
    assert curve[0] == (0.0, results["clean"]) and (1.58, results["certified"]["1.58"]) in curve
    assert [eps for eps, _ in curve] == sorted(eps for eps, _ in curve)
    assert [acc for _, acc in curve] == sorted((acc for _, acc in curve), reverse=True)
    assert certified_curve({"clean": 98.0}) == []

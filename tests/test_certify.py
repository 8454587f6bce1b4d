"""Tests for bcop.certify: margins, radii, certified accuracy on models with known logits, the
layer-wise Lipschitz bound, and soundness of certificates against a strong PGD attack.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bcop import create_model
from bcop.attacks import pgd_l2
from bcop.certify import (
    certified_accuracy_percent,
    certified_radius,
    certify,
    count_certified,
    full_float32,
    layer_lipschitz_bounds,
    lipschitz_bound,
    margins,
)
from bcop.layers import LipschitzLinear, MaxMin, OrthogonalLinear

SQRT2 = math.sqrt(2)


pytestmark = pytest.mark.usefixtures("one_thread")


class LogitsFromInput(nn.Module):
    """Toy model whose logits are the input itself: x (N, 1, 1, K) -> logits (N, K)."""

    input_shape = (1, 1, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)

    def lipschitz_bound(self, input_shape=None) -> float:
        return 1.0


LOGITS = torch.tensor([[3.0, 1.0, 2.0, 0.0], [0.0, 5.0, -1.0, 4.5], [1.0, 1.0, 0.0, 0.0]])


# --- margins and radii ------------------------------------------------------------------------


def test_margin_without_labels_is_top_minus_runner_up() -> None:
    """Exact on hand-computed logits (ties give 0)."""
    torch.testing.assert_close(margins(LOGITS), torch.tensor([1.0, 0.5, 0.0]), rtol=0, atol=0)


def test_margin_with_labels_is_true_logit_minus_best_other() -> None:
    """Exact; negative when the label is not the prediction."""
    labels = torch.tensor([0, 3, 2])
    torch.testing.assert_close(margins(LOGITS, labels), torch.tensor([1.0, -0.5, -1.0]), rtol=0, atol=0)


def test_margins_reject_logits_that_are_not_n_by_k_with_k_ge_2() -> None:
    with pytest.raises(ValueError, match="logits must be"):
        margins(torch.zeros(4))
    with pytest.raises(ValueError, match="logits must be"):
        margins(torch.zeros(4, 1))


def test_certified_radius_is_margin_over_sqrt2_lipschitz_and_zero_when_wrong() -> None:
    """radius = margin / (sqrt(2) L) to 1e-7 relative; wrong predictions get exactly 0."""
    torch.testing.assert_close(
        certified_radius(LOGITS, 2.0), torch.tensor([1.0, 0.5, 0.0]) / (SQRT2 * 2.0), rtol=1e-7, atol=0
    )
    labels = torch.tensor([0, 3, 2])
    torch.testing.assert_close(
        certified_radius(LOGITS, 0.5, labels),
        torch.tensor([1.0 / (SQRT2 * 0.5), 0.0, 0.0]),
        rtol=1e-7,
        atol=0,
    )
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="Lipschitz bound must be positive"):
            certified_radius(LOGITS, bad)


def test_certify_reports_prediction_margin_radius_and_probabilities() -> None:
    """Toy model with L = 1: radius = margin / sqrt(2) (1e-7), probabilities sum to 1 (1e-6)."""
    cert = certify(LogitsFromInput(), LOGITS.view(3, 1, 1, 4))
    assert cert.lipschitz == 1.0
    assert cert.prediction.tolist() == [0, 1, 0]
    torch.testing.assert_close(cert.margin, torch.tensor([1.0, 0.5, 0.0]))
    torch.testing.assert_close(cert.radius, cert.margin / SQRT2, rtol=1e-7, atol=0)
    torch.testing.assert_close(cert.probabilities.sum(dim=1), torch.ones(3), rtol=0, atol=1e-6)
    torch.testing.assert_close(cert.logits, LOGITS)


def test_certified_accuracy_counts_correct_examples_with_radius_at_least_eps_in_percent() -> None:
    """Hand-counted on two batches with L = 1/sqrt(2), so radius = margin (exact counts)."""
    batches = [
        (LOGITS.view(3, 1, 1, 4), torch.tensor([0, 1, 2])),  # margins 1.0, 0.5, wrong
        (torch.tensor([[0.0, 0.25, 0.0, 0.0], [2.0, 0.0, 0.0, 0.0]]).view(2, 1, 1, 4), torch.tensor([1, 1])),
    ]  # margins 0.25, wrong
    result = certified_accuracy_percent(
        LogitsFromInput(), batches, [0.0, 0.3, 0.75, 2.0], lipschitz=1 / SQRT2
    )
    assert result["n"] == 5
    assert result["clean"] == pytest.approx(60.0)
    assert result["lipschitz"] == pytest.approx(1 / SQRT2)
    assert result["certified"] == pytest.approx({0.0: 60.0, 0.3: 40.0, 0.75: 20.0, 2.0: 0.0})


class ScaledLogits(LogitsFromInput):
    """Logits 3 x the input: its bound is 3, so radii are a third of those under an assumed L = 1."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 3 * x.flatten(1)

    def lipschitz_bound(self, input_shape=None) -> float:
        return 3.0


def test_certified_accuracy_rejects_empty_data_and_uses_the_models_bound_by_default() -> None:
    """Margins 3.0 and 1.5 at L = 3: radii 3 / (3 sqrt 2) = 0.71 and 0.35 (with L = 1 they
    would be 2.1 and 1.1), so at eps 0.5 one example is certified, not two."""
    with pytest.raises(ValueError, match="no data"):
        count_certified(LogitsFromInput(), [], [0.1], lipschitz=1.0)
    batch = (LOGITS[:2].view(2, 1, 1, 4), torch.tensor([0, 1]))
    counts = count_certified(ScaledLogits(), [batch], [0.5, 1.0])
    assert counts.lipschitz == 3.0 and counts.n == counts.correct == 2
    assert counts.certified == {0.5: 1, 1.0: 0}
    assert count_certified(ScaledLogits(), [batch], [0.5], lipschitz=1.0).certified == {0.5: 2}


# --- the network bound ------------------------------------------------------------------------


def _two_layer(scale1: float, scale2: float) -> nn.Sequential:
    """Flatten -> dense (spectral norm scale1) -> MaxMin -> dense (spectral norm scale2)."""
    first, second = LipschitzLinear(6, 4, bias=True), LipschitzLinear(4, 3, bias=True)
    with torch.no_grad():
        first.weight.copy_(scale1 * torch.linalg.qr(torch.randn(6, 4)).Q.mT)
        second.weight.copy_(scale2 * torch.linalg.qr(torch.randn(4, 3)).Q.mT)
    model = nn.Sequential(nn.Flatten(), first, MaxMin(), second, nn.ReLU())
    model.input_shape = (1, 2, 3)
    return model


def test_lipschitz_bound_is_the_product_of_the_layer_bounds() -> None:
    """Spectral norms 2 and 3 give 6 (1e-6 relative); every layer is listed by name, in order."""
    torch.manual_seed(0)
    model = _two_layer(2.0, 3.0)
    bounds = layer_lipschitz_bounds(model)
    assert [name for name, _ in bounds] == ["0", "1", "2", "3", "4"]
    assert [b for _, b in bounds] == pytest.approx([1.0, 2.0, 1.0, 3.0, 1.0], rel=1e-6)
    assert lipschitz_bound(model) == pytest.approx(6.0, rel=1e-6)


def test_an_eval_mode_model_is_orthonormal_to_1e5_and_bounded_as_it_computes() -> None:
    """A Björck dense layer whose raw weight is as ill-conditioned as a trained one (singular
    values 1 to 68). In eval mode its weight is orthonormal to 1e-5 and the same with and
    without gradients recorded, so outputs do not depend on the grad mode, and the bound (asked
    for with gradients enabled, as evaluation code does) is within 1e-5 of 1. In train mode
    the float32 recipe gives a slightly different weight (also orthonormal, to 1e-4: Note
    [Orthonormal in float32 while training]), and the bound is that weight's: each mode is
    bounded as it computes. (Evaluation had bounded the train-mode weights of an eval-mode model.)"""
    torch.manual_seed(0)
    layer = OrthogonalLinear(1200, 300)
    u = torch.linalg.qr(torch.randn(1200, 300, dtype=torch.float64)).Q
    v = torch.linalg.qr(torch.randn(300, 300, dtype=torch.float64)).Q
    with torch.no_grad():
        raw = (u * torch.logspace(0, math.log10(68.0), 300, dtype=torch.float64)) @ v.mT
        layer.parametrizations.weight.original.copy_(raw.mT.float())
    model = nn.Sequential(nn.Flatten(), layer)
    model.input_shape = (1200,)
    x = torch.rand(3, 1200)

    model.eval()
    assert torch.is_grad_enabled() and layer.parametrizations.weight.original.requires_grad
    assert abs(lipschitz_bound(model) - 1) < 1e-5
    with torch.no_grad():
        assert abs(float(torch.linalg.matrix_norm(layer.weight.double(), ord=2)) - 1) < 1e-5
        y_no_grad = model(x)
    assert torch.equal(model(x).detach(), y_no_grad)

    model.train()
    with torch.no_grad():
        train_weight = layer.weight.double()
        assert abs(lipschitz_bound(model) - float(torch.linalg.matrix_norm(train_weight, ord=2))) < 1e-12
        assert abs(lipschitz_bound(model) - 1) < 1e-4
        assert torch.allclose(model(x), y_no_grad, atol=1e-4) and not torch.equal(model(x), y_no_grad)


def test_lipschitz_bound_refuses_layers_that_cannot_bound_themselves() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    with pytest.raises(ValueError, match=r"layer '1' \(Linear\) cannot bound its Lipschitz constant"):
        lipschitz_bound(model, (1, 2, 2))


def test_non_sequential_models_are_bounded_by_their_own_method_or_refused() -> None:
    """A childless module used to get the empty product 1.0 (an unsound certificate); now it
    must bound itself or the call raises."""
    with pytest.raises(ValueError, match="Linear is not an nn.Sequential and has no lipschitz_bound"):
        lipschitz_bound(nn.Linear(4, 2), (4,))

    class Doubled(LogitsFromInput):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return 2.5 * x.flatten(1)

        def lipschitz_bound(self, input_shape=None) -> float:
            return 2.5

    assert layer_lipschitz_bounds(Doubled()) == [("model", 2.5)]
    cert = certify(Doubled(), LOGITS.view(3, 1, 1, 4))
    torch.testing.assert_close(cert.radius, 2.5 * torch.tensor([1.0, 0.5, 0.0]) / (SQRT2 * 2.5))


def test_lipschitz_bound_works_for_float64_models() -> None:
    """The probe input follows the model's dtype. The float64 model rebuilds its kernels in
    float64, so the bound moves by float32 rounding only (1e-4 relative)."""
    torch.manual_seed(0)
    model = create_model("bcop-small-mnist")
    bound32 = lipschitz_bound(model)
    assert lipschitz_bound(model.double()) == pytest.approx(bound32, rel=1e-4)


# --- soundness against attacks ----------------------------------------------------------------


@pytest.fixture(scope="module")
def trained_small() -> nn.Module:
    """bcop-small-mnist after 20 Adam steps on random data, converted to float64."""
    torch.manual_seed(0)
    model = create_model("bcop-small-mnist")
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(64, 1, 28, 28, generator=gen)
    y = torch.randint(0, 10, (64,), generator=gen)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(20):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return model.double().eval()


def test_no_pgd_perturbation_inside_the_certified_radius_flips_the_prediction(trained_small) -> None:
    """PGD (margin loss, 100 steps of 2.5 eps / 100) at eps = 0.99 x each example's certified
    radius never changes the prediction of 24 random inputs (float64)."""
    model = trained_small
    x = torch.rand(24, 1, 28, 28, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    cert = certify(model, x)
    assert (cert.radius > 0).all()
    eps = 0.99 * cert.radius
    result = pgd_l2(model, x, cert.prediction, eps, steps=100, step_size=2.5 * eps / 100)
    assert not result.success.any()
    assert (result.norm <= eps + 1e-9).all()


def test_pgd_just_beyond_the_certified_radius_does_flip_predictions(trained_small) -> None:
    """Control for the soundness test: the same attack at eps = 1.5 x the certified radius
    breaks at least half of the same inputs (all of them, in practice), so the check above can
    fail and the certificate is not vacuous."""
    model = trained_small
    x = torch.rand(24, 1, 28, 28, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    cert = certify(model, x)
    eps = 1.5 * cert.radius
    result = pgd_l2(model, x, cert.prediction, eps, steps=100, step_size=2.5 * eps / 100)
    assert result.success.float().mean() >= 0.5


def test_full_float32_turns_tf32_off_inside_and_restores_the_flags_after() -> None:
    flags = torch.backends.cuda.matmul, torch.backends.cudnn
    saved = [f.allow_tf32 for f in flags]
    try:
        for f in flags:
            f.allow_tf32 = True
        with full_float32():
            assert [f.allow_tf32 for f in flags] == [False, False]

        @full_float32()
        def inside() -> list[bool]:
            return [f.allow_tf32 for f in flags]

        assert inside() == [False, False]
        assert [f.allow_tf32 for f in flags] == [True, True]  # restored, also after the decorator
        with pytest.raises(RuntimeError), full_float32():
            raise RuntimeError("an error inside")
        assert [f.allow_tf32 for f in flags] == [True, True]
    finally:
        for f, value in zip(flags, saved, strict=True):
            f.allow_tf32 = value

"""Tests for bcop.attacks: PGD and FGM stay in the box and the ball, report honestly, reject bad
input; the minimal-distance search respects certificates and breaks an easy model.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from bcop import create_model
from bcop.attacks import STARTS, fgm_l2, minimal_adversarial_distance, pgd_l2
from bcop.certify import certify

EPS_TOL = 1e-5


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def plain_model() -> nn.Module:
    torch.manual_seed(0)
    return create_model("plain-small-mnist").eval()


def _box_input(n: int = 6, seed: int = 0) -> torch.Tensor:
    """Random images in [0, 1] with many pixels exactly at 0 or 1, where clipping matters."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 28, 28, generator=gen)
    return torch.where(x < 0.3, torch.zeros_like(x), torch.where(x > 0.7, torch.ones_like(x), x))


def _labels(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x).argmax(dim=1)


def _linear_model(scale: float, seed: int = 0) -> nn.Sequential:
    """Flatten -> Linear(784, 10): easily broken when its rows differ a lot (large scale)."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    with torch.no_grad():
        model[1].weight.mul_(scale)
    return model.double()


# --- box and ball -----------------------------------------------------------------------------


@pytest.mark.parametrize("steps", [0, 20])
@pytest.mark.parametrize("start", STARTS)
@pytest.mark.parametrize("eps", [0.5, 3.0, "per-example"])
def test_pgd_stays_in_the_unit_box_and_the_eps_ball(plain_model, eps, start: str, steps: int) -> None:
    """x_adv in [0, 1] exactly and ||x_adv - x|| <= eps + 1e-5; the reported norm is the real
    one (1e-5)."""
    x = _box_input()
    y = _labels(plain_model, x)
    eps_t = torch.linspace(0.1, 4.0, 6) if eps == "per-example" else torch.full((6,), float(eps))
    eps_arg = eps_t if eps == "per-example" else float(eps)
    result = pgd_l2(plain_model, x, y, eps_arg, steps=steps, step_size=0.2, start=start)
    assert result.x_adv.min() >= 0 and result.x_adv.max() <= 1
    norms = (result.x_adv - x).flatten(1).norm(dim=1)
    assert (norms <= eps_t + EPS_TOL).all()
    torch.testing.assert_close(result.norm, norms, rtol=0, atol=EPS_TOL)


@pytest.mark.parametrize("steps", [0, 5])
def test_a_box_start_outside_the_ball_never_counts_as_an_attack(steps: int) -> None:
    """The paper's start moves every pixel by up to eps, far outside the L2 ball. On a blank
    image, a model that flips to class 1 when the pixels sum to more than 50 is fooled there
    (the sum is about 98 at eps 0.5), while nothing in the ball reaches it (at most
    0.5 * 28 = 14): the attack must report no success, and a point inside the ball."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 2)).double()
    with torch.no_grad():
        model[1].weight.zero_()
        model[1].weight[1] = 1.0
        model[1].bias.copy_(torch.tensor([0.0, -50.0]))
    x = torch.zeros(4, 1, 28, 28, dtype=torch.float64)
    y = torch.zeros(4, dtype=torch.long)
    noise = torch.rand(x.shape, generator=torch.Generator().manual_seed(0), dtype=x.dtype) - 0.5
    start = (x + noise).clamp(0, 1)
    assert bool((model(start).argmax(1) == 1).all())  # the box start itself is misclassified
    result = pgd_l2(model, x, y, 0.5, steps=steps, step_size=0.1, start="box")
    assert not bool(result.success.any())
    assert bool((result.norm <= 0.5 + EPS_TOL).all())


def test_counting_only_the_last_iterate_is_never_stronger(plain_model) -> None:
    """The paper counts an example as broken only if PGD's last iterate fools the model; we
    count any iterate. Same start and steps: every example the former breaks, the latter breaks
    too, and the former's successes are exactly the misclassified returned inputs."""
    x = _box_input(12)
    y = _labels(plain_model, x)
    for start in ("ball", "box"):
        last = pgd_l2(plain_model, x, y, 1.5, steps=15, step_size=0.1, start=start, any_iterate=False)
        anywhere = pgd_l2(plain_model, x, y, 1.5, steps=15, step_size=0.1, start=start)
        assert bool((anywhere.success | ~last.success).all())
        assert bool((last.success == (plain_model(last.x_adv).argmax(1) != y)).all())
        assert anywhere.success.sum() > 0


def test_pgd_attacks_each_example_on_its_own() -> None:
    """Examples already broken are dropped from the batch: every example's outcome is the one
    it gets attacked alone (float64, so batching cannot change a rounding), and the progress
    still reaches 1 when all of them break before the last step."""
    model = _linear_model(30.0).double()
    x = _box_input(8).double()
    y = _labels(model, x)
    eps = torch.linspace(5.0, 9.0, 8, dtype=torch.float64)  # some break, at different steps
    for any_iterate in (True, False):
        kw = {"steps": 12, "step_size": 1.0, "start": "none", "any_iterate": any_iterate}
        batch = pgd_l2(model, x, y, eps, **kw)
        assert 0 < int(batch.success.sum()) < len(y)
        for i in range(len(y)):
            alone = pgd_l2(model, x[i : i + 1], y[i : i + 1], eps[i : i + 1], **kw)
            assert bool(alone.success[0] == batch.success[i])
            torch.testing.assert_close(alone.x_adv[0], batch.x_adv[i], rtol=0, atol=1e-12)
    seen: list[float] = []
    result = pgd_l2(model, x, y, 50.0, steps=40, step_size=5.0, start="none", progress=seen.append)
    assert result.success.all() and len(seen) < 40 and seen[-1] == 1.0


@pytest.mark.parametrize("eps", [0.5, 3.0, 100.0])
def test_fgm_stays_in_the_unit_box_and_the_eps_ball(plain_model, eps: float) -> None:
    x = _box_input()
    y = _labels(plain_model, x)
    result = fgm_l2(plain_model, x, y, eps)
    assert result.x_adv.min() >= 0 and result.x_adv.max() <= 1
    assert (result.norm <= eps + EPS_TOL).all()
    torch.testing.assert_close(result.norm, (result.x_adv - x).flatten(1).norm(dim=1), rtol=0, atol=EPS_TOL)


@pytest.mark.parametrize("attack", ["pgd", "fgm"])
def test_attack_reports_the_models_prediction_on_the_returned_input(plain_model, attack: str) -> None:
    x = _box_input()
    y = _labels(plain_model, x)
    if attack == "pgd":
        result = pgd_l2(plain_model, x, y, 2.0, steps=10, step_size=0.5, loss="ce")
    else:
        result = fgm_l2(plain_model, x, y, 2.0, loss="ce")
    pred = _labels(plain_model, result.x_adv)
    assert torch.equal(result.prediction, pred)
    assert torch.equal(result.success, pred != y)


def test_zero_epsilon_returns_the_clean_input(plain_model) -> None:
    x = _box_input()
    y = _labels(plain_model, x)
    result = pgd_l2(plain_model, x, y, 0.0, steps=5)
    assert torch.equal(result.x_adv, x) and not result.success.any()
    assert torch.equal(fgm_l2(plain_model, x, y, 0.0).x_adv, x)


def test_pgd_is_reproducible_with_a_seed_and_reports_progress(plain_model) -> None:
    x = _box_input()
    y = _labels(plain_model, x)
    seen: list[float] = []
    a = pgd_l2(plain_model, x, y, 1.0, steps=8, step_size=0.3, seed=5, progress=seen.append)
    b = pgd_l2(plain_model, x, y, 1.0, steps=8, step_size=0.3, seed=5)
    assert torch.equal(a.x_adv, b.x_adv)
    assert seen == sorted(seen) and seen[-1] == pytest.approx(1.0)


def test_attacks_leave_the_weights_untouched(plain_model) -> None:
    """requires_grad flags are restored and no parameter gradient is accumulated."""
    flags = [p.requires_grad for p in plain_model.parameters()]
    x = _box_input()
    pgd_l2(plain_model, x, _labels(plain_model, x), 1.0, steps=3)
    fgm_l2(plain_model, x, _labels(plain_model, x), 1.0)
    assert [p.requires_grad for p in plain_model.parameters()] == flags
    assert all(p.grad is None for p in plain_model.parameters())


# --- bad input --------------------------------------------------------------------------------


@pytest.mark.parametrize("eps", [-0.1, float("nan"), float("inf"), torch.tensor([0.1, -1.0])], ids=str)
@pytest.mark.parametrize("attack", ["pgd", "fgm", "minimal"])
def test_attacks_reject_bad_epsilon(plain_model, attack: str, eps) -> None:
    x = _box_input(2)
    y = torch.zeros(2, dtype=torch.long)
    call = {
        "pgd": lambda: pgd_l2(plain_model, x, y, eps, steps=1),
        "fgm": lambda: fgm_l2(plain_model, x, y, eps),
        "minimal": lambda: minimal_adversarial_distance(plain_model, x, y, max_eps=eps),
    }[attack]
    with pytest.raises(ValueError, match="epsilon must be finite and >= 0"):
        call()


@pytest.mark.parametrize("low_high", [(-0.01, 1.0), (0.0, 1.01), (0.0, 255.0)], ids=str)
@pytest.mark.parametrize("attack", [pgd_l2, fgm_l2])
def test_attacks_reject_inputs_outside_the_unit_box(plain_model, attack, low_high) -> None:
    x = _box_input(2)
    x[0, 0, 0, 0], x[1, 0, 0, 0] = low_high
    with pytest.raises(ValueError, match=r"x must lie in \[0, 1\]"):
        attack(plain_model, x, torch.zeros(2, dtype=torch.long), 0.5)


def test_attacks_reject_bad_shapes_and_unknown_loss(plain_model) -> None:
    x = _box_input(2)
    y = torch.zeros(2, dtype=torch.long)
    with pytest.raises(ValueError, match=r"x must be \(N, C, H, W\)"):
        pgd_l2(plain_model, x[:, 0], y, 0.5, steps=1)
    with pytest.raises(ValueError, match=r"labels must have shape \(2,\)"):
        fgm_l2(plain_model, x, torch.zeros(3, dtype=torch.long), 0.5)
    with pytest.raises(ValueError, match="unknown attack loss 'hinge'"):
        fgm_l2(plain_model, x, y, 0.5, loss="hinge")


# --- minimal adversarial distance --------------------------------------------------------------


def test_minimal_adversarial_distance_is_at_least_the_certified_radius_for_bcop() -> None:
    """For a BCOP network (float64) every distance found is >= the certified radius (1e-9
    relative): PGD's upper bound and the certificate's lower bound are consistent."""
    torch.manual_seed(0)
    model = create_model("bcop-small-mnist").double().eval()
    x = torch.rand(6, 1, 28, 28, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    cert = certify(model, x)
    result = minimal_adversarial_distance(
        model, x, cert.prediction, max_eps=2.0, search_steps=6, pgd_steps=30
    )
    assert result.success.all()
    assert (result.norm >= cert.radius * (1 - 1e-9)).all()


def test_minimal_adversarial_distance_finds_the_boundary_of_a_linear_model() -> None:
    """For logits W x + b and x away from the box's faces, the exact distance to the nearest
    other class is min_j (f_y - f_j) / ||w_y - w_j||. The search succeeds everywhere, its
    adversarials are misclassified, and its distance lies in [exact, exact + 0.05] (the
    bracket after 8 halvings of max_eps = 8 is 0.03)."""
    model = _linear_model(scale=3.0)
    gen = torch.Generator().manual_seed(2)
    x = 0.4 + 0.2 * torch.rand(5, 1, 28, 28, generator=gen, dtype=torch.float64)
    y = _labels(model, x)
    w, b = model[1].weight.detach(), model[1].bias.detach()
    logits = x.flatten(1) @ w.mT + b
    exact = []
    for i in range(5):
        gaps = logits[i, y[i]] - logits[i]
        dists = gaps / (w[y[i]] - w).norm(dim=1)
        dists[y[i]] = math.inf
        exact.append(dists.min())
    exact = torch.stack(exact)
    assert (exact < 0.5).all()  # the box [0, 1] is out of reach: x is 0.4 from every face

    result = minimal_adversarial_distance(model, x, y)
    assert result.success.all()
    assert (_labels(model, result.x_adv) != y).all()
    assert (result.norm >= exact * (1 - 1e-9)).all()
    assert (result.norm <= exact + 0.05).all()


def test_minimal_adversarial_distance_reports_inf_where_nothing_is_found() -> None:
    """A constant model cannot be fooled: success is False and the distance is inf."""
    model = _linear_model(scale=0.0)
    with torch.no_grad():
        model[1].bias.copy_(torch.arange(10, dtype=torch.float64))
    x = torch.rand(3, 1, 28, 28, dtype=torch.float64)
    result = minimal_adversarial_distance(
        model, x, _labels(model, x), max_eps=1.0, search_steps=2, pgd_steps=3
    )
    assert not result.success.any()
    assert torch.isinf(result.norm).all()

"""Tests for bcop.gradnorm: gradient-norm-preserving networks keep the margin gradient's norm at
sqrt(2) from the logits back to the input of every non-widening layer; plain networks do not.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from bcop import create_model
from bcop.gradnorm import layer_gradient_norms

GNP_TOL = 1e-4


pytestmark = pytest.mark.usefixtures("one_thread")


def _inputs(n: int = 8, shape: tuple[int, ...] = (1, 28, 28), seed: int = 0) -> torch.Tensor:
    return torch.rand(n, *shape, generator=torch.Generator().manual_seed(seed))


def _widens(module: nn.Module) -> bool:
    if isinstance(module, nn.Linear):
        return module.in_features < module.out_features
    return module.in_channels < module.out_channels


def _check_gnp(model: nn.Sequential, expected_names: list[str]) -> None:
    """Margin gradient: sqrt(2) at the logits, the same at every non-widening layer's input
    (1e-4 relative, float32), at most that at a widening layer's input."""
    norms = layer_gradient_norms(model, _inputs(shape=model.input_shape))
    assert [r.name for r in norms] == expected_names
    output = norms[-1].per_example
    torch.testing.assert_close(output, torch.full_like(output, math.sqrt(2)), rtol=GNP_TOL, atol=0)
    layers = dict(model.named_children())
    for record in norms[:-1]:
        if _widens(layers[record.name]):
            assert (record.per_example <= output * (1 + GNP_TOL)).all()
        else:
            torch.testing.assert_close(record.per_example, output, rtol=GNP_TOL, atol=0)


def test_bjorck_fc_keeps_the_margin_gradient_norm_at_every_non_widening_layer() -> None:
    """bjorck-fc-mnist: 784 -> 1024 widens (J^T only shrinks), every later layer keeps sqrt(2)."""
    torch.manual_seed(0)
    _check_gnp(create_model("bjorck-fc-mnist"), ["dense1", "dense2", "dense3", "logits", "output"])


def test_bcop_small_keeps_the_margin_gradient_norm_at_every_non_widening_layer() -> None:
    """bcop-small-mnist: conv1 (4 -> 16 channels) widens; conv2 (64 -> 32), the dense layers,
    MaxMin and invertible downsampling all keep sqrt(2)."""
    torch.manual_seed(0)
    _check_gnp(create_model("bcop-small-mnist"), ["conv1", "conv2", "dense1", "logits", "output"])


@pytest.mark.parametrize("name", ["plain-fc-mnist", "plain-small-mnist"])
def test_plain_networks_change_the_gradient_norm_across_layers(name: str) -> None:
    """Control: in an unconstrained network the mean norms of the layers differ by > 5%."""
    torch.manual_seed(0)
    means = [r.mean for r in layer_gradient_norms(create_model(name), _inputs())]
    assert max(means) > 1.05 * min(means)


def test_gradient_norms_come_in_input_to_output_order_with_per_example_values() -> None:
    """Names follow the network's layer order; mean is the mean of per_example (1e-6); the
    ``loss`` objective and explicit labels work; layer_types selects what is reported."""
    torch.manual_seed(0)
    model = create_model("plain-small-mnist")
    x = _inputs(5)
    y = torch.arange(5)
    norms = layer_gradient_norms(model, x, y, objective="loss")
    weights = [name for name, m in model.named_children() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert [r.name for r in norms] == [*weights, "output"] == ["conv1", "conv2", "dense1", "logits", "output"]
    for r in norms:
        assert r.per_example.shape == (5,)
        assert r.mean == pytest.approx(float(r.per_example.mean()), rel=1e-6)
    only_linear = layer_gradient_norms(model, x, y, layer_types=(nn.Linear,))
    assert [r.name for r in only_linear] == ["dense1", "logits", "output"]


def test_gradient_norms_leave_weights_untouched_and_reject_bad_input() -> None:
    torch.manual_seed(0)
    model = create_model("plain-small-mnist")
    layer_gradient_norms(model, _inputs(2))
    assert all(p.requires_grad and p.grad is None for p in model.parameters())
    with pytest.raises(ValueError, match="unknown objective 'hinge'"):
        layer_gradient_norms(model, _inputs(2), objective="hinge")
    with pytest.raises(ValueError, match=r"x must be \(N, C, H, W\)"):
        layer_gradient_norms(model, torch.rand(2, 784))


def test_only_a_layer_that_shrinks_every_gradient_without_adding_channels_is_named() -> None:
    """A fresh BCOP network keeps the top of every band from the logits back (its channel-reducing
    convolution is a co-isometry); a fresh AOL one does not: its channel-reducing convolution
    starts far below norm 1 (docs/successors.md), so the band's top drops there."""
    from bcop.spectra import jacobian_spectra, shrinking_layers

    x = torch.rand(1, 1, 28, 28)
    torch.manual_seed(0)
    assert shrinking_layers(jacobian_spectra(create_model("bcop-small-mnist").eval(), x)) == []
    aol = jacobian_spectra(create_model("aol-small-mnist").eval(), x)
    found = shrinking_layers(aol)
    assert [name for name, _, _ in found] == ["conv2"] and not aol[1].adds_channels
    (_, after, before), top = found[0], {j.name: float(j.singular_values.max()) for j in aol}
    assert (before, after) == (top["conv2"], top["dense1"]) and before < 0.99 * after

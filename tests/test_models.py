"""Tests for bcop.models: the registry of names, configs, building, input checking, and the
Lipschitz constant of a whole BCOP network measured three ways against its certified bound.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from bcop import create_model, list_models
from bcop.certify import lipschitz_bound
from bcop.hub import checkpoints_dir, load_folder, save_model
from bcop.layers import (
    BCOPConv2d,
    InvertibleDownsample,
    LipschitzLinear,
    MaxMin,
    OrthogonalLinear,
    OSSNConv2d,
    PlainConv2d,
    RKOConv2d,
    SVCMConv2d,
    frozen_weights,
)
from bcop.models import (
    ACTIVATIONS,
    ARCHS,
    CONFIG_SCHEMA_VERSION,
    DATASETS,
    PAPER_BJORCK,
    LipschitzNet,
    ModelConfig,
    OrthoParams,
    parse_model_name,
)
from bcop.orthogonal import power_iteration

CONV_CLASSES = {
    "bcop": BCOPConv2d,
    "rko": RKOConv2d,
    "ossn": OSSNConv2d,
    "svcm": SVCMConv2d,
    "plain": PlainConv2d,
}
# Large and FC networks with orthogonalised or projected weights take ~0.5-2 s each to build on
# 2 cores; the small ones and the unconstrained ones are built in full, plus bcop-large-mnist.
SCHEMA1 = Path(__file__).parent / "data" / "schema1"  # files as bcop wrote them before schema versions
CHEAP_NAMES = [n for n in list_models() if "-small-" in n or n.startswith("plain-")] + ["bcop-large-mnist"]


pytestmark = pytest.mark.usefixtures("one_thread")


# --- names and configs ------------------------------------------------------------------------


def test_model_names_cover_every_architecture_layer_dataset_and_activation() -> None:
    """5 conv types x 2 activations for small and large, 2 dense types x 2 for fc, x 2 datasets."""
    assert len(list_models()) == len(set(list_models())) == 2 * (2 * 5 * 2 + 2 * 2)
    for name in (
        "bcop-large-mnist",
        "rko-small-cifar10",
        "bjorck-fc-mnist",
        "plain-large-mnist",
        "bcop-large-mnist-relu",
        "plain-small-cifar10-maxmin",
    ):
        assert name in list_models()
    assert {parse_model_name(n).arch for n in list_models()} == set(ARCHS)
    assert {parse_model_name(n).dataset for n in list_models()} == set(DATASETS)
    assert {parse_model_name(n).activation for n in list_models()} == set(ACTIVATIONS)


@pytest.mark.parametrize("name", list_models())
def test_parse_model_name_round_trips(name: str) -> None:
    config = parse_model_name(name)
    assert config.name == name
    assert ModelConfig.from_dict(config.to_dict()) == config


def test_default_activation_is_maxmin_for_constrained_and_relu_for_plain_networks() -> None:
    assert parse_model_name("bcop-large-mnist").activation == "maxmin"
    assert parse_model_name("plain-large-mnist").activation == "relu"
    assert parse_model_name("bcop-large-mnist-relu").activation == "relu"


@pytest.mark.parametrize(
    "name", ["bcop-huge-mnist", "bcop-large-imagenet", "bcop-large-mnist-maxmin", "", "bcop"]
)
def test_unknown_model_name_raises_a_value_error_listing_known_names(name: str) -> None:
    with pytest.raises(ValueError, match="unknown model name") as info:
        create_model(name)
    assert "bcop-large-mnist" in str(info.value) and "bjorck-fc-cifar10" in str(info.value)


def test_model_config_from_dict_ignores_unknown_keys() -> None:
    data = {
        "arch": "small",
        "conv": "rko",
        "dataset": "mnist",
        "library_name": "bcop",
        "metrics": {"clean": 0.9},
    }
    config = ModelConfig.from_dict(data)
    assert config == ModelConfig("small", "rko", "mnist")
    assert config.activation == "maxmin" and config.name == "rko-small-mnist"


# --- config.json: schema versions and validation ---------------------------------------------


def test_config_json_form_carries_its_schema_version_and_the_ortho_settings_as_one_object() -> None:
    config = dataclasses.replace(parse_model_name("bcop-large-mnist"), ortho=PAPER_BJORCK)
    data = config.to_dict()
    assert data == {
        "schema_version": CONFIG_SCHEMA_VERSION,
        "arch": "large",
        "conv": "bcop",
        "dataset": "mnist",
        "activation": "maxmin",
        "ortho": {"method": "bjorck", "bjorck_iters": 20},
        "model_name": "bcop-large-mnist",
    }
    assert ModelConfig.from_dict(json.loads(json.dumps(data))) == config


def test_a_saved_model_folder_has_a_current_config_and_loads_back(tmp_path: Path) -> None:
    model = create_model("bcop-small-mnist", ortho=OrthoParams("bjorck", 5))
    save_model(model, tmp_path)
    data = json.loads((tmp_path / "config.json").read_text())
    assert data["schema_version"] == CONFIG_SCHEMA_VERSION and data["ortho"] == {
        "method": "bjorck",
        "bjorck_iters": 5,
    }
    assert load_folder(tmp_path)[0].config == model.config


def test_a_schema_1_config_with_flat_ortho_keys_still_loads() -> None:
    """Configs written before schema versions (a copy of one shipped then): no "schema_version",
    "ortho_method" and "bjorck_iters" beside the other fields."""
    old = json.loads((SCHEMA1 / "bcop-large-mnist" / "config.json").read_text())
    assert "schema_version" not in old and old["ortho_method"] == "polar"
    assert ModelConfig.from_dict(old) == parse_model_name("bcop-large-mnist")
    bjorck = {**old, "ortho_method": "bjorck", "bjorck_iters": 7}
    assert ModelConfig.from_dict(bjorck).ortho == OrthoParams("bjorck", 7)
    assert ModelConfig.from_dict({"arch": "small", "conv": "rko", "dataset": "mnist"}).ortho == OrthoParams()


@pytest.mark.parametrize("name", list_models(pretrained=True))
def test_every_shipped_config_loads_and_matches_its_folder_and_weights(name: str) -> None:
    folder = checkpoints_dir() / name
    config = ModelConfig.from_dict(json.loads((folder / "config.json").read_text()))
    assert config.name == folder.name
    model = LipschitzNet(config)
    assert set(model.state_dict()) == set(load_file(str(folder / "model.safetensors")))


GOOD = {"schema_version": 2, "arch": "small", "conv": "bcop", "dataset": "mnist"}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (["small", "bcop", "mnist"], "must be a JSON object, got list"),
        (
            {**GOOD, "ortho": {"method": "bjorck", "bjorck_iters": "20"}},
            "'ortho.bjorck_iters' must be an integer",
        ),
        (
            {**GOOD, "schema_version": 1, "bjorck_iters": "20"},
            "'bjorck_iters' must be an integer >= 1, got '20'",
        ),
        (
            {**GOOD, "schema_version": 1, "ortho_method": "qr"},
            "'ortho_method': unknown orthonormalisation method",
        ),
        ({**GOOD, "ortho": {"method": "qr"}}, "'ortho.method': unknown orthonormalisation method 'qr'"),
        ({**GOOD, "ortho": {"method": 1}}, "'ortho.method' must be a string"),
        ({**GOOD, "ortho": {"iters": 3}}, r"'ortho' has unknown keys \['iters'\]"),
        ({**GOOD, "ortho": "polar"}, "'ortho' must be an object"),
        ({**GOOD, "conv": "lstm"}, r"conv 'lstm' not in \('bcop', 'rko'"),
        ({**GOOD, "arch": ["small"]}, "field 'arch' must be a string"),
        ({k: v for k, v in GOOD.items() if k != "dataset"}, r"missing field\(s\) dataset"),
        ({**GOOD, "schema_version": 3}, "schema_version 3 was written by a newer bcop"),
        ({**GOOD, "schema_version": "2"}, "'schema_version' must be a positive integer"),
        ({**GOOD, "kind": "generator"}, "describes a generator, not a classifier"),
        (
            {**GOOD, "model_name": "bcop-large-mnist"},
            "does not match the other fields, which describe 'bcop-small",
        ),
    ],
)
def test_invalid_config_json_raises_a_value_error_naming_the_field(data, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ModelConfig.from_dict(data)


def test_invalid_model_config_raises_a_value_error_naming_every_problem() -> None:
    with pytest.raises(ValueError, match="arch 'tiny'.*dataset 'svhn'.*activation 'tanh'"):
        ModelConfig("tiny", "bcop", "svhn", "tanh")
    with pytest.raises(ValueError, match="conv 'bcop' not in .* for arch 'fc'"):
        ModelConfig("fc", "bcop", "mnist")


# --- building ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", CHEAP_NAMES)
def test_model_builds_from_its_name_and_outputs_n_by_10_logits(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name)
    config = parse_model_name(name)
    assert model.config == config and model.input_shape == config.input_shape
    with torch.no_grad():
        logits = model(torch.rand(3, *config.input_shape))
    assert logits.shape == (3, 10) and torch.isfinite(logits).all()
    activation = MaxMin if config.activation == "maxmin" else torch.nn.ReLU
    assert any(isinstance(m, activation) for m in model.modules())
    if config.arch != "fc":
        conv = CONV_CLASSES[config.conv]
        assert all(isinstance(m, conv) for m in model.modules() if isinstance(m, torch.nn.Conv2d))


def test_bcop_large_mnist_has_the_papers_layers_in_order() -> None:
    torch.manual_seed(0)
    model = create_model("bcop-large-mnist")
    names = [name for name, _ in model.named_children()]
    assert names == [
        "conv1",
        "act1",
        "down2",
        "conv2",
        "act2",
        "conv3",
        "act3",
        "down4",
        "conv4",
        "act4",
        "flatten",
        "dense1",
        "dense_act1",
        "dense2",
        "dense_act2",
        "logits",
    ]
    assert isinstance(model.down2, InvertibleDownsample)
    shapes = [
        (m.in_channels, m.out_channels, m.kernel_size[0])
        for m in model.modules()
        if isinstance(m, BCOPConv2d)
    ]
    assert shapes == [(1, 32, 3), (128, 32, 2), (32, 64, 3), (256, 64, 2)]
    assert (model.dense1.in_features, model.dense1.out_features) == (64 * 7 * 7, 512)
    assert isinstance(model.logits, OrthogonalLinear)


def test_plain_fc_network_uses_unconstrained_dense_layers() -> None:
    model = create_model("plain-fc-mnist")
    dense = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in dense] == [
        (784, 1024),
        (1024, 1024),
        (1024, 1024),
        (1024, 10),
    ]
    assert all(type(m) is LipschitzLinear for m in dense)


def test_create_model_overrides_reach_every_orthogonalised_layer() -> None:
    model = create_model("bcop-small-mnist", ortho=OrthoParams("bjorck", 7))
    params = [
        m.parametrizations.weight[0] for m in model.modules() if isinstance(m, (BCOPConv2d, OrthogonalLinear))
    ]
    assert len(params) == 4
    assert all(p.ortho == OrthoParams("bjorck", 7) for p in params)
    assert model.config.ortho == OrthoParams("bjorck", 7)


def test_create_model_names_the_config_fields_when_an_override_is_unknown() -> None:
    with pytest.raises(TypeError, match=r"unknown config fields \['ortho_method'\]; fields: .*'ortho'"):
        create_model("bcop-small-mnist", ortho_method="bjorck")


def test_a_config_dict_with_extra_keys_builds_its_network() -> None:
    model = LipschitzNet(
        ModelConfig.from_dict({"arch": "small", "conv": "plain", "dataset": "cifar10", "extra": 1})
    )
    assert model.config.name == "plain-small-cifar10"
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize(
    "shape", [(2, 28, 28), (2, 3, 28, 28), (2, 1, 32, 32), (1, 1, 1, 28, 28), (784,)], ids=str
)
def test_model_rejects_inputs_of_the_wrong_shape(shape: tuple[int, ...]) -> None:
    model = create_model("plain-small-mnist")
    with pytest.raises(ValueError, match=r"plain-small-mnist expects input of shape \(N, 1, 28, 28\)"):
        model(torch.zeros(shape))


# --- a whole BCOP network is 1-Lipschitz ------------------------------------------------------


@pytest.fixture(scope="module")
def bcop_large() -> tuple[torch.nn.Module, float]:
    """bcop-large-mnist at random init, in float64 for tight measurements, and its bound."""
    torch.manual_seed(0)
    model = create_model("bcop-large-mnist").double().eval()
    return model, lipschitz_bound(model)


def test_bcop_large_mnist_certified_bound_is_at_most_one(bcop_large) -> None:
    """Product of the exact per-layer bounds <= 1 + 1e-4."""
    _, bound = bcop_large
    assert bound <= 1 + 1e-4


def test_bcop_large_mnist_difference_quotients_do_not_exceed_the_bound(bcop_large) -> None:
    """||f(x) - f(x')|| / ||x - x'|| <= bound (1e-9 relative) for 16 random pairs in [0, 1],
    including pairs 1e-3 apart."""
    model, bound = bcop_large
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(16, 1, 28, 28, generator=gen, dtype=torch.float64)
    x2 = torch.rand(16, 1, 28, 28, generator=gen, dtype=torch.float64)
    x2[8:] = (x[8:] + 1e-3 * torch.randn(8, 1, 28, 28, generator=gen, dtype=torch.float64)).clamp(0, 1)
    with torch.no_grad():
        ratio = (model(x) - model(x2)).norm(dim=1) / (x - x2).flatten(1).norm(dim=1)
    assert (ratio <= bound * (1 + 1e-9)).all()


def test_bcop_large_mnist_jacobian_norm_does_not_exceed_the_bound(bcop_large) -> None:
    """At 3 random points: power iteration (50 steps) on J^T J, with J v taken by a double
    vector-Jacobian product, gives ||J|| <= bound (1e-9 relative); it agrees with the SVD of
    the full Jacobian (from below, within 2% after 50 steps)."""
    model, bound = bcop_large
    gen = torch.Generator().manual_seed(2)
    with frozen_weights(model):
        for _ in range(3):
            x0 = torch.rand(1, 1, 28, 28, generator=gen, dtype=torch.float64).requires_grad_(True)
            out = model(x0)
            u = torch.zeros_like(out, requires_grad=True)
            (jtu,) = torch.autograd.grad(out, x0, u, create_graph=True)

            def jvp(v: torch.Tensor, jtu: torch.Tensor = jtu, u: torch.Tensor = u) -> torch.Tensor:
                return torch.autograd.grad(jtu, u, v, create_graph=True)[0]

            measured = power_iteration(jvp, (1, 28, 28), iters=50)
            exact = float(
                torch.linalg.matrix_norm(
                    torch.autograd.functional.jacobian(model, x0.detach()).reshape(10, -1), 2
                )
            )
            assert measured <= bound * (1 + 1e-9)
            assert exact <= bound * (1 + 1e-9)
            assert measured <= exact * (1 + 1e-9) and measured >= 0.98 * exact


def test_bcop_large_mnist_logit_gap_gradient_is_below_sqrt2_times_bound(bcop_large) -> None:
    """The certificate's premise: each logit difference is sqrt(2) L-Lipschitz, so its input
    gradient has norm <= sqrt(2) * bound (1e-9 relative) at random points."""
    model, bound = bcop_large
    x = torch.rand(8, 1, 28, 28, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    with frozen_weights(model):
        x.requires_grad_(True)
        logits = model(x)
        (grad,) = torch.autograd.grad((logits[:, 0] - logits[:, 1]).sum(), x)
    assert (grad.flatten(1).norm(dim=1) <= math.sqrt(2) * bound * (1 + 1e-9)).all()


# --- pretrained models -----------------------------------------------------------------------


def test_create_model_pretrained_returns_the_trained_network_of_the_embedded_checkpoint(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("BCOP_HUB_OWNER", "")  # no Hub: the embedded checkpoints only
    model = create_model("bcop-small-mnist", pretrained=True)
    weights = load_file(str(checkpoints_dir() / "bcop-small-mnist" / "model.safetensors"))
    assert not model.training and model.config == parse_model_name("bcop-small-mnist")
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, weights[key], rtol=0, atol=0)
    fresh = create_model("bcop-small-mnist")
    assert not torch.equal(fresh.state_dict()["logits.bias"], weights["logits.bias"])


def test_create_model_pretrained_fails_clearly_without_weights_or_with_overrides(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("BCOP_HUB_OWNER", "")
    with pytest.raises(ValueError, match="no pretrained weights for 'rko-small-cifar10'"):
        create_model("rko-small-cifar10", pretrained=True)
    with pytest.raises(
        ValueError, match="a pretrained model keeps the config it was trained with; drop ortho"
    ):
        create_model("bcop-small-mnist", pretrained=True, ortho=PAPER_BJORCK)
    with pytest.raises(ValueError, match="unknown model name 'bcop-tiny-mnist'"):
        create_model("bcop-tiny-mnist", pretrained=True)


def test_model_config_is_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        parse_model_name("bcop-large-mnist").arch = "small"  # type: ignore[misc]

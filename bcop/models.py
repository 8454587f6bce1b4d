"""The paper's networks (Small, Large, FC) for MNIST and CIFAR-10, and one registry of names.

:func:`bcop.create_model` (in :mod:`bcop.factory`) is the way in; this module holds the
networks, their configs and the registry it reads (:func:`list_models`).

A model name is ``"{conv}-{arch}-{dataset}"``, optionally followed by ``-{activation}`` when
the activation is not the default: ``bcop-large-mnist``, ``rko-small-cifar10``,
``plain-large-mnist``, ``bjorck-fc-mnist``, ``bcop-large-mnist-relu``. The same strings name
the checkpoints in ``checkpoints/``, the Hub repos and the app's choices.

Strided convolutions are replaced, as in the paper, by invertible downsampling followed by a
stride-1 convolution: "conv c k4 s2" is ``InvertibleDownsample(2)`` then a k=2 convolution,
except for AOC, whose strided convolution is its own (docs/successors.md: how each later
family fits these networks).
"""

from __future__ import annotations

import dataclasses
import itertools
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from bcop.data import DATASET_SHAPES, NUM_CLASSES
from bcop.deprecation import deprecated_names
from bcop.layers import (
    PAPER_BJORCK,
    POLAR,
    AOCConv2d,
    AOLConv2d,
    BCOPConv2d,
    CayleyConv2d,
    InvertibleDownsample,
    LipschitzConv2d,
    LipschitzLinear,
    MaxMin,
    OrthogonalLinear,
    OrthoParams,
    OSSNConv2d,
    PlainConv2d,
    RKOConv2d,
    SLLConv2d,
    SOCConv2d,
    SVCMConv2d,
)

__all__ = [
    "ARCHS",
    "CONVS",
    "ACTIVATIONS",
    "DATASETS",
    "CONFIG_SCHEMA_VERSION",
    "OrthoParams",
    "POLAR",
    "PAPER_BJORCK",
    "ModelConfig",
    "LipschitzNet",
    "list_models",
    "parse_model_name",
    "dense_layer",
]

ARCHS = ("small", "large", "fc")
# The later families (docs/successors.md: how each fits these architectures).
SUCCESSORS = ("cayley", "soc", "aol", "sll", "aoc")
# The paper each later family comes from (its layer's name, the citation shown beside it).
SUCCESSOR_PAPERS = {
    "cayley": ("Cayley", "Trockman & Kolter, ICLR 2021"),
    "soc": ("SOC", "Singla & Feizi, ICML 2021"),
    "aol": ("AOL", "Prach & Lampert, ECCV 2022"),
    "sll": ("SLL", "Araujo et al., ICLR 2023"),
    "aoc": ("AOC", "Boissin et al., ICML 2025"),
}
# Families whose convolution contains its own activation: no activation layer after it.
OWN_ACTIVATION = ("sll",)
# Families whose convolutions take the stride themselves (no invertible downsampling before).
NATIVE_STRIDE = ("aoc",)
CONVS = ("bcop", "rko", "ossn", "svcm", "plain", *SUCCESSORS)
FC_LAYERS = ("bjorck", "plain")
ACTIVATIONS = ("maxmin", "relu")
DATASETS = tuple(DATASET_SHAPES)
# config.json's layout. 1 (no "schema_version"): the orthonormalisation settings as two flat
# keys "ortho_method" and "bjorck_iters". 2: one object "ortho": {"method", "bjorck_iters"}.
CONFIG_SCHEMA_VERSION = 2

# (out_channels, kernel_size, stride) of each convolution, as written in the paper.
CONV_SPECS = {
    "small": [(16, 4, 2), (32, 4, 2)],
    "large": [(32, 3, 1), (32, 4, 2), (64, 3, 1), (64, 4, 2)],
}
DENSE_SPECS = {"small": [100], "large": [512, 512], "fc": [1024, 1024, 1024]}


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild a network (stored as ``config.json`` with its weights).

    Attributes:
        arch: ``"small"``, ``"large"`` or ``"fc"``.
        conv: convolution type (``bcop``, ``rko``, ``ossn``, ``svcm``, ``plain``, or a later
            family: ``cayley``, ``soc``, ``aol``, ``sll``, ``aoc``); for ``fc`` the dense type
            (``bjorck`` or ``plain``).
        dataset: ``"mnist"`` or ``"cifar10"`` (fixes the input shape).
        activation: ``"maxmin"`` or ``"relu"``; default maxmin, relu for plain networks.
        ortho: how every orthonormalised weight is computed (BCOP, RKO and Björck layers).
    """

    arch: str
    conv: str
    dataset: str
    activation: str = ""
    ortho: OrthoParams = POLAR

    def __post_init__(self) -> None:
        if self.activation == "":
            object.__setattr__(self, "activation", default_activation(self.conv))
        problems = []
        if self.arch not in ARCHS:
            problems.append(f"arch {self.arch!r} not in {ARCHS}")
        allowed = FC_LAYERS if self.arch == "fc" else CONVS
        if self.conv not in allowed:
            problems.append(f"conv {self.conv!r} not in {allowed} for arch {self.arch!r}")
        if self.dataset not in DATASETS:
            problems.append(f"dataset {self.dataset!r} not in {DATASETS}")
        if self.activation not in ACTIVATIONS:
            problems.append(f"activation {self.activation!r} not in {ACTIVATIONS}")
        if not isinstance(self.ortho, OrthoParams):
            problems.append(f"ortho must be an OrthoParams, got {self.ortho!r}")
        if problems:
            raise ValueError("invalid model config: " + "; ".join(problems))

    @property
    def name(self) -> str:
        """The registry name, e.g. ``bcop-large-mnist``."""
        base = f"{self.conv}-{self.arch}-{self.dataset}"
        if self.activation != default_activation(self.conv):
            base += f"-{self.activation}"
        return base

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return DATASET_SHAPES[self.dataset]

    def to_dict(self) -> dict[str, Any]:
        """The JSON form ``config.json`` holds (schema :data:`CONFIG_SCHEMA_VERSION`), with the
        registry name as ``model_name``."""
        return {"schema_version": CONFIG_SCHEMA_VERSION, **dataclasses.asdict(self), "model_name": self.name}

    @classmethod
    def from_dict(cls, data: Any) -> ModelConfig:
        """Build from the JSON form of any schema version (1: flat ``ortho_method`` and
        ``bjorck_iters``; 2: an ``ortho`` object). Keys that are not config fields (Hub
        metadata such as ``library_name``) are ignored.

        Raises:
            ValueError: ``data`` is not an object, comes from a newer bcop, describes another
                kind of model, or a field is missing, of the wrong type or out of range; the
                message names the field and what it expects.
        """
        if not isinstance(data, dict):
            raise ValueError(f"a model config must be a JSON object, got {type(data).__name__}")
        version = _config_version(data)
        if data.get("kind", "classifier") != "classifier":
            raise ValueError(
                f"kind {data['kind']!r}: this config describes a {data['kind']}, not a classifier"
            )
        missing = [key for key in ("arch", "conv", "dataset") if key not in data]
        if missing:
            raise ValueError(f"missing field(s) {', '.join(missing)} (arch: {ARCHS}; dataset: {DATASETS})")
        strings = {key: data[key] for key in ("arch", "conv", "dataset", "activation") if key in data}
        for key, value in strings.items():
            if not isinstance(value, str):
                raise ValueError(f"field {key!r} must be a string, got {value!r}")
        config = cls(**strings, ortho=_ortho_from_dict(data, version))
        if data.get("model_name", config.name) != config.name:
            raise ValueError(
                f"model_name {data['model_name']!r} does not match the other fields, which describe "
                f"{config.name!r}"
            )
        return config


def _config_version(data: dict[str, Any]) -> int:
    """The schema version of a config's JSON form (1 when it has none)."""
    version = data.get("schema_version", 1)
    if type(version) is not int or version < 1:
        raise ValueError(f"field 'schema_version' must be a positive integer, got {version!r}")
    if version > CONFIG_SCHEMA_VERSION:
        raise ValueError(
            f"schema_version {version} was written by a newer bcop (this one reads up to "
            f"{CONFIG_SCHEMA_VERSION}): upgrade bcop"
        )
    return version


def _ortho_from_dict(data: dict[str, Any], version: int) -> OrthoParams:
    """The orthonormalisation settings of a config's JSON form, with errors naming the key."""
    if version == 1:
        names = {"method": "ortho_method", "bjorck_iters": "bjorck_iters"}
        values = {field: data[key] for field, key in names.items() if key in data}
    else:
        values = data.get("ortho", {})
        if not isinstance(values, dict):
            raise ValueError(f"field 'ortho' must be an object with method and bjorck_iters, got {values!r}")
        names = {"method": "ortho.method", "bjorck_iters": "ortho.bjorck_iters"}
    unknown = set(values) - set(names)
    if unknown:
        raise ValueError(f"field 'ortho' has unknown keys {sorted(unknown)}; expected method, bjorck_iters")
    method = values.get("method", POLAR.method)
    if not isinstance(method, str):
        raise ValueError(f"field {names['method']!r} must be a string (polar or bjorck), got {method!r}")
    iters = values.get("bjorck_iters", POLAR.bjorck_iters)
    if type(iters) is not int or iters < 1:
        raise ValueError(f"field {names['bjorck_iters']!r} must be an integer >= 1, got {iters!r}")
    try:
        return OrthoParams(method, iters)
    except ValueError as err:
        raise ValueError(f"field {names['method']!r}: {err}") from err


def default_activation(conv: str) -> str:
    """MaxMin for constrained networks, ReLU for unconstrained ones."""
    return "relu" if conv == "plain" else "maxmin"


def _registry() -> tuple[str, ...]:
    names = []
    for dataset, arch in itertools.product(DATASETS, ARCHS):
        for conv in FC_LAYERS if arch == "fc" else CONVS:
            for act in ACTIVATIONS:
                names.append(ModelConfig(arch, conv, dataset, act).name)
    return tuple(names)


_NAMES: tuple[str, ...] = _registry()
# The registry's pretrained flag: the names with trained weights (``checkpoints/NAME`` and the Hub
# repo of that name), in the order the app offers them, the paper's headline model first.
_PRETRAINED: tuple[str, ...] = (
    "bcop-large-mnist",
    "rko-large-mnist",
    "ossn-large-mnist",
    "svcm-large-mnist",
    "bcop-small-mnist",
    "plain-large-mnist",
    # later families (docs/successors.md), in bcop.models.SUCCESSORS' order
    "cayley-large-mnist",
    "soc-large-mnist",
    "aol-large-mnist",
    "sll-large-mnist",
    "aoc-large-mnist",
)


def list_models(pretrained: bool = False) -> list[str]:
    """The registry's names: every network :func:`bcop.create_model` builds, or with
    ``pretrained=True`` only those that also come trained (in the app's order)."""
    return list(_PRETRAINED if pretrained else _NAMES)


def parse_model_name(name: str) -> ModelConfig:
    """``"bcop-large-mnist"`` -> ``ModelConfig``; unknown names raise a ValueError listing all."""
    parts = name.split("-") if isinstance(name, str) else []
    if name not in _NAMES or len(parts) not in (3, 4):
        raise ValueError(f"unknown model name {name!r}; known names: {', '.join(_NAMES)}")
    conv, arch, dataset = parts[:3]
    activation = parts[3] if len(parts) == 4 else default_activation(conv)
    return ModelConfig(arch=arch, conv=conv, dataset=dataset, activation=activation)


def _conv(config: ModelConfig, cin: int, cout: int, k: int, size: int, stride: int = 1) -> LipschitzConv2d:
    """The convolution of ``config``'s family, ``cin`` -> ``cout`` channels on ``size`` x ``size``
    inputs (stride > 1: AOC's own strided convolution)."""
    successor = _successor_conv(config, cin, cout, k, size, stride)
    if successor is not None:
        return successor
    if config.conv == "bcop":
        return BCOPConv2d(cin, cout, k, ortho=config.ortho)
    if config.conv == "rko":
        return RKOConv2d(cin, cout, k, ortho=config.ortho)
    if config.conv == "ossn":
        return OSSNConv2d(cin, cout, k, input_size=size)
    if config.conv == "svcm":
        return SVCMConv2d(cin, cout, k, input_size=size)
    return PlainConv2d(cin, cout, k)


def _successor_conv(
    config: ModelConfig, cin: int, cout: int, k: int, size: int, stride: int
) -> LipschitzConv2d | None:
    """The convolution of a later family (None for the paper's own); docs/successors.md."""
    if config.conv == "cayley":
        return CayleyConv2d(cin, cout, k, input_size=size)
    if config.conv == "soc":
        return SOCConv2d(cin, cout, k)
    if config.conv == "aol":
        return AOLConv2d(cin, cout, k)
    if config.conv == "sll":
        return SLLConv2d(cin, cout, k)
    if config.conv == "aoc":
        return AOCConv2d(cin, cout, k, stride=stride, ortho=config.ortho)
    return None


def dense_layer(config: ModelConfig, fin: int, fout: int) -> LipschitzLinear:
    """The dense layer a network of ``config`` uses, ``fin`` -> ``fout`` features: Björck-orthogonal
    (with the config's orthonormalisation settings), or unconstrained for plain networks."""
    if config.conv == "plain":
        return LipschitzLinear(fin, fout)
    return OrthogonalLinear(fin, fout, ortho=config.ortho)


def _activation(config: ModelConfig) -> nn.Module:
    return MaxMin() if config.activation == "maxmin" else nn.ReLU()


class LipschitzNet(nn.Sequential):
    """A feed-forward network whose every layer can bound its own Lipschitz constant.

    Layers are named ``conv1``, ``act1``, ``down2``, ..., ``dense1``, ..., ``logits`` so that
    per-layer measurements read naturally.

    Attributes:
        config: the :class:`ModelConfig` it was built from.
        input_shape: (C, H, W) of one input, values in [0, 1].
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(OrderedDict(self._layers(config)))
        self.config = config
        self.input_shape = config.input_shape

    @staticmethod
    def _layers(config: ModelConfig) -> Iterator[tuple[str, nn.Module]]:
        channels, size, _ = config.input_shape
        for i, (cout, k, stride) in enumerate(CONV_SPECS.get(config.arch, []), start=1):
            if stride == 2 and config.conv in NATIVE_STRIDE:
                yield f"conv{i}", _conv(config, channels, cout, k, size, stride)
                size //= stride
            else:
                if stride == 2:
                    yield f"down{i}", InvertibleDownsample(2)
                    channels, size, k = channels * 4, size // 2, k // 2
                yield f"conv{i}", _conv(config, channels, cout, k, size)
            if config.conv not in OWN_ACTIVATION:
                yield f"act{i}", _activation(config)
            channels = cout
        yield "flatten", nn.Flatten()
        features = channels * size * size
        for j, width in enumerate(DENSE_SPECS[config.arch], start=1):
            yield f"dense{j}", dense_layer(config, features, width)
            yield f"dense_act{j}", _activation(config)
            features = width
        yield "logits", dense_layer(config, features, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, C, H, W) in [0, 1] -> logits (N, 10)."""
        if x.dim() != 4 or tuple(x.shape[1:]) != tuple(self.input_shape):
            raise ValueError(
                f"{self.config.name} expects input of shape (N, {', '.join(map(str, self.input_shape))}), "
                f"got {tuple(x.shape)}"
            )
        return super().forward(x)

    @torch.no_grad()
    def project_(self, rounds: int = 1) -> None:
        """Apply every layer's projection step (SVCM clipping); a no-op for other networks."""
        for module in self.modules():
            if isinstance(module, SVCMConv2d):
                module.project_(rounds)


def _build_model(config: ModelConfig | dict[str, Any]) -> LipschitzNet:
    """Deprecated ``build_model``: ``LipschitzNet(config)``, also from the dict form."""
    if isinstance(config, dict):
        config = ModelConfig.from_dict(config)
    return LipschitzNet(config)


def _fresh_model(name: str, pretrained: bool = False, **overrides: Any) -> LipschitzNet:
    """Deprecated ``bcop.models.create_model``: a fresh network by name (trained ones come from
    :func:`bcop.create_model`, which sits above the Hub code this module may not import)."""
    if pretrained:
        raise ValueError(
            f"bcop.models.create_model no longer loads trained weights: use "
            f"bcop.create_model({name!r}, pretrained=True)"
        )
    return LipschitzNet(dataclasses.replace(parse_model_name(name), **overrides))


__getattr__ = deprecated_names(
    __name__,
    {
        "MODEL_NAMES": ("bcop.list_models()", _NAMES),
        "build_model": ("bcop.models.LipschitzNet(ModelConfig.from_dict(config))", _build_model),
        "create_model": ("bcop.create_model", _fresh_model),
    },
)

"""bcop: provably Lipschitz convolutional networks with Block Convolution Orthogonal
Parameterization (Li, Haque, Anil, Lucas, Grosse and Jacobsen, NeurIPS 2019).

Nothing is read from disk or the network at import time. :func:`create_model` is the way to a
network, fresh or trained; :func:`list_models` names them.
"""

from bcop import certify as _certify
from bcop import models as _models
from bcop.certify import certified_accuracy_percent, certified_radius, certify, lipschitz_bound
from bcop.deprecation import deprecated_names
from bcop.export import export
from bcop.factory import create_model, list_models
from bcop.models import ModelConfig, OrthoParams

__version__ = "0.2.0"

__all__ = [
    "ModelConfig",
    "OrthoParams",
    "certified_accuracy_percent",
    "certified_radius",
    "certify",
    "create_model",
    "export",
    "list_models",
    "lipschitz_bound",
]

__getattr__ = deprecated_names(
    __name__,
    {
        "MODEL_NAMES": ("bcop.list_models()", tuple(list_models())),
        "build_model": ("bcop.models.LipschitzNet(ModelConfig.from_dict(config))", _models._build_model),
        "certified_accuracy": ("bcop.certified_accuracy_percent", _certify._certified_fractions),
    },
)

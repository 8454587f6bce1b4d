"""bcop: provably Lipschitz convolutional networks with Block Convolution Orthogonal
Parameterization (Li, Haque, Anil, Lucas, Grosse and Jacobsen, NeurIPS 2019).

Nothing is read from disk or the network at import time.
"""

from bcop.certify import certified_accuracy, certified_radius, certify, lipschitz_bound
from bcop.export import export
from bcop.models import MODEL_NAMES, ModelConfig, OrthoParams, build_model, create_model

__version__ = "0.2.0"

__all__ = [
    "MODEL_NAMES",
    "ModelConfig",
    "OrthoParams",
    "build_model",
    "certified_accuracy",
    "certified_radius",
    "certify",
    "create_model",
    "export",
    "lipschitz_bound",
]

"""Base class for weight parametrizations whose result is reused while the weights do not change.

Layers register these with :func:`torch.nn.utils.parametrize.register_parametrization`, so a
constrained layer is still an ordinary ``nn.Conv2d`` / ``nn.Linear`` to every tool that inspects
a model, and ``parametrize.cached()`` works as usual.

On top of that, when no gradient with respect to the weights can be needed (``torch.no_grad()``,
or parameters with ``requires_grad=False`` as in an attack), the constrained weight is cached
across calls and recomputed only when a parameter or buffer changes: the cache key holds each
one's storage pointer and in-place version counter, which every optimiser step,
``load_state_dict`` and ``.to()`` bump. Inference and certification therefore build each
orthogonal kernel once, and training is untouched.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator

import torch
import torch.autograd.forward_ad as fwAD
from torch import nn

from bcop.orthogonal import ORTHO_METHODS, orthonormalize


@dataclasses.dataclass(frozen=True)
class OrthoParams:
    """How every orthonormalised weight of a layer or network is computed.

    Attributes:
        method: ``"polar"`` (the exact orthogonal polar factor, the limit of Björck's iteration)
            or ``"bjorck"`` (``bjorck_iters`` first-order Björck iterations, as the paper).
        bjorck_iters: Björck iterations (>= 1); ignored by ``"polar"``.
    """

    method: str = "polar"
    bjorck_iters: int = 20

    def __post_init__(self) -> None:
        if self.method not in ORTHO_METHODS:
            raise ValueError(f"unknown orthonormalisation method {self.method!r}; known: {ORTHO_METHODS}")
        if type(self.bjorck_iters) is not int or self.bjorck_iters < 1:  # bool is an int subclass: refused
            raise ValueError(f"bjorck_iters must be an integer >= 1, got {self.bjorck_iters!r}")

    def orthonormalize(self, raw: torch.Tensor, precise: bool) -> torch.Tensor:
        """(..., m, n) raw matrices -> matrices with orthonormal rows or columns (see
        :func:`bcop.orthogonal.orthonormalize`; ``precise``: polar's float64 Gram matrix)."""
        return orthonormalize(raw, self.method, self.bjorck_iters, precise=precise)


POLAR = OrthoParams("polar")
"""The default: exact orthonormalisation at every step."""
PAPER_BJORCK = OrthoParams("bjorck", 20)
"""The paper's own setting (LConvNet): 20 Björck iterations."""


def scaled_orthogonal_(tensor: torch.Tensor, fan_in: int) -> torch.Tensor:
    """Fill ``tensor`` (m, n) or (b, m, n) in place with orthonormal matrices times ``1/sqrt(fan_in)``.

    The paper's initial raw tensor for every orthonormalised weight (LConvNet: BCOP's matrices,
    RKO's reshaped kernel, Björck dense layers). Orthonormalisation ignores the scale, so the
    network's initial function is the same at any scale; its training is not: Adam moves every
    raw entry by about the learning rate per step whatever its size, so a raw matrix of norm
    ``1/sqrt(n)`` turns ``sqrt(n)`` times faster than one of norm 1. The paper's scale is
    therefore part of its recipe, and its learning rate assumes it.

    Returns:
        ``tensor``.
    """
    with torch.no_grad():
        for matrix in tensor.view(-1, *tensor.shape[-2:]):
            nn.init.orthogonal_(matrix, gain=fan_in**-0.5)
    return tensor


def _untraced(t: torch.Tensor) -> bool:
    """Whether no torch.func transform or forward-mode AD is tracing ``t``. A traced tensor (a
    functorch wrapper, or one carrying a tangent) must flow through ``compute`` to keep its
    batch dimension or tangent, and has no storage to key a cache on."""
    return not torch._C._functorch.is_functorch_wrapped_tensor(t) and fwAD.unpack_dual(t).tangent is None


def frozen_key(*tensors: torch.Tensor) -> tuple | None:
    """A key that changes whenever one of ``tensors`` does, when no gradient with respect to
    them can be needed (``torch.no_grad()``, or none requires grad) and no transform traces
    them; else None: a value computed from them must then be recomputed, not cached.

    The key holds each tensor's storage pointer, in-place version counter, dtype and device
    (as :class:`CachedParametrization`'s), which every optimiser step, ``load_state_dict`` and
    ``.to()`` change.
    """
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return None
    if not all(map(_untraced, tensors)):
        return None
    return tuple((t.data_ptr(), t._version, t.dtype, t.device) for t in tensors)


class CachedParametrization(nn.Module):
    """A parametrization ``weight = self.compute(*originals)`` with a cross-call cache.

    Like batch normalisation, a parametrization may compute differently in train and eval mode
    (which ``model.train()`` / ``model.eval()`` set on it as on any submodule): the
    orthonormalising ones form polar's Gram matrix in float64 in eval mode only, so that a
    model in eval mode, the one that is certified, is orthonormal to float32 rounding, while
    training steps keep the cheaper float32 Gram matrix (see :func:`bcop.orthogonal.polar`).
    """

    def __init__(self) -> None:
        super().__init__()
        self._cache_key: tuple | None = None
        self._cache_value: torch.Tensor | None = None

    def compute(self, *originals: torch.Tensor) -> torch.Tensor:
        """Map the unconstrained tensors to the constrained weight."""
        raise NotImplementedError

    def _key(self, originals: tuple[torch.Tensor, ...]) -> tuple | None:
        """What the cached weight must have been built from, or None when it must be computed
        afresh: a weight gradient is needed, or a transform traces a tensor."""
        # buffers too (OSSN's power-iteration vectors): load_state_dict and training change them.
        # A parametrization has no submodules, so its own _buffers are all of them.
        tensors = originals
        if self._buffers:
            tensors = (*originals, *(b for b in self._buffers.values() if b is not None))
        if torch.is_grad_enabled() and any(o.requires_grad for o in originals):
            return None
        if not all(map(_untraced, tensors)):
            return None
        return (self.training, *((t.data_ptr(), t._version, t.dtype, t.device) for t in tensors))

    def cached(self, *originals: torch.Tensor) -> torch.Tensor | None:
        """The cached weight if it is current for ``originals`` and may be reused, else None."""
        key = self._key(originals)
        return self._cache_value if key is not None and key == self._cache_key else None

    def forward(self, *originals: torch.Tensor) -> torch.Tensor:
        key = self._key(originals)
        if key is None:
            # contiguous: conv2d and linear run measurably faster on a dense kernel
            return self.compute(*originals).contiguous()
        if key != self._cache_key or self._cache_value is None:
            # inference_mode(False): a kernel built under inference mode must stay usable by a
            # later attack that differentiates with respect to the input.
            with torch.inference_mode(False), torch.no_grad():
                self._cache_value = self.compute(*originals).contiguous()
            self._cache_key = key
        return self._cache_value


def current_weight(module: nn.Module) -> torch.Tensor:
    """``module.weight``, straight from its :class:`CachedParametrization`'s cache when that holds
    the current weight: the same tensor, without torch.nn.utils.parametrize's machinery (a dozen
    microseconds a call, a tenth of a small network's inference at batch 1). Anything else --
    an unconstrained weight, a stale cache, a weight gradient, a traced call -- is
    ``module.weight`` as usual."""
    parametrizations = module._modules.get("parametrizations")
    if parametrizations is None or "weight" not in parametrizations:
        return module.weight
    chain = parametrizations["weight"]
    # the chain's own parameters are its originals: "original", or "original0", "original1", ...
    originals = tuple(chain._parameters.values())
    if len(chain) == 1 and isinstance(chain[0], CachedParametrization) and len(originals) == chain.ntensors:
        value = chain[0].cached(*originals)
        if value is not None:
            return value
    return module.weight


@contextlib.contextmanager
def frozen_weights(model: nn.Module) -> Iterator[nn.Module]:
    """Temporarily set ``requires_grad=False`` on every parameter of ``model``.

    Inside, gradients can still be taken with respect to the *input* (attacks, gradient-norm
    measurements), and the constrained weights come from the cache instead of being rebuilt
    at every call. The previous flags are restored on exit.
    """
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        yield model
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)

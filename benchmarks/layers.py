"""Speed of BCOP layers and networks: ours against a straightforward reference, and where time goes.

Four measurements, all on CPU in float32, timed as the median of repeated calls after warm-up:

1. One BCOP layer, forward + backward (batch 32, 8 x 8 input, in = out channels): our
   ``BCOPConv2d`` (polar; Björck with 20 iterations) against a reference written here the way the
   paper's code does it (Björck on the larger Gram side with Frobenius scaling, projectors formed,
   the k x k kernel composed entry by entry in Python loops, then a circularly padded conv2d),
   with the orthogonality error of every kernel: max |sigma - 1| over all singular values of the
   circular convolution on 8 x 8 inputs.
2. One Large-MNIST training step (batch 128, Adam, multi-margin hinge loss with margin 2.12): our
   ``bcop-large-mnist`` (polar; Björck) against the same network with every BCOP and dense layer
   swapped for the reference modules of (1) (dense Björck on the larger Gram side, e.g. 3136 x 3136
   for the 512 x 3136 weight), and against the LConvNet variant of the dense layer (its
   ``bjorck_orthonormalize`` transposes to the smaller Gram side and scales by power iteration).
3. Where one training step of ``bcop-large-mnist`` spends its time: weight construction of each
   layer (forward and backward), the network's convolutions / products / activations with fixed
   weights (measured on the plain network of the same shapes), the Adam update, and the top
   operators of a ``torch.profiler`` trace.
4. Inference with cached kernels: ``bcop-large-mnist`` in eval mode under ``torch.no_grad()``
   (kernels built once, then reused) against ``plain-large-mnist-maxmin`` at batch 128 and 1.
5. The later families (Cayley, SOC, AOL, SLL, AOC): forward + backward of each layer at 64
   channels k = 3 and 32 channels k = 5 (batch 8, 32 x 32), beside orthogonium 0.0.4's layer
   where it has the family and is importable, and one Large-MNIST training step of each against
   ``plain-large-mnist-maxmin`` and ``bcop-large-mnist``, with the epoch that step implies.

The unconstrained matrices are orthogonally initialised and then perturbed (Gaussian noise of
spectral norm about 0.1 to 0.2), as after some training, so that the orthonormalisation has work
to do and the orthogonality errors mean something.

Usage::

    python benchmarks/layers.py [--quick] [--out results/layers] [--threads N] [--successors-only]

writes ``results/layers.json`` and ``results/layers.md`` and prints the tables. ``--quick``
uses few repetitions (development on busy cores, about 2 minutes); the full run takes a few
minutes on 2 idle cores. Exits with status 1 if an orthogonality error exceeds 1e-4.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import os
import platform
import statistics
import sys
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bcop import create_model  # noqa: E402
from bcop.layers import (  # noqa: E402
    AOCConv2d,
    AOLConv2d,
    BCOPConv2d,
    BjorckLinear,
    CayleyConv2d,
    OrthoParams,
    SLLConv2d,
    SOCConv2d,
)
from bcop.models import SUCCESSORS  # noqa: E402
from bcop.orthogonal import conv_singular_values  # noqa: E402
from benchmarks.common import write_results  # noqa: E402

ORTHO_TOL = 1e-4
HINGE_MARGIN = 2.12
BJORCK_ITERS = 20
LAYER_CONFIGS = [(16, 3), (32, 3), (64, 3), (128, 3), (256, 3), (32, 5), (64, 5)]
LAYER_BATCH, LAYER_SIZE = 32, 8
TRAIN_BATCH = 128
PERTURBATION = 0.1
TARGETS = {
    "layer_speedup_64_k3": 2.0,
    "layer_speedup_32_k5": 2.0,
    "train_speedup": 3.0,
    "inference_ratio": 1.2,
}


@dataclass(frozen=True)
class Reps:
    """(warm-up calls, timed repetitions) for each kind of measurement.

    ``train_slow`` is for the networks built on Björck (ours with Björck, the references), whose
    training steps take seconds.
    """

    layer: tuple[int, int]
    train: tuple[int, int]
    train_slow: tuple[int, int]
    parts: tuple[int, int]
    infer_128: tuple[int, int]
    infer_1: tuple[int, int]


FULL = Reps(
    layer=(3, 15), train=(3, 10), train_slow=(1, 3), parts=(3, 10), infer_128=(3, 30), infer_1=(20, 300)
)
QUICK = Reps(layer=(1, 3), train=(1, 3), train_slow=(0, 1), parts=(1, 3), infer_128=(1, 5), infer_1=(5, 30))


# ----------------------------------------------------------------------------------------------
# The straightforward reference, written the way the paper's code (LConvNet) builds BCOP kernels.
# ----------------------------------------------------------------------------------------------


def reference_bjorck(w: torch.Tensor, iters: int = BJORCK_ITERS, gram: str = "larger") -> torch.Tensor:
    """First-order Björck on one matrix: ``W <- 3/2 W - 1/2 W W^T W``.

    ``gram="larger"``: Frobenius scaling, and the product grouped so that the Gram matrix is
    formed on the larger side (``(W W^T) W`` for a tall W, ``W (W^T W)`` for a wide one).
    ``gram="smaller"``: LConvNet's ``bjorck_orthonormalize`` -- transpose to tall, scale by a
    10-step power iteration (no gradient), Gram on the smaller side.

    Args:
        w: (m, n) matrix.

    Returns:
        (m, n) matrix with orthonormal columns (m >= n) or rows.
    """
    if gram == "smaller":
        if w.shape[0] < w.shape[1]:
            return reference_bjorck(w.T, iters, gram).T
        with torch.no_grad():
            gen = torch.Generator().manual_seed(0)
            u = torch.randn(w.shape[0], 1, generator=gen, dtype=w.dtype)
            for _ in range(10):
                v = w.T @ u
                v = v / v.norm()
                u = w @ v
                u = u / u.norm()
            sigma = (u.T @ w @ v).squeeze()
        w = w / sigma
        for _ in range(iters):
            w = 1.5 * w - 0.5 * w @ (w.T @ w)
        return w
    w = w / torch.linalg.matrix_norm(w)
    for _ in range(iters):
        if w.shape[0] >= w.shape[1]:
            w = 1.5 * w - 0.5 * (w @ w.T) @ w
        else:
            w = 1.5 * w - 0.5 * w @ (w.T @ w)
    return w


def block_orth(q: torch.Tensor, p: torch.Tensor) -> dict[tuple[int, int], torch.Tensor]:
    """The 2 x 2 kernel ``[[Q P, Q (I - P)], [(I - Q) P, (I - Q)(I - P)]]`` as a dictionary."""
    eye = torch.eye(q.shape[0], dtype=q.dtype)
    block = {}
    for a, qa in enumerate((q, eye - q)):
        for b, pb in enumerate((p, eye - p)):
            block[a, b] = qa @ pb
    return block


def matrix_conv(
    second: dict[tuple[int, int], torch.Tensor], first: dict[tuple[int, int], torch.Tensor]
) -> dict[tuple[int, int], torch.Tensor]:
    """Kernel of ``second o first``: ``C[i, j] = sum second[a, b] first[i - a, j - b]``, entry by entry."""
    k = max(i for i, _ in second) + 1
    m = max(i for i, _ in first) + 1
    c = first[0, 0].shape[0]
    result = {}
    for i in range(k + m - 1):
        for j in range(k + m - 1):
            total = first[0, 0].new_zeros(c, c)
            for a in range(k):
                for b in range(k):
                    if 0 <= i - a < m and 0 <= j - b < m:
                        total = total + second[a, b] @ first[i - a, j - b]
            result[i, j] = total
    return result


class ReferenceBCOPConv2d(nn.Module):
    """BCOP convolution computed the straightforward way, from the matrices of a ``BCOPConv2d``.

    Same unconstrained parameters and the same kernel as ``ours`` (up to rounding), so the two
    compute the same function; only the way the kernel is built differs.
    """

    def __init__(self, ours: BCOPConv2d) -> None:
        super().__init__()
        originals = ours.parametrizations.weight
        self.in_channels, self.out_channels = ours.in_channels, ours.out_channels
        self.kernel_size = ours.kernel_size[0]
        self.ortho = nn.Parameter(originals.original0.detach().clone())
        proj = getattr(originals, "original1", None)
        self.proj = None if proj is None else nn.Parameter(proj.detach().clone())
        self.bias = None if ours.bias is None else nn.Parameter(ours.bias.detach().clone())
        self.built: torch.Tensor | None = None  # the kernel of the last forward call

    def kernel(self) -> torch.Tensor:
        """(out, in, k, k) orthogonal kernel."""
        k = self.kernel_size
        kernel = {(0, 0): reference_bjorck(self.ortho)}
        if k > 1:
            projectors = []
            for matrix in self.proj:
                u = reference_bjorck(matrix)
                projectors.append(u @ u.T)
            for t in range(k - 1):
                kernel = matrix_conv(block_orth(projectors[k - 1 + t], projectors[t]), kernel)
        rows = [torch.stack([kernel[i, j] for j in range(k)], dim=-1) for i in range(k)]
        return torch.stack(rows, dim=-2)[: self.out_channels, : self.in_channels]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, in, H, W) -> (N, out, H, W), circular padding."""
        k = self.kernel_size
        before = (k - 1) // 2
        after = k - 1 - before
        x = F.pad(x, (before, after, before, after), mode="circular")
        kernel = self.kernel()
        self.built = kernel.detach()
        return F.conv2d(x, kernel, self.bias)


class ReferenceBjorckLinear(nn.Module):
    """Björck dense layer computed the straightforward way, from the matrix of a ``BjorckLinear``."""

    def __init__(self, ours: BjorckLinear, gram: str = "larger") -> None:
        super().__init__()
        self.gram = gram
        self.raw = nn.Parameter(ours.parametrizations.weight.original.detach().clone())
        self.bias = None if ours.bias is None else nn.Parameter(ours.bias.detach().clone())
        self.built: torch.Tensor | None = None  # the weight of the last forward call

    def ortho_weight(self) -> torch.Tensor:
        """(out, in) orthonormalised weight."""
        return reference_bjorck(self.raw, gram=self.gram)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, in) -> (N, out)."""
        weight = self.ortho_weight()
        self.built = weight.detach()
        return F.linear(x, weight, self.bias)


def reference_network(ours: nn.Sequential, dense_gram: str = "larger") -> nn.Sequential:
    """``ours`` with every BCOP / Björck layer replaced by its reference twin (same parameters)."""
    layers = OrderedDict()
    for name, module in ours.named_children():
        if isinstance(module, BCOPConv2d):
            layers[name] = ReferenceBCOPConv2d(module)
        elif isinstance(module, BjorckLinear):
            layers[name] = ReferenceBjorckLinear(module, dense_gram)
        else:
            layers[name] = copy.deepcopy(module)
    return nn.Sequential(layers)


# ----------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------


def timed(fn: Callable[[], object], warmup: int, reps: int) -> dict[str, float]:
    """Median and minimum wall time of ``fn()`` in milliseconds, after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return {"median_ms": statistics.median(times), "min_ms": min(times), "reps": reps}


@torch.no_grad()
def perturb_(model: nn.Module, scale: float = PERTURBATION, seed: int = 0) -> None:
    """Add Gaussian noise of spectral norm about ``scale`` to every unconstrained matrix."""
    gen = torch.Generator().manual_seed(seed)
    for name, param in model.named_parameters():
        if ".original" in name:
            noise = torch.randn(param.shape, generator=gen)
            param.add_(noise * scale / max(param.shape[-2:]) ** 0.5)


def conv_ortho_error(kernel: torch.Tensor, size: int) -> float:
    """max |sigma - 1| over the singular values of the circular convolution on size x size."""
    return float((conv_singular_values(kernel.detach().double(), size) - 1).abs().max())


def dense_ortho_error(weight: torch.Tensor) -> float:
    """max |sigma - 1| over the singular values of a dense weight."""
    return float((torch.linalg.svdvals(weight.detach().double()) - 1).abs().max())


def input_sizes(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, int]:
    """Spatial input size seen by each direct child of ``model``."""
    sizes: dict[str, int] = {}

    def record(name: str) -> Callable:
        def hook(_module: nn.Module, args: tuple) -> None:
            sizes[name] = args[0].shape[-1]

        return hook

    hooks = [child.register_forward_pre_hook(record(name)) for name, child in model.named_children()]
    with torch.no_grad():
        model(torch.zeros(1, *input_shape))
    for hook in hooks:
        hook.remove()
    return sizes


def network_ortho_error(model: nn.Module, sizes: dict[str, int]) -> float:
    """Largest orthogonality error over the constrained layers of ``model`` (ours or reference).

    Reference layers are checked on the weights of their last forward call (each one costs a
    full Björck run); ``sizes`` gives each layer's spatial input size.
    """
    worst = 0.0
    with torch.no_grad():
        for name, module in model.named_children():
            if isinstance(module, BCOPConv2d):
                worst = max(worst, conv_ortho_error(module.weight, sizes[name]))
            elif isinstance(module, ReferenceBCOPConv2d):
                worst = max(worst, conv_ortho_error(module.built, sizes[name]))
            elif isinstance(module, BjorckLinear):
                worst = max(worst, dense_ortho_error(module.weight))
            elif isinstance(module, ReferenceBjorckLinear):
                worst = max(worst, dense_ortho_error(module.built))
    return worst


def layer_step_fn(layer: nn.Module, x: torch.Tensor) -> Callable[[], None]:
    """Forward + backward of one layer, with the gradient with respect to its input as in a network."""

    def step() -> None:
        layer.zero_grad(set_to_none=True)
        layer(x.detach().requires_grad_(True)).sum().backward()

    return step


def weight_fns(module: nn.Module) -> tuple[Callable[[], None], Callable[[], None]]:
    """Build a parametrized layer's weight; build it and backpropagate a fixed random gradient."""
    grad = torch.randn_like(module.weight)

    def build() -> None:
        module.weight  # noqa: B018 -- the parametrization runs on attribute access

    def build_and_backward() -> None:
        module.weight.backward(grad)

    return build, build_and_backward


def train_step_fn(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
    """One Adam step on the multi-margin hinge loss."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        F.multi_margin_loss(model(x), y, margin=HINGE_MARGIN).backward()
        optimizer.step()

    return step


# ----------------------------------------------------------------------------------------------
# The four benchmarks
# ----------------------------------------------------------------------------------------------


def bench_layers(reps: Reps) -> list[dict]:
    """(1) forward + backward of one BCOP layer: polar, Björck, straightforward reference."""
    rows = []
    for channels, k in LAYER_CONFIGS:
        torch.manual_seed(0)
        polar_layer = BCOPConv2d(channels, channels, k)
        perturb_(polar_layer)
        bjorck_layer = BCOPConv2d(channels, channels, k, ortho=OrthoParams("bjorck", BJORCK_ITERS))
        bjorck_layer.load_state_dict(polar_layer.state_dict())
        reference = ReferenceBCOPConv2d(polar_layer)
        x = torch.randn(LAYER_BATCH, channels, LAYER_SIZE, LAYER_SIZE)
        row: dict = {"channels": channels, "kernel_size": k}
        with torch.no_grad():
            polar_kernel = polar_layer.weight.clone()
            kernels = {
                "polar": polar_kernel,
                "bjorck": bjorck_layer.weight.clone(),
                "reference": reference.kernel(),
            }
            row["max_kernel_diff_reference_vs_polar"] = float(
                (kernels["reference"] - polar_kernel).abs().max()
            )
        for method, layer in (("polar", polar_layer), ("bjorck", bjorck_layer), ("reference", reference)):
            row[method] = timed(layer_step_fn(layer, x), *reps.layer) | {
                "ortho_error": conv_ortho_error(kernels[method], LAYER_SIZE)
            }
        row["speedup_polar_vs_reference"] = row["reference"]["median_ms"] / row["polar"]["median_ms"]
        row["speedup_bjorck_vs_reference"] = row["reference"]["median_ms"] / row["bjorck"]["median_ms"]
        rows.append(row)
        print(
            f"  layer c={channels} k={k}: polar {row['polar']['median_ms']:.2f} ms, "
            f"reference {row['reference']['median_ms']:.2f} ms",
            flush=True,
        )
    return rows


def bench_training(reps: Reps) -> dict:
    """(2) one Large-MNIST training step: ours (polar, Björck) and the reference networks."""
    torch.manual_seed(0)
    ours = create_model("bcop-large-mnist")
    perturb_(ours)
    ours_bjorck = create_model("bcop-large-mnist", ortho=OrthoParams("bjorck", BJORCK_ITERS))
    ours_bjorck.load_state_dict(ours.state_dict())
    networks = {
        "polar": ours,
        "bjorck": ours_bjorck,
        "reference": reference_network(ours, "larger"),
        "reference_lconvnet_dense": reference_network(ours, "smaller"),
    }
    x = torch.rand(TRAIN_BATCH, *ours.input_shape)
    y = torch.randint(0, 10, (TRAIN_BATCH,))
    results: dict = {}
    with torch.no_grad():
        logits = ours(x)
        sizes = input_sizes(ours, ours.input_shape)
        for name, net in networks.items():
            diff = float((net(x) - logits).abs().max())
            results[name] = {"ortho_error": network_ortho_error(net, sizes), "max_logit_diff_vs_polar": diff}
    for name, net in networks.items():
        warmup, count = reps.train if name == "polar" else reps.train_slow
        timing = timed(train_step_fn(copy.deepcopy(net), x, y), warmup, count)
        results[name] |= {
            "s_per_step": timing["median_ms"] / 1e3,
            "min_s": timing["min_ms"] / 1e3,
            "reps": count,
        }
        print(f"  training step {name}: {results[name]['s_per_step']:.3f} s", flush=True)
    for name in ("polar", "bjorck", "reference_lconvnet_dense"):
        results[name]["speedup_vs_reference"] = (
            results["reference"]["s_per_step"] / results[name]["s_per_step"]
        )
    return results


def bench_profile(reps: Reps, top: int = 12) -> dict:
    """(3) where one training step of bcop-large-mnist spends its time."""
    torch.manual_seed(0)
    model = create_model("bcop-large-mnist")
    perturb_(model)
    x = torch.rand(TRAIN_BATCH, *model.input_shape)
    y = torch.randint(0, 10, (TRAIN_BATCH,))
    step = train_step_fn(model, x, y)
    total = timed(step, *reps.parts)["median_ms"]

    parts = []
    for name, module in model.named_children():
        if not hasattr(module, "parametrizations"):
            continue
        build, build_and_backward = weight_fns(module)
        fwd = timed(build, *reps.parts)["median_ms"]
        both = timed(build_and_backward, *reps.parts)["median_ms"]
        model.zero_grad(set_to_none=True)
        kind = "BCOP kernel" if isinstance(module, BCOPConv2d) else "Björck/polar dense weight"
        parts.append({"part": f"{name}: {kind} (forward)", "ms": fwd})
        parts.append({"part": f"{name}: {kind} (backward)", "ms": max(both - fwd, 0.0)})

    torch.manual_seed(0)
    plain = create_model("plain-large-mnist-maxmin")

    def plain_pass() -> None:
        plain.zero_grad(set_to_none=True)
        F.multi_margin_loss(plain(x), y, margin=HINGE_MARGIN).backward()

    parts.append(
        {
            "part": "convolutions, dense products, activations, loss (forward + backward, fixed weights)",
            "ms": timed(plain_pass, *reps.parts)["median_ms"],
        }
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    F.multi_margin_loss(model(x), y, margin=HINGE_MARGIN).backward()
    parts.append({"part": "Adam update", "ms": timed(optimizer.step, *reps.parts)["median_ms"]})
    parts.sort(key=lambda p: p["ms"], reverse=True)
    for part in parts:
        part["share"] = part["ms"] / total

    step()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        step()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    profiled = sum(e.self_cpu_time_total for e in events) / 1e3
    ops = [
        {
            "op": e.key,
            "self_ms": e.self_cpu_time_total / 1e3,
            "calls": e.count,
            "share": e.self_cpu_time_total / 1e3 / profiled,
        }
        for e in events[:top]
    ]
    return {
        "step_ms": total,
        "parts": parts,
        "parts_sum_ms": sum(p["ms"] for p in parts),
        "profiler_total_self_ms": profiled,
        "top_ops": ops,
    }


def bench_inference(reps: Reps) -> dict:
    """(4) eval-mode inference with cached kernels against the plain network of the same shapes."""
    torch.manual_seed(0)
    ours = create_model("bcop-large-mnist").eval()
    perturb_(ours)
    plain = create_model("plain-large-mnist-maxmin").eval()
    results: dict = {}
    for batch, (warmup, count) in ((128, reps.infer_128), (1, reps.infer_1)):
        x = torch.rand(batch, *ours.input_shape)
        row: dict = {}
        with torch.no_grad():
            if batch == 128:
                start = time.perf_counter()
                ours(x)
                row["first_call_ms"] = (time.perf_counter() - start) * 1e3
            # interleaved rounds, best median of each: background load hits both sides alike
            rounds = [
                (
                    timed(lambda x=x: ours(x), warmup, count)["median_ms"],
                    timed(lambda x=x: plain(x), warmup, count)["median_ms"],
                )
                for _ in range(3)
            ]
            row["bcop_ms"] = min(r[0] for r in rounds)
            row["plain_ms"] = min(r[1] for r in rounds)
            with parametrize.cached():
                row["bcop_parametrize_cached_ms"] = timed(lambda x=x: ours(x), warmup, count)["median_ms"]
        row["ratio"] = row["bcop_ms"] / row["plain_ms"]
        row["ratio_parametrize_cached"] = row["bcop_parametrize_cached_ms"] / row["plain_ms"]
        results[f"batch_{batch}"] = row
    return results


# ----------------------------------------------------------------------------------------------
# 5. The later families (Cayley, SOC, AOL, SLL, AOC) beside each other and beside orthogonium
# ----------------------------------------------------------------------------------------------

SUCCESSOR_LAYER_CONFIGS = [(64, 3), (32, 5)]
SUCCESSOR_BATCH, SUCCESSOR_SIZE = 8, 32  # 32 x 32: the size orthogonium's layers are written for
STEPS_PER_EPOCH = -(-60_000 // TRAIN_BATCH)  # train+val (the final runs' split) at batch 128


def _ours_successor(family: str, channels: int, k: int) -> nn.Module:
    """Our layer of ``family``, ``channels`` -> ``channels``, for 32 x 32 inputs."""
    return {
        "cayley": lambda: CayleyConv2d(channels, channels, k, input_size=SUCCESSOR_SIZE),
        "soc": lambda: SOCConv2d(channels, channels, k),
        "aol": lambda: AOLConv2d(channels, channels, k),
        "sll": lambda: SLLConv2d(channels, channels, k),
        "aoc": lambda: AOCConv2d(channels, channels, k),
    }[family]()


def _orthogonium_successor(family: str, channels: int, k: int) -> tuple[nn.Module | None, str]:
    """orthogonium 0.0.4's layer of ``family`` (or None) and what it is, or why there is none."""
    try:
        from orthogonium.layers.conv.adaptiveSOC import AdaptiveSOCConv2d
        from orthogonium.layers.conv.AOC import AdaptiveOrthoConv2d
        from orthogonium.layers.conv.AOL import AOLConv2D
        from orthogonium.layers.conv.SLL import SDPBasedLipschitzResBlock
    except ImportError as err:
        return None, f"orthogonium not importable ({err}); pip install --no-deps orthogonium==0.0.4"
    if family == "cayley":
        return None, "orthogonium has Cayley only in legacy/, written for CUDA"
    if family == "soc":
        layer = AdaptiveSOCConv2d(channels, channels, k, padding_mode="circular")
        out = tuple(layer(torch.zeros(1, channels, SUCCESSOR_SIZE, SUCCESSOR_SIZE)).shape[-2:])
        return layer, f"AdaptiveSOCConv2d (a modified SOC, explicit kernel; output {out[0]}x{out[1]})"
    if family == "aol":
        return AOLConv2D(channels, channels, k, padding="same", padding_mode="circular"), "AOLConv2D"
    if family == "sll":
        return SDPBasedLipschitzResBlock(channels, 1.0, kernel_size=k), "SDPBasedLipschitzResBlock"
    return AdaptiveOrthoConv2d(channels, channels, k, padding_mode="circular"), "AdaptiveOrthoConv2d"


def bench_successor_layers(reps: Reps) -> list[dict]:
    """Forward + backward of each family's layer (ours; orthogonium's where it has one)."""
    rows = []
    for channels, k in SUCCESSOR_LAYER_CONFIGS:
        x = torch.randn(SUCCESSOR_BATCH, channels, SUCCESSOR_SIZE, SUCCESSOR_SIZE)
        for family in SUCCESSORS:
            torch.manual_seed(0)
            row = {"family": family, "channels": channels, "kernel_size": k}
            row["ours"] = timed(layer_step_fn(_ours_successor(family, channels, k).train(), x), *reps.layer)
            reference, what = _orthogonium_successor(family, channels, k)
            row["orthogonium_layer"] = what
            if reference is not None:
                row["orthogonium"] = timed(layer_step_fn(reference.train(), x), *reps.layer)
            rows.append(row)
    return rows


def bench_successor_training(reps: Reps) -> dict:
    """One Large-MNIST training step of each family against ``plain-large-mnist-maxmin`` (and
    ``bcop-large-mnist``), in one run; with the epoch it implies at batch 128 on train+val, and
    the eval-mode forward pass (SOC's 12 terms) that validation and certification run."""
    x = torch.rand(TRAIN_BATCH, 1, 28, 28)
    y = torch.randint(0, 10, (TRAIN_BATCH,))
    names = ["plain-large-mnist-maxmin", "bcop-large-mnist"] + [f"{f}-large-mnist" for f in SUCCESSORS]
    results = {}
    for name in names:
        torch.manual_seed(0)
        model = create_model(name)
        step = timed(train_step_fn(model.train(), x, y), *reps.train)
        results[name] = {**step, "epoch_min": step["median_ms"] * STEPS_PER_EPOCH / 6e4}
        model.eval()
        with torch.no_grad():
            results[name]["eval_ms"] = timed(lambda m=model: m(x), *reps.train)["median_ms"]
    plain = results["plain-large-mnist-maxmin"]["median_ms"]
    for row in results.values():
        row["vs_plain"] = row["median_ms"] / plain
    return {"layers": bench_successor_layers(reps), "training": results}


def _markdown_successors(results: dict) -> list[str]:
    lines = [
        "",
        f"## 5. The later families: forward + backward (batch {SUCCESSOR_BATCH}, "
        f"{SUCCESSOR_SIZE}x{SUCCESSOR_SIZE}, in = out channels), and one Large-MNIST training step",
        "",
        "| family | channels | k | ours (ms) | orthogonium 0.0.4 (ms) | orthogonium's layer |",
        "|---|---|---|---|---|---|",
    ]
    for r in results["layers"]:
        theirs = f"{r['orthogonium']['median_ms']:.1f}" if "orthogonium" in r else "-"
        lines.append(
            f"| {r['family']} | {r['channels']} | {r['kernel_size']} | {r['ours']['median_ms']:.1f} "
            f"| {theirs} | {r['orthogonium_layer']} |"
        )
    lines += [
        "",
        f"| model (batch {TRAIN_BATCH}, Adam, hinge) | step (ms) | x plain "
        f"| epoch ({STEPS_PER_EPOCH} steps, min) | eval forward, batch {TRAIN_BATCH} (ms) |",
        "|---|---|---|---|---|",
    ]
    for name, r in results["training"].items():
        lines.append(
            f"| {name} | {r['median_ms']:.0f} | {r['vs_plain']:.1f} | {r['epoch_min']:.1f} "
            f"| {r['eval_ms']:.0f} |"
        )
    return lines


# ----------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------


def environment(quick: bool) -> dict:
    cpu = "unknown"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "quick": quick,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "load_average_at_start": list(os.getloadavg()),
    }


def targets(results: dict) -> dict:
    layer = {(r["channels"], r["kernel_size"]): r for r in results["layers"]}
    train = results["training"]
    infer = results["inference"]
    achieved = {
        "layer_speedup_64_k3": layer[64, 3]["speedup_polar_vs_reference"],
        "layer_speedup_32_k5": layer[32, 5]["speedup_polar_vs_reference"],
        "train_speedup": train["polar"]["speedup_vs_reference"],
        "inference_ratio": max(infer["batch_128"]["ratio"], infer["batch_1"]["ratio"]),
    }
    return {
        name: {
            "target": goal,
            "achieved": achieved[name],
            "met": achieved[name] <= goal if name == "inference_ratio" else achieved[name] >= goal,
        }
        for name, goal in TARGETS.items()
    }


TRAINING_LABELS = {
    "polar": "ours, polar",
    "bjorck": "ours, Björck 20",
    "reference": "reference (dense Björck on larger Gram)",
    "reference_lconvnet_dense": "reference, dense as LConvNet (smaller Gram)",
}


def _markdown_layers(results: dict) -> list[str]:
    env = results["environment"]
    lines = [
        "# BCOP layer and network benchmarks",
        "",
        f"{env['date']}, torch {env['torch']}, {env['threads']} threads, {env['cpu']}"
        f"{' (--quick: few repetitions)' if env['quick'] else ''}; "
        f"load average at start {env['load_average_at_start'][0]:.2f}. Median times.",
        "",
        f"## 1. BCOP layer, forward + backward (batch {LAYER_BATCH}, {LAYER_SIZE}x{LAYER_SIZE}, in = out)",
        "",
        "Orthogonality error: max |sigma - 1| of the circular convolution on 8x8 inputs.",
        "",
        "| channels | k | polar ms | Björck-20 ms | reference ms | speed-up polar | speed-up Björck "
        "| ortho err polar / Björck / ref |",
        "|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in results["layers"]:
        lines.append(
            f"| {r['channels']} | {r['kernel_size']} | {r['polar']['median_ms']:.2f} "
            f"| {r['bjorck']['median_ms']:.2f} | {r['reference']['median_ms']:.2f} "
            f"| {r['speedup_polar_vs_reference']:.1f}x | {r['speedup_bjorck_vs_reference']:.1f}x "
            f"| {r['polar']['ortho_error']:.1e} / {r['bjorck']['ortho_error']:.1e} / "
            f"{r['reference']['ortho_error']:.1e} |"
        )
    return lines


def _markdown_training(results: dict) -> list[str]:
    lines = [
        "",
        f"## 2. Large-MNIST training step (batch {TRAIN_BATCH}, Adam, hinge loss)",
        "",
        "| network | s / step | speed-up vs reference | max ortho err | max logit diff vs polar |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, r in results["training"].items():
        speedup = f"{r['speedup_vs_reference']:.1f}x" if "speedup_vs_reference" in r else "1.0x"
        lines.append(
            f"| {TRAINING_LABELS[name]} | {r['s_per_step']:.3f} | {speedup} | {r['ortho_error']:.1e} "
            f"| {r['max_logit_diff_vs_polar']:.1e} |"
        )
    return lines


def _markdown_profile(prof: dict) -> list[str]:
    lines = [
        "",
        f"## 3. Where a bcop-large-mnist training step goes ({prof['step_ms']:.1f} ms per step)",
        "",
        "Each part is timed on its own (the network's operators on plain-large-mnist-maxmin, which has",
        "the same shapes), so the parts need not add up to the step exactly.",
        "",
        "| part | ms | share of step |",
        "|---|---:|---:|",
    ]
    lines += [f"| {p['part']} | {p['ms']:.2f} | {100 * p['share']:.0f}% |" for p in prof["parts"]]
    lines += [
        f"| (sum of parts) | {prof['parts_sum_ms']:.2f} "
        f"| {100 * prof['parts_sum_ms'] / prof['step_ms']:.0f}% |",
        "",
        "Top operators by self CPU time (torch.profiler, one step):",
        "",
        "| operator | self ms | calls | share |",
        "|---|---:|---:|---:|",
    ]
    lines += [
        f"| `{o['op']}` | {o['self_ms']:.2f} | {o['calls']} | {100 * o['share']:.0f}% |"
        for o in prof["top_ops"]
    ]
    return lines


def _markdown_inference_and_targets(results: dict) -> list[str]:
    lines = [
        "",
        "## 4. Inference with cached kernels (eval, no_grad) vs plain-large-mnist-maxmin",
        "",
        "| batch | bcop ms | plain ms | ratio | bcop in parametrize.cached() ms | ratio |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in results["inference"].items():
        lines.append(
            f"| {name.split('_')[1]} | {r['bcop_ms']:.3f} | {r['plain_ms']:.3f} | {r['ratio']:.2f}x "
            f"| {r['bcop_parametrize_cached_ms']:.3f} | {r['ratio_parametrize_cached']:.2f}x |"
        )
    lines += [
        "",
        "First call at batch 128 (builds every kernel): "
        f"{results['inference']['batch_128']['first_call_ms']:.1f} ms.",
        "",
        "## Targets",
        "",
        "| target | goal | achieved | met |",
        "|---|---:|---:|---|",
    ]
    for name, t in results["targets"].items():
        lines.append(f"| {name} | {t['target']} | {t['achieved']:.2f} | {'yes' if t['met'] else 'no'} |")
    return lines


def markdown(results: dict) -> str:
    """The results as the Markdown report: layers, training step, profile, inference, targets."""
    lines = _markdown_layers(results) + _markdown_training(results)
    lines += _markdown_profile(results["profile"]) + _markdown_inference_and_targets(results)
    lines += _markdown_successors(results["successors"])
    return "\n".join(lines) + "\n"


def write_successors(out: Path, results: dict, reps: Reps, start: float) -> int:
    """Run and write section 5 alone (``--successors-only``)."""
    print("5. later families", flush=True)
    results["successors"] = bench_successor_training(reps)
    results["environment"]["load_average_at_end"] = list(os.getloadavg())
    results["environment"]["wall_s"] = time.perf_counter() - start
    write_results(out, results, "\n".join(_markdown_successors(results["successors"])) + "\n")
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.md')}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="few repetitions, for development")
    parser.add_argument("--out", default="results/layers", help="output path without extension")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--successors-only", action="store_true", help="only 5., the later families")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    reps = QUICK if args.quick else FULL
    results: dict = {"environment": environment(args.quick)}
    start = time.perf_counter()
    if args.successors_only:
        return write_successors(Path(args.out), results, reps, start)
    print("1. BCOP layers", flush=True)
    results["layers"] = bench_layers(reps)
    print("2. training step", flush=True)
    results["training"] = bench_training(reps)
    print("3. profile", flush=True)
    results["profile"] = bench_profile(reps)
    print("4. inference", flush=True)
    results["inference"] = bench_inference(reps)
    print("5. later families", flush=True)
    results["successors"] = bench_successor_training(reps)
    results["targets"] = targets(results)
    results["environment"]["load_average_at_end"] = list(os.getloadavg())
    results["environment"]["wall_s"] = time.perf_counter() - start

    out = Path(args.out)
    write_results(out, results, markdown(results))
    wall = results["environment"]["wall_s"]
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.md')} in {wall:.0f} s")

    errors = [r[m]["ortho_error"] for r in results["layers"] for m in ("polar", "bjorck", "reference")]
    errors += [r["ortho_error"] for r in results["training"].values()]
    if max(errors) > ORTHO_TOL:
        print(f"orthogonality error {max(errors):.1e} exceeds {ORTHO_TOL:.0e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

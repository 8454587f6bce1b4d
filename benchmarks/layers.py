"""Speed of BCOP layers and networks: ours against a straightforward reference and against the
plain network, where time goes, and how orthonormal a float32 training step is.

Seven sections, all on CPU in float32 (``--sections`` runs a subset), times as medians after warm-up:

1. ``layers``: one BCOP layer, forward + backward (batch 32, 8 x 8 input, in = out channels): our
   ``BCOPConv2d`` (polar; Björck with 20 iterations) against a reference written here the way the
   paper's code does it (Björck on the larger Gram side with Frobenius scaling, projectors formed,
   the k x k kernel composed entry by entry in Python loops, then a circularly padded conv2d),
   with the orthogonality error of every kernel: max |sigma - 1| over all singular values of the
   circular convolution on 8 x 8 inputs.
2. ``training``: one Large-MNIST training step (batch 128, Adam, multi-margin hinge loss with
   margin 2.12): our ``bcop-large-mnist`` (polar; Björck) against the same network with every BCOP
   and dense layer swapped for the reference modules of (1), and against the LConvNet variant of
   the dense layer (transposed to the smaller Gram side, scaled by power iteration).
3. ``steps``: the training step of every constrained Large network (bcop, rko, ossn, svcm) against
   ``plain-large-mnist-maxmin``, interleaved (see ``benchmarks/step_cost.py``).
4. ``overhead``: where bcop-large-mnist's extra time goes: each constrained layer's forward and
   backward against its exported ``nn.Conv2d`` / ``nn.Linear`` twin, and the top operators of a
   ``torch.profiler`` trace of one step.
5. ``orthogonality``: max |sigma - 1| of what a float32 training step uses, for raw matrices of
   condition number 1e2, 1e3, 1e4 at the initialisation's scale: BCOPConv2d(256, 256, 3) and the
   512 x 3136 dense layer (and the previous float32 recipe, for comparison).
6. ``deployment``: inference at batch 1, 8 and 128 of ``bcop-large-mnist`` in eval mode (kernels
   cached) and of ``bcop.export(...)`` of it, against ``plain-large-mnist-maxmin``, interleaved.
7. ``successors``: the later families (Cayley, SOC, AOL, SLL, AOC): one layer of each, forward +
   backward, beside orthogonium 0.0.4's where it has the family, and one Large-MNIST training
   step of each against ``plain-large-mnist-maxmin`` (see ``benchmarks/successors.py``).

Sections 1 and 2 perturb orthogonally initialised raw matrices by Gaussian noise of spectral norm
0.1 times their own (the initialisation's scale is 1/sqrt(fan-in)), as after some training, so
that the orthonormalisation has work to do; sections 3 and 4 start from the shipped checkpoints.

Usage::

    python benchmarks/layers.py [--quick] [--out results/layers] [--threads 2] [--sections steps,deployment]

writes ``results/layers.json`` and ``results/layers.md`` and prints the tables. ``--quick``
uses few repetitions (development on busy cores); the full run takes several minutes on 2 idle
cores. Exits with status 1 if an orthogonality error of OUR layers exceeds 1e-4 (the reference
and Björck rows are reported, not judged).
"""

from __future__ import annotations

import argparse
import copy
import datetime
import os
import platform
import sys
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bcop.factory import create_model  # noqa: E402
from bcop.layers import BCOPConv2d, OrthogonalLinear, OrthoParams  # noqa: E402
from bcop.orthogonal import conv_singular_values  # noqa: E402
from benchmarks.common import timed, write_results  # noqa: E402
from benchmarks.step_cost import (  # noqa: E402
    PLAIN,
    bench_deployment,
    bench_overhead_profile,
    bench_step_ratios,
    bench_train_orthogonality,
    layer_step_fn,
    markdown_deployment,
    markdown_orthogonality,
    markdown_overhead,
    markdown_steps,
    train_step_fn,
    worst_train_orthogonality,
)
from benchmarks.successors import bench_successors, markdown_successors  # noqa: E402

ORTHO_TOL = 1e-4
BJORCK_ITERS = 20
LAYER_CONFIGS = [(16, 3), (32, 3), (64, 3), (128, 3), (256, 3), (32, 5), (64, 5)]
LAYER_BATCH, LAYER_SIZE = 32, 8
TRAIN_BATCH = 128
PERTURBATION = 0.1
SECTIONS = ("layers", "training", "steps", "overhead", "orthogonality", "deployment", "successors")
TARGETS = {
    "layer_speedup_64_k3": 2.0,
    "layer_speedup_32_k5": 2.0,
    "train_speedup": 3.0,
    "step_ratio_max": 1.5,
    "cached_ratio_batch_1": 1.1,
    "exported_ratio_max": 1.05,
}
LOWER_IS_BETTER = ("step_ratio_max", "cached_ratio_batch_1", "exported_ratio_max")


@dataclass(frozen=True)
class Reps:
    """(warm-up calls, timed repetitions) for each kind of measurement.

    ``train_slow`` is for the networks built on Björck (ours with Björck, the references), whose
    training steps take seconds; ``steps`` and ``parts`` are interleaved (every network or layer
    takes its turn in each repetition); ``deploy`` maps a batch size to its repetitions.
    """

    layer: tuple[int, int]
    train: tuple[int, int]
    train_slow: tuple[int, int]
    steps: tuple[int, int]
    parts: tuple[int, int]
    deploy: dict[int, tuple[int, int]]


FULL = Reps(
    layer=(3, 15),
    train=(3, 10),
    train_slow=(1, 3),
    steps=(2, 9),
    parts=(3, 15),
    deploy={1: (20, 300), 8: (10, 100), 128: (3, 30)},
)
QUICK = Reps(
    layer=(1, 3),
    train=(1, 3),
    train_slow=(0, 1),
    steps=(1, 5),
    parts=(1, 5),
    deploy={1: (5, 60), 8: (3, 30), 128: (1, 7)},
)


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
    """Björck dense layer computed the straightforward way, from the matrix of an ``OrthogonalLinear``."""

    def __init__(self, ours: OrthogonalLinear, gram: str = "larger") -> None:
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
        elif isinstance(module, OrthogonalLinear):
            layers[name] = ReferenceBjorckLinear(module, dense_gram)
        else:
            layers[name] = copy.deepcopy(module)
    return nn.Sequential(layers)


# ----------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------


@torch.no_grad()
def perturb_(model: nn.Module, scale: float = PERTURBATION, seed: int = 0) -> None:
    """Add Gaussian noise to every unconstrained matrix, of spectral norm about ``scale`` times
    the matrix's own: relative to the initialisation's scale (1/sqrt(fan-in)), not to 1."""
    gen = torch.Generator().manual_seed(seed)
    for name, param in model.named_parameters():
        if ".original" in name:
            matrices = param.reshape(param.shape[0], -1) if param.dim() == 4 else param  # RKO: (out, in k k)
            own = torch.linalg.matrix_norm(matrices, ord=2)[..., None, None]
            noise = torch.randn(matrices.shape, generator=gen) / max(matrices.shape[-2:]) ** 0.5
            matrices.add_(noise * scale * own)


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
            elif isinstance(module, OrthogonalLinear):
                worst = max(worst, dense_ortho_error(module.weight))
            elif isinstance(module, ReferenceBjorckLinear):
                worst = max(worst, dense_ortho_error(module.built))
    return worst


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
    """Each target whose section ran: goal, achieved, met."""
    achieved = {}
    if "layers" in results:
        layer = {(r["channels"], r["kernel_size"]): r for r in results["layers"]}
        achieved["layer_speedup_64_k3"] = layer[64, 3]["speedup_polar_vs_reference"]
        achieved["layer_speedup_32_k5"] = layer[32, 5]["speedup_polar_vs_reference"]
    if "training" in results:
        achieved["train_speedup"] = results["training"]["polar"]["speedup_vs_reference"]
    if "steps" in results:
        achieved["step_ratio_max"] = max(r["ratio"] for name, r in results["steps"].items() if name != PLAIN)
    if "deployment" in results:
        achieved["cached_ratio_batch_1"] = results["deployment"][1]["cached_ratio"]
        achieved["exported_ratio_max"] = max(r["exported_ratio"] for r in results["deployment"].values())
    return {
        name: {
            "target": TARGETS[name],
            "achieved": value,
            "met": value <= TARGETS[name] if name in LOWER_IS_BETTER else value >= TARGETS[name],
        }
        for name, value in achieved.items()
    }


def ortho_errors_of_ours(results: dict) -> list[float]:
    """The orthogonality errors the exit status judges: our polar layers and networks, and a
    training step's float32 weights (never the reference's or Björck's, which are there to
    compare against)."""
    errors = [r["polar"]["ortho_error"] for r in results.get("layers", [])]
    if "training" in results:
        errors.append(results["training"]["polar"]["ortho_error"])
    if "orthogonality" in results:
        errors.append(worst_train_orthogonality(results["orthogonality"]))
    return errors


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


def _markdown_header(results: dict) -> list[str]:
    env = results["environment"]
    return [
        "# BCOP layer and network benchmarks",
        "",
        f"{env['date']}, torch {env['torch']}, {env['threads']} threads, {env['cpu']}"
        f"{' (--quick: few repetitions)' if env['quick'] else ''}; "
        f"load average at start {env['load_average_at_start'][0]:.2f}, at end "
        f"{env['load_average_at_end'][0]:.2f}. Median times.",
    ]


def _markdown_targets(results: dict) -> list[str]:
    lines = ["", "## Targets", "", "| target | goal | achieved | met |", "|---|---:|---:|---|"]
    for name, t in results["targets"].items():
        lines.append(f"| {name} | {t['target']} | {t['achieved']:.2f} | {'yes' if t['met'] else 'no'} |")
    return lines


MARKDOWN = {
    "layers": _markdown_layers,
    "training": _markdown_training,
    "steps": lambda results: markdown_steps(results["steps"]),
    "overhead": lambda results: markdown_overhead(results["overhead"]),
    "orthogonality": lambda results: markdown_orthogonality(results["orthogonality"]),
    "deployment": lambda results: markdown_deployment(results["deployment"]),
    "successors": lambda results: markdown_successors(results["successors"]),
}


def markdown(results: dict) -> str:
    """The results as the Markdown report: one table per section that ran, then the targets."""
    lines = _markdown_header(results)
    for section, render in MARKDOWN.items():
        if section in results:
            lines += render(results)
    return "\n".join(lines + _markdown_targets(results)) + "\n"


def run_sections(sections: list[str], reps: Reps) -> dict:
    """Run the named sections in the order of SECTIONS; returns their results by name."""
    runs = {
        "layers": lambda: bench_layers(reps),
        "training": lambda: bench_training(reps),
        "steps": lambda: bench_step_ratios(reps.steps, perturb_),
        "overhead": lambda: bench_overhead_profile(reps.parts, perturb_),
        "orthogonality": bench_train_orthogonality,
        "deployment": lambda: bench_deployment(reps.deploy),
        "successors": lambda: bench_successors(reps.layer, reps.steps),
    }
    results = {}
    for section in SECTIONS:
        if section in sections:
            print(section, flush=True)
            results[section] = runs[section]()
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="few repetitions, for development")
    parser.add_argument("--out", default="results/layers", help="output path without extension")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument(
        "--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}"
    )
    args = parser.parse_args(argv)
    sections = args.sections.split(",")
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}; known: {', '.join(SECTIONS)}")
    torch.set_num_threads(args.threads)
    results: dict = {"environment": environment(args.quick)}
    start = time.perf_counter()
    results |= run_sections(sections, QUICK if args.quick else FULL)
    results["targets"] = targets(results)
    results["environment"]["load_average_at_end"] = list(os.getloadavg())
    results["environment"]["wall_s"] = time.perf_counter() - start

    out = Path(args.out)
    write_results(out, results, markdown(results))
    wall = results["environment"]["wall_s"]
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.md')} in {wall:.0f} s")
    errors = ortho_errors_of_ours(results)
    if errors and max(errors) > ORTHO_TOL:
        print(f"orthogonality error of our layers {max(errors):.1e} exceeds {ORTHO_TOL:.0e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

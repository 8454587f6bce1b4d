"""The later families (Cayley, SOC, AOL, SLL, AOC) beside each other, beside orthogonium, and
against the plain network: section ``successors`` of ``benchmarks/layers.py``.

* One layer of each family, forward + backward in training mode, at 64 channels k = 3 and
  32 channels k = 5 (batch 8, 32 x 32, in = out channels), ours and orthogonium 0.0.4's where it
  has the family (optional: ``pip install --no-deps orthogonium==0.0.4``; the table says when it
  is missing or has no CPU layer).
* One Large-MNIST training step of every family's fresh network against
  ``plain-large-mnist-maxmin`` and ``bcop-large-mnist``, interleaved as the ``steps`` section,
  with the epoch it implies on train+val at batch 128, and the eval-mode forward pass that
  validation, certification and attacks run.
* SOC's training series (5 terms, forward + backward, batch 128) by convolutions
  (``exp_conv``) and by FFT (``exp_conv_fft``, what the layer runs) at the four SOC layers'
  shapes in soc-large-mnist.
"""

from __future__ import annotations

import torch
from torch import nn

from bcop.factory import create_model
from bcop.kernels import exp_conv, exp_conv_fft, skew_kernel
from bcop.layers import AOCConv2d, AOLConv2d, CayleyConv2d, SLLConv2d, SOCConv2d
from bcop.models import SUCCESSORS
from benchmarks.step_cost import BATCH, PLAIN, interleaved, layer_step_fn, train_step_fn

LAYER_CONFIGS = ((64, 3), (32, 5))
LAYER_BATCH, LAYER_SIZE = 8, 32  # 32 x 32: the size orthogonium's layers are written for
STEPS_PER_EPOCH = -(-60_000 // BATCH)  # train+val, the final runs' split
# soc-large-mnist's SOC layers: (channels c after zero-padding, grid, channels kept, raw kernel).
SOC_SHAPES = ((32, 28, 32, 3), (128, 14, 32, 2), (64, 14, 64, 3), (256, 7, 64, 2))
SOC_TRAIN_TERMS = 5


def ours(family: str, channels: int, k: int) -> nn.Module:
    """Our layer of ``family``, ``channels`` -> ``channels``, for 32 x 32 inputs."""
    return {
        "cayley": lambda: CayleyConv2d(channels, channels, k, input_size=LAYER_SIZE),
        "soc": lambda: SOCConv2d(channels, channels, k),
        "aol": lambda: AOLConv2d(channels, channels, k),
        "sll": lambda: SLLConv2d(channels, channels, k),
        "aoc": lambda: AOCConv2d(channels, channels, k),
    }[family]()


def orthogonium_layer(family: str, channels: int, k: int) -> tuple[nn.Module | None, str]:
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
        out = tuple(layer(torch.zeros(1, channels, LAYER_SIZE, LAYER_SIZE)).shape[-2:])
        return layer, f"AdaptiveSOCConv2d (a modified SOC, explicit kernel; output {out[0]}x{out[1]})"
    if family == "aol":
        return AOLConv2D(channels, channels, k, padding="same", padding_mode="circular"), "AOLConv2D"
    if family == "sll":
        return SDPBasedLipschitzResBlock(channels, 1.0, kernel_size=k), "SDPBasedLipschitzResBlock"
    return AdaptiveOrthoConv2d(channels, channels, k, padding_mode="circular"), "AdaptiveOrthoConv2d"


def bench_successor_layers(reps: tuple[int, int]) -> list[dict]:
    """Forward + backward of each family's layer, ours and orthogonium's interleaved."""
    rows = []
    for channels, k in LAYER_CONFIGS:
        x = torch.randn(LAYER_BATCH, channels, LAYER_SIZE, LAYER_SIZE)
        for family in SUCCESSORS:
            torch.manual_seed(0)
            fns = {"ours": layer_step_fn(ours(family, channels, k).train(), x)}
            reference, what = orthogonium_layer(family, channels, k)
            if reference is not None:
                fns["orthogonium"] = layer_step_fn(reference.train(), x)
            row = {"family": family, "channels": channels, "kernel_size": k, "orthogonium_layer": what}
            rows.append(row | {f"{name}_ms": ms for name, ms in interleaved(fns, *reps).items()})
            print(f"  {family} {channels} k{k}: {rows[-1]}", flush=True)
    return rows


def bench_soc_series(reps: tuple[int, int]) -> list[dict]:
    """SOC's training series by convolutions and by FFT at soc-large-mnist's shapes, interleaved."""
    rows = []
    for c, size, out, k in SOC_SHAPES:
        gen = torch.Generator().manual_seed(c)
        x = torch.randn(BATCH, c, size, size, generator=gen, requires_grad=True)
        raw = (0.05 * torch.randn(c, c, k, k, generator=gen)).requires_grad_()
        fns = {
            "convolution": lambda x=x, s=raw, out=out: exp_conv(x, skew_kernel(s), SOC_TRAIN_TERMS)[:, :out],
            "fft": lambda x=x, s=raw, out=out: exp_conv_fft(x, skew_kernel(s), SOC_TRAIN_TERMS, out),
        }
        steps = {name: (lambda f=f: f().square().sum().backward()) for name, f in fns.items()}
        ms = interleaved(steps, *reps)
        rows.append({"channels": c, "size": size, "kept": out, "kernel_size": k})
        rows[-1] |= {f"{name}_ms": t for name, t in ms.items()}
        print(f"  soc series {c} ch {size}x{size}: {rows[-1]}", flush=True)
    return rows


def bench_successors(layer_reps: tuple[int, int], step_reps: tuple[int, int]) -> dict:
    """The layer table, then one Large-MNIST training step of every family against plain (and
    BCOP) interleaved, with the eval-mode forward pass (SOC's 12 terms) at batch 128."""
    x = torch.rand(BATCH, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    y = torch.randint(0, 10, (BATCH,), generator=torch.Generator().manual_seed(1))
    names = [PLAIN, "bcop-large-mnist", *(f"{family}-large-mnist" for family in SUCCESSORS)]
    models = {}
    for name in names:
        torch.manual_seed(0)
        models[name] = create_model(name)
    steps = interleaved({name: train_step_fn(m.train(), x, y) for name, m in models.items()}, *step_reps)
    for model in models.values():
        model.eval()
    with torch.no_grad():
        evals = interleaved({name: (lambda m=m: m(x)) for name, m in models.items()}, *step_reps)
    training = {
        name: {
            "step_ms": steps[name],
            "vs_plain": steps[name] / steps[PLAIN],
            "epoch_min": steps[name] * STEPS_PER_EPOCH / 6e4,
            "eval_ms": evals[name],
        }
        for name in names
    }
    return {
        "layers": bench_successor_layers(layer_reps),
        "training": training,
        "soc_series": bench_soc_series(layer_reps),
    }


def markdown_successors(results: dict) -> list[str]:
    """The section's two tables."""
    lines = [
        "",
        f"## The later families: forward + backward (batch {LAYER_BATCH}, {LAYER_SIZE}x{LAYER_SIZE}, "
        "in = out channels), and one Large-MNIST training step",
        "",
        "| family | channels | k | ours (ms) | orthogonium 0.0.4 (ms) | orthogonium's layer |",
        "|---|---|---|---|---|---|",
    ]
    for r in results["layers"]:
        theirs = f"{r['orthogonium_ms']:.1f}" if "orthogonium_ms" in r else "-"
        lines.append(
            f"| {r['family']} | {r['channels']} | {r['kernel_size']} | {r['ours_ms']:.1f} | {theirs} "
            f"| {r['orthogonium_layer']} |"
        )
    lines += [
        "",
        f"| model (batch {BATCH}, Adam, hinge) | step (ms) | x plain | epoch ({STEPS_PER_EPOCH} steps, min) "
        f"| eval forward, batch {BATCH} (ms) |",
        "|---|---|---|---|---|",
    ]
    for name, r in results["training"].items():
        lines.append(
            f"| {name} | {r['step_ms']:.0f} | {r['vs_plain']:.1f} | {r['epoch_min']:.1f} "
            f"| {r['eval_ms']:.0f} |"
        )
    lines += [
        "",
        f"SOC's training series, {SOC_TRAIN_TERMS} terms, forward + backward at batch {BATCH}:",
        "",
        "| channels (grid) | kept | raw k | convolutions (ms) | FFT (ms) | ratio |",
        "|---|---|---|---|---|---|",
    ]
    for r in results.get("soc_series", []):
        lines.append(
            f"| {r['channels']} ({r['size']}x{r['size']}) | {r['kept']} | {r['kernel_size']} "
            f"| {r['convolution_ms']:.0f} | {r['fft_ms']:.0f} | {r['convolution_ms'] / r['fft_ms']:.2f} |"
        )
    return lines

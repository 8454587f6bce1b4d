"""What the constraint costs: training-step ratios against the plain network, where a BCOP step's
extra time goes, float32 orthogonality of a training step, and the exported network's speed.

Sections of ``benchmarks/layers.py`` (see its docstring and ``benchmarks/README.md``). Every
ratio is measured *interleaved*: the networks compared take turns, call by call, in one
process, and each side's median is taken over its own calls, so background load on shared
cores slows both sides alike.

The constrained networks start from the shipped checkpoints when ``checkpoints/<name>`` holds
them (their raw matrices are as conditioned as training leaves them: the condition number
decides which float32 recipe a training step takes, Note [Orthonormal in float32 while
training]); otherwise from a fresh network, perturbed.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from bcop.export import export
from bcop.factory import create_model
from bcop.hub import load_folder
from bcop.layers import BCOPConv2d, OrthogonalLinear
from bcop.orthogonal import conv_singular_values
from benchmarks.common import markdown_table

ROOT = Path(__file__).resolve().parents[1]
PLAIN = "plain-large-mnist-maxmin"
CONSTRAINED = ("bcop-large-mnist", "rko-large-mnist", "ossn-large-mnist", "svcm-large-mnist")
HINGE_MARGIN = 2.12
BATCH = 128
CONDITION_NUMBERS = (1e2, 1e3, 1e4)
DEPLOY_BATCHES = (1, 8, 128)


def interleaved(fns: dict[str, Callable[[], object]], warmup: int, reps: int) -> dict[str, float]:
    """Median wall time (ms) of each function, calling them in turn ``reps`` times."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - start) * 1e3)
    return {name: statistics.median(t) for name, t in times.items()}


def trained_or_fresh(name: str, perturb: Callable[[nn.Module], None]) -> tuple[nn.Module, str]:
    """The shipped checkpoint of ``name`` (train mode) if there is one, else a fresh perturbed
    network; and which it is."""
    folder = ROOT / "checkpoints" / name
    if (folder / "model.safetensors").is_file():
        return load_folder(folder)[0].train(), "shipped checkpoint"
    torch.manual_seed(0)
    model = create_model(name)
    perturb(model)
    return model, "fresh, perturbed"


def train_step_fn(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
    """One Adam step on the multi-margin hinge loss."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        F.multi_margin_loss(model(x), y, margin=HINGE_MARGIN).backward()
        optimizer.step()

    return step


def bench_step_ratios(reps: tuple[int, int], perturb: Callable[[nn.Module], None]) -> dict:
    """Training step of every constrained Large network against plain-large-mnist-maxmin."""
    x = torch.rand(BATCH, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    y = torch.randint(0, 10, (BATCH,), generator=torch.Generator().manual_seed(1))
    torch.manual_seed(0)
    steps = {PLAIN: train_step_fn(create_model(PLAIN), x, y)}
    sources = {PLAIN: "fresh"}
    for name in CONSTRAINED:
        model, sources[name] = trained_or_fresh(name, perturb)
        steps[name] = train_step_fn(model, x, y)
    medians = interleaved(steps, *reps)
    rows = {
        name: {"ms": medians[name], "ratio": medians[name] / medians[PLAIN], "weights": sources[name]}
        for name in steps
    }
    for name, row in rows.items():
        print(f"  step {name}: {row['ms']:.1f} ms ({row['ratio']:.2f}x plain)", flush=True)
    return rows


def layer_step_fn(layer: nn.Module, x: torch.Tensor) -> Callable[[], None]:
    """Forward + backward of one layer, with the gradient with respect to its input as in a network."""

    def step() -> None:
        layer.zero_grad(set_to_none=True)
        layer(x.detach().requires_grad_(True)).sum().backward()

    return step


def bench_overhead_profile(
    reps: tuple[int, int], perturb: Callable[[nn.Module], None], top: int = 12
) -> dict:
    """Where a bcop-large-mnist step's extra time goes: each constrained layer's forward and
    backward against its exported twin (an nn.Conv2d / nn.Linear with the same weight), and
    the top operators of a profiled step."""
    model, source = trained_or_fresh("bcop-large-mnist", perturb)
    twins = export(model).train()
    x = torch.rand(BATCH, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    inputs = {}
    with torch.no_grad():
        h = x
        for name, layer in model.named_children():
            inputs[name], h = h, layer(h)
    parts = []
    for name, layer in model.named_children():
        if hasattr(layer, "parametrizations"):
            twin = getattr(twins, name)
            medians = interleaved(
                {"ours": layer_step_fn(layer, inputs[name]), "twin": layer_step_fn(twin, inputs[name])}, *reps
            )
            kind = "BCOP kernel" if isinstance(layer, BCOPConv2d) else "polar_linear (Gram, eigh, products)"
            parts.append(
                {
                    "layer": name,
                    "what": kind,
                    "ours_ms": medians["ours"],
                    "plain_ms": medians["twin"],
                    "overhead_ms": medians["ours"] - medians["twin"],
                }
            )
    y = torch.randint(0, 10, (BATCH,), generator=torch.Generator().manual_seed(1))
    step = train_step_fn(model, x, y)
    step()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        step()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events) / 1e3
    ops = [
        {
            "op": e.key,
            "self_ms": e.self_cpu_time_total / 1e3,
            "calls": e.count,
            "share": e.self_cpu_time_total / 1e3 / total,
        }
        for e in events[:top]
    ]
    return {
        "weights": source,
        "parts": parts,
        "overhead_ms": sum(p["overhead_ms"] for p in parts),
        "profiled_step_ms": total,
        "top_ops": ops,
    }


def conditioned_(matrices: torch.Tensor, cond: float, fan_in: int, seed: int = 0) -> None:
    """Overwrite each (m, n) matrix with ``U diag(s) V^T / sqrt(fan_in)``: the initialisation's
    scale, singular values geometric from 1 to 1/cond, U and V random orthonormal."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for matrix in matrices.view(-1, *matrices.shape[-2:]):
            k = min(matrix.shape)
            u = torch.linalg.qr(torch.randn(matrix.shape[0], k, generator=gen, dtype=torch.float64)).Q
            v = torch.linalg.qr(torch.randn(matrix.shape[1], k, generator=gen, dtype=torch.float64)).Q
            s = torch.logspace(0, -math.log10(cond), k, dtype=torch.float64)
            matrix.copy_((u * s) @ v.mT / math.sqrt(fan_in))


def _sigma_error(singular_values: torch.Tensor) -> float:
    return float((singular_values - 1).abs().max())


def _float32_gram_polar(w: torch.Tensor) -> torch.Tensor:
    """The previous training recipe: float32 Gram matrix and float32 eigh (tall ``w``)."""
    evals, evecs = torch.linalg.eigh(w.mT @ w)
    return w @ ((evecs / evals.clamp_min(1e-10).sqrt().unsqueeze(-2)) @ evecs.mT)


def bench_train_orthogonality() -> list[dict]:
    """max |sigma - 1| of what a float32 training step uses, raw matrices of condition number
    1e2..1e4 at the initialisation's scale: BCOPConv2d(256, 256, 3) (its kernel, on 8x8) and
    the 512 x 3136 dense layer (the map the step applies, and the train-mode weight)."""
    rows = []
    for cond in CONDITION_NUMBERS:
        torch.manual_seed(0)
        conv = BCOPConv2d(256, 256, 3).train()
        raws = list(conv.parametrizations.weight.parameters())
        for i, raw in enumerate(raws):
            conditioned_(raw, cond, 256, seed=i)
        kernel_error = _sigma_error(conv_singular_values(conv.weight.detach().double(), 8))
        dense = OrthogonalLinear(3136, 512).train()
        raw = dense.parametrizations.weight.original
        conditioned_(raw, cond, 3136)
        applied = dense(torch.eye(3136)) - dense.bias
        rows.append(
            {
                "cond": cond,
                "bcop_256_kernel": kernel_error,
                "dense_applied": _sigma_error(torch.linalg.svdvals(applied.detach().double())),
                "dense_weight": _sigma_error(torch.linalg.svdvals(dense.weight.detach().double())),
                "previous_recipe_H_256": _sigma_error(
                    torch.linalg.svdvals(_float32_gram_polar(raws[0].detach()).double())
                ),
                "previous_recipe_dense": _sigma_error(
                    torch.linalg.svdvals(_float32_gram_polar(raw.detach().mT).double())
                ),
            }
        )
        print(
            f"  cond {cond:.0e}: kernel {kernel_error:.1e}, dense {rows[-1]['dense_applied']:.1e}", flush=True
        )
    return rows


def bench_deployment(reps: dict[int, tuple[int, int]]) -> dict:
    """Inference under no_grad against plain-large-mnist-maxmin at batch 1, 8 and 128:
    bcop-large-mnist in eval mode (kernels cached after the first call) and its export."""
    torch.manual_seed(0)
    ours = create_model("bcop-large-mnist").eval()
    plain = create_model(PLAIN).eval()
    exported = export(ours)
    rows = {}
    with torch.no_grad():
        for batch in DEPLOY_BATCHES:
            x = torch.rand(batch, 1, 28, 28)
            fns = {"plain": plain, "cached": ours, "exported": exported}
            medians = interleaved({k: lambda net=net, x=x: net(x) for k, net in fns.items()}, *reps[batch])
            rows[batch] = {
                "plain_ms": medians["plain"],
                "cached_ms": medians["cached"],
                "exported_ms": medians["exported"],
                "cached_ratio": medians["cached"] / medians["plain"],
                "exported_ratio": medians["exported"] / medians["plain"],
            }
            r = rows[batch]
            print(
                f"  batch {batch}: cached {r['cached_ratio']:.2f}x, exported {r['exported_ratio']:.2f}x",
                flush=True,
            )
    return rows


def markdown_steps(rows: dict) -> list[str]:
    return markdown_table(
        [f"## Training step against {PLAIN} (batch {BATCH}, Adam, hinge; interleaved medians)"],
        "| network | weights | ms / step | ratio to plain |",
        "|---|---|---:|---:|",
        [[name, r["weights"], f"{r['ms']:.1f}", f"{r['ratio']:.2f}x"] for name, r in rows.items()],
    )


def markdown_overhead(prof: dict) -> list[str]:
    lines = [
        "",
        f"## Where bcop-large-mnist's extra time goes ({prof['weights']}; layer forward + backward,",
        "train mode, against its exported nn.Conv2d / nn.Linear twin; interleaved medians)",
        "",
        "| layer | constraint | ours ms | plain ms | overhead ms |",
        "|---|---|---:|---:|---:|",
    ]
    lines += [
        f"| {p['layer']} | {p['what']} | {p['ours_ms']:.1f} | {p['plain_ms']:.1f} | {p['overhead_ms']:.1f} |"
        for p in prof["parts"]
    ]
    lines += [
        f"| all | | | | {prof['overhead_ms']:.1f} |",
        "",
        f"Top operators by self CPU time (torch.profiler, one step, {prof['profiled_step_ms']:.0f} ms):",
        "",
        "| operator | self ms | calls | share |",
        "|---|---:|---:|---:|",
    ]
    lines += [
        f"| `{o['op']}` | {o['self_ms']:.2f} | {o['calls']} | {100 * o['share']:.0f}% |"
        for o in prof["top_ops"]
    ]
    return lines


def markdown_orthogonality(rows: list[dict]) -> list[str]:
    keys = ("bcop_256_kernel", "dense_applied", "dense_weight")
    keys += ("previous_recipe_H_256", "previous_recipe_dense")
    return markdown_table(
        [
            "## Float32 orthogonality of a training step (max |sigma - 1|)",
            "",
            "Raw matrices at the initialisation's scale with singular values spread over the condition",
            "number. Ours: the BCOPConv2d(256, 256, 3) kernel on 8x8, the map the 512 x 3136 dense layer",
            "applies and its train-mode weight. Previous recipe (float32 Gram matrix and eigh): its H and",
            "its dense factor, for comparison (not judged).",
        ],
        "| condition number | BCOP 256 kernel | dense, applied | dense, weight | previous: H 256 "
        "| previous: dense |",
        "|---:|---:|---:|---:|---:|---:|",
        [[f"{r['cond']:.0e}", *(f"{r[k]:.1e}" for k in keys)] for r in rows],
    )


def markdown_deployment(rows: dict) -> list[str]:
    return markdown_table(
        [f"## Inference against {PLAIN} (no_grad; interleaved medians)"],
        "| batch | plain ms | bcop eval, cached kernels | ratio | bcop.export(...) | ratio |",
        "|---:|---:|---:|---:|---:|---:|",
        [
            [str(batch), f"{r['plain_ms']:.3f}", f"{r['cached_ms']:.3f}", f"{r['cached_ratio']:.2f}x",
             f"{r['exported_ms']:.3f}", f"{r['exported_ratio']:.2f}x"]
            for batch, r in rows.items()
        ],
    )  # fmt: skip


def worst_train_orthogonality(rows: list[dict]) -> float:
    """The largest error of OUR layers in :func:`bench_train_orthogonality` (what the exit status judges)."""
    return max(max(r["bcop_256_kernel"], r["dense_applied"], r["dense_weight"]) for r in rows)

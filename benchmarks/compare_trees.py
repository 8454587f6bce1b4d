"""The layer benchmark of two checkouts side by side: has a change made BCOP slower?

``python benchmarks/compare_trees.py --base PATH`` times, in this checkout and in the one at
``PATH`` (e.g. ``git worktree add ../base v0.2.0``), one ``BCOPConv2d`` forward + backward at
the configurations of ``layers.py``'s first section (batch 32, 8x8 input, in = out channels,
raw matrices perturbed off orthogonal by noise of 0.1 times their spectral norm) and one
training step of ``bcop-large-mnist`` (batch 128, Adam, multi-margin hinge). Each tree is timed
in its own process, the trees taking turns for ``--rounds`` rounds, so a load that comes and
goes reaches both; a figure is the smallest of a tree's per-round medians. The worker uses only
what every version of the library has (``bcop.layers.BCOPConv2d``, ``bcop.models.create_model``).

Writes ``results/compare_trees.{json,md}`` (``--out``) and prints the Markdown; a row whose
ratio exceeds ``--tolerance`` (default 1.10) is marked.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

LAYER_CONFIGS = [(16, 3), (32, 3), (64, 3), (128, 3), (256, 3), (32, 5), (64, 5)]
LAYER_BATCH, LAYER_SIZE, TRAIN_BATCH = 32, 8, 128
HINGE_MARGIN = 2.12
PERTURBATION = 0.1


def _perturb_(model, seed: int = 0) -> None:
    """Noise of spectral norm about PERTURBATION times each raw matrix's own."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".original" in name:
                own = torch.linalg.matrix_norm(param, ord=2)[..., None, None]
                noise = torch.randn(param.shape, generator=gen) / max(param.shape[-2:]) ** 0.5
                param.add_(noise * PERTURBATION * own)


def worker(threads: int) -> dict[str, float]:
    """Milliseconds per call of each measurement, in whatever ``bcop`` is on the path."""
    import torch
    import torch.nn.functional as F
    from common import timed  # benchmarks/ (this script's folder, first on the path)

    from bcop.layers import BCOPConv2d
    from bcop.models import create_model

    torch.set_num_threads(threads)
    out: dict[str, float] = {}
    for channels, k in LAYER_CONFIGS:
        torch.manual_seed(0)
        layer = BCOPConv2d(channels, channels, k)
        _perturb_(layer)
        x = torch.randn(LAYER_BATCH, channels, LAYER_SIZE, LAYER_SIZE)
        reps = 100 if channels < 128 else 20
        call = lambda layer=layer, x=x: layer(x).sum().backward()  # noqa: E731
        out[f"layer c={channels} k={k}"] = timed(call, 5, reps)["median_ms"]
    torch.manual_seed(0)
    model = create_model("bcop-large-mnist")
    _perturb_(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    x, y = torch.rand(TRAIN_BATCH, 1, 28, 28), torch.randint(0, 10, (TRAIN_BATCH,))

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        F.multi_margin_loss(model(x), y, margin=HINGE_MARGIN).backward()
        optimizer.step()

    out["bcop-large-mnist training step"] = timed(step, 2, 6)["median_ms"]
    return out


def run_worker(tree: Path, threads: int) -> dict[str, float]:
    """One worker process on ``tree``'s library (its root first on the path)."""
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": str(threads)}
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", "--threads", str(threads)]
    done = subprocess.run(command, cwd=tree, env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def compare(base: Path, rounds: int, threads: int) -> dict:
    """Both trees, taking turns; the smallest per-round median of each measurement."""
    runs: dict[str, list[dict[str, float]]] = {"base": [], "this": []}
    for index in range(rounds):
        for side, tree in (("base", base), ("this", ROOT)):
            runs[side].append(run_worker(tree, threads))
            print(f"  round {index + 1}/{rounds}: {side} done", flush=True)
    best = {side: {key: min(run[key] for run in done) for key in done[0]} for side, done in runs.items()}
    rows = [
        {"measurement": key, "base_ms": base, "this_ms": best["this"][key], "ratio": best["this"][key] / base}
        for key, base in best["base"].items()
    ]
    return {"base": str(base), "this": str(ROOT), "rounds": rounds, "threads": threads, "rows": rows}


def markdown(results: dict, tolerance: float) -> str:
    """The comparison as a titled Markdown table."""
    from benchmarks.common import markdown_table

    body = [
        [
            r["measurement"],
            f"{r['base_ms']:.2f}",
            f"{r['this_ms']:.2f}",
            f"{r['ratio']:.2f}",
            "over" if r["ratio"] > tolerance else "",
        ]
        for r in results["rows"]
    ]
    title = [
        "## This tree against another checkout",
        f"Base `{results['base']}`, {results['threads']} thread(s), best of {results['rounds']} "
        f"interleaved rounds; a ratio over {tolerance:.2f} is marked.",
    ]
    header = "| measurement | base ms | this ms | this / base | |"
    return "\n".join(markdown_table(title, header, "|---|---:|---:|---:|---|", body)).lstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", type=Path, help="the other checkout's root")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--tolerance", type=float, default=1.10)
    parser.add_argument("--out", default=str(ROOT / "results" / "compare_trees"))
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.threads)))
        return 0
    if args.base is None or not (args.base / "bcop" / "__init__.py").is_file():
        parser.error("--base must name a checkout of this project (a folder with bcop/)")
    sys.path.insert(0, str(ROOT))  # after the workers: they import the library of their own tree
    results = compare(args.base.resolve(), args.rounds, args.threads)
    text = markdown(results, args.tolerance)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    out.with_suffix(".md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

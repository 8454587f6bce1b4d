"""The layer benchmark of two checkouts side by side: has a change made BCOP slower?

``python benchmarks/compare_trees.py --base PATH`` times one ``BCOPConv2d`` forward + backward at
the configurations of ``layers.py``'s first section (batch 32, 8x8 input, in = out channels,
raw matrices perturbed off orthogonal by noise of 0.1 times their spectral norm) and one training
step of ``bcop-large-mnist`` (batch 128, Adam, multi-margin hinge), in this checkout and in the
one at ``PATH`` (e.g. ``git worktree add ../base v0.2.0``).

Both libraries run in one process, taking turns call by call, so a load that comes and goes
slows both alike: the other checkout's ``bcop`` package is copied to a temporary folder as
``bcop_base``, its imports of ``bcop`` rewritten. A figure is each side's median over its own
calls. Only what every version of the library has is used (``bcop.layers.BCOPConv2d``,
``bcop.models.create_model``).

Writes ``results/compare_trees.{json,md}`` (``--out``) and prints the Markdown; a row whose
ratio exceeds ``--tolerance`` (default 1.10) is marked.
"""

from __future__ import annotations

import argparse
import importlib
import json
import re
import shutil
import sys
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import markdown_table  # noqa: E402
from benchmarks.layers import perturb_  # noqa: E402
from benchmarks.step_cost import interleaved, train_step_fn  # noqa: E402

LAYER_CONFIGS = [(16, 3), (32, 3), (64, 3), (128, 3), (256, 3), (32, 5), (64, 5)]
LAYER_BATCH, LAYER_SIZE, TRAIN_BATCH = 32, 8, 128
_IMPORT = re.compile(r"^(\s*)(from|import) bcop(?=[\s.])", re.MULTILINE)


def load_base(tree: Path, into: Path) -> ModuleType:
    """``tree``'s ``bcop`` package, imported as ``bcop_base`` from a copy under ``into``."""
    package = into / "bcop_base"
    shutil.copytree(tree / "bcop", package, ignore=shutil.ignore_patterns("__pycache__"))
    for source in package.rglob("*.py"):
        source.write_text(_IMPORT.sub(r"\1\2 bcop_base", source.read_text()))
    sys.path.insert(0, str(into))
    return importlib.import_module("bcop_base")


def _layer_call(package: str, channels: int, k: int, x: torch.Tensor) -> Callable[[], object]:
    torch.manual_seed(0)
    layer = importlib.import_module(f"{package}.layers").BCOPConv2d(channels, channels, k)
    perturb_(layer)
    return lambda: layer(x).sum().backward()


def _step_call(package: str, x: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
    torch.manual_seed(0)
    with warnings.catch_warnings():  # a newer tree points bcop.models.create_model elsewhere
        warnings.simplefilter("ignore", DeprecationWarning)
        model = importlib.import_module(f"{package}.models").create_model("bcop-large-mnist")
    perturb_(model)
    return train_step_fn(model, x, y)


def compare(reps: int) -> list[dict]:
    """Each measurement of ``bcop_base`` and ``bcop``, interleaved."""
    rows = []
    for channels, k in LAYER_CONFIGS:
        x = torch.randn(LAYER_BATCH, channels, LAYER_SIZE, LAYER_SIZE)
        calls = {side: _layer_call(side, channels, k, x) for side in ("bcop_base", "bcop")}
        n = reps if channels < 128 else max(reps // 5, 10)
        rows.append({"measurement": f"layer c={channels} k={k}", **interleaved(calls, 10, n)})
        print(f"  {rows[-1]['measurement']} done", flush=True)
    x, y = torch.rand(TRAIN_BATCH, 1, 28, 28), torch.randint(0, 10, (TRAIN_BATCH,))
    calls = {side: _step_call(side, x, y) for side in ("bcop_base", "bcop")}
    step = interleaved(calls, 2, max(reps // 30, 6))
    rows.append({"measurement": "bcop-large-mnist training step", **step})
    return [{"measurement": r["measurement"], "base_ms": r["bcop_base"], "this_ms": r["bcop"],
             "ratio": r["bcop"] / r["bcop_base"]} for r in rows]  # fmt: skip


def markdown(results: dict, tolerance: float) -> str:
    """The comparison as a titled Markdown table."""
    body = [
        [r["measurement"], f"{r['base_ms']:.2f}", f"{r['this_ms']:.2f}", f"{r['ratio']:.3f}",
         "over" if r["ratio"] > tolerance else ""]
        for r in results["rows"]
    ]  # fmt: skip
    title = [
        "## This tree against another checkout",
        f"Base `{results['base']}`, {results['threads']} thread(s), calls interleaved, "
        f"{results['reps']} per side and layer; a ratio over {tolerance:.2f} is marked.",
    ]
    header = "| measurement | base ms | this ms | this / base | |"
    return "\n".join(markdown_table(title, header, "|---|---:|---:|---:|---|", body)).lstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", type=Path, required=True, help="the other checkout's root")
    parser.add_argument("--reps", type=int, default=300, help="timed calls per side (fewer for big layers)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--tolerance", type=float, default=1.10)
    parser.add_argument("--out", default=str(ROOT / "results" / "compare_trees"))
    args = parser.parse_args(argv)
    if not (args.base / "bcop" / "__init__.py").is_file():
        parser.error("--base must name a checkout of this project (a folder with bcop/)")
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        load_base(args.base.resolve(), Path(tmp))
        rows = compare(args.reps)
    results = {"base": str(args.base), "threads": args.threads, "reps": args.reps, "rows": rows}
    text = markdown(results, args.tolerance)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    out.with_suffix(".md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

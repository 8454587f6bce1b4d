"""A live Wasserstein run as the demo's tab runs it: four critics side by side for the tab's
default steps (target: within the tab's default time budget on two CPU cores).

It times :func:`demo.wasserstein_tab.estimate_wasserstein`, the tab's handler (the four MaxMin
critics BCOP, RKO, OSSN, SVCM on the translated pair, batch 64, the tab's estimates on held-out
samples and its figure), and reports the time per step and each critic's final estimate
against the true W1.

Usage::

    python benchmarks/wasserstein_live.py [--steps 200] [--threads 2] [--pair translated] \
        [--out results/wasserstein_live]

writes ``<out>.json`` and ``<out>.md`` and prints the Markdown. Exits with status 1 when the run
takes longer than ``--target`` seconds (pass ``--no-fail`` on a shared machine).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import write_results  # noqa: E402
from demo.wasserstein_tab import (  # noqa: E402
    DEFAULT_CRITICS,
    DEFAULT_SECONDS,
    DEFAULT_STEPS,
    MAX_SECONDS,
    estimate_wasserstein,
)


def measure(pair: str, steps: int, batch_size: int) -> dict:
    """Run the tab's handler to the end; returns the timings and the final estimates."""
    start = time.perf_counter()
    statuses = [
        status
        for _, status in estimate_wasserstein(pair, list(DEFAULT_CRITICS), steps, batch_size, MAX_SECONDS)
    ]
    seconds = time.perf_counter() - start
    last = statuses[-1]
    return {"seconds": seconds, "updates": len(statuses), "status": last, "finished": last.endswith("done")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--pair", default="translated")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--target", type=float, default=DEFAULT_SECONDS, help="seconds allowed for the whole run"
    )
    parser.add_argument("--out", default="results/wasserstein_live")
    parser.add_argument("--no-fail", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    result = measure(args.pair, args.steps, args.batch_size)
    record = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"{args.threads} torch threads, load average {os.getloadavg()[0]:.1f}",
        "critics": list(DEFAULT_CRITICS),
        "pair": args.pair,
        "steps": args.steps,
        "batch_size": args.batch_size,
        **result,
        "ms_per_step_all_critics": 1000 * result["seconds"] / args.steps,
        "target_s": args.target,
    }
    markdown = (
        f"# Live Wasserstein run ({record['date']})\n\n"
        f"{', '.join(DEFAULT_CRITICS)} on `{args.pair}`, {args.steps} steps of batch {args.batch_size} "
        f"+ {args.batch_size}, through the tab's handler, on {record['machine']}:\n\n"
        f"| whole run | per step (all four critics) | updates | target |\n|---|---|---|---|\n"
        f"| {result['seconds']:.1f} s | {record['ms_per_step_all_critics']:.0f} ms | {result['updates']} "
        f"| {args.target:g} s |\n\nLast status: {result['status']}\n"
    )
    write_results(args.out, record, markdown)
    return 0 if args.no_fail or (result["finished"] and result["seconds"] <= args.target) else 1


if __name__ == "__main__":
    sys.exit(main())

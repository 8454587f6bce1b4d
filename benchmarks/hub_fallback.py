"""How soon the app serves when the Hub half-fails: it answers its root (a reachability probe
passes) but every file request hangs, is dropped, or is answered too slowly.

For each fault, ``python app.py`` is started as a subprocess against a loopback Hub
(``tests/fakehub.py`` on 127.0.0.1; no other host is contacted) with the models' owner set, so
the app tries the Hub first. Measured from the process start: the first HTTP 200 on ``/`` (the
page opens on an example certified by three models) and the first ``/certify`` answered through
``gradio_client`` with the embedded checkpoints. Target: both within 20 s.

Usage::

    python benchmarks/hub_fallback.py [--faults hang drop slow] [--out results/hub_fallback]

writes ``<out>.json`` and ``<out>.md`` and prints the table; exits with status 1 when a target
is missed (``--no-fail`` on a shared machine). The Hub deadline is the library's default
(``$BCOP_HUB_TIMEOUT`` when set).
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from gradio_client import Client, handle_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bcop.hub import DEFAULT_TIMEOUT_S, checkpoints_dir  # noqa: E402
from benchmarks.common import (  # noqa: E402
    EXAMPLE,
    HOST,
    MODELS,
    free_port,
    prepare_checkpoints,
    start_app,
    stop_app,
    write_results,
)
from tests.fakehub import FakeHub  # noqa: E402

TARGET_S = 20.0
FAULTS = ("hang", "drop", "slow")
OWNER = "owner"


def measure(fault: str, checkpoints: Path, workdir: Path) -> dict[str, Any]:
    """Seconds from starting the app against a Hub with ``fault`` to its first page and to its
    first ``/certify`` answer, and where the certified models came from."""
    deadline = float(os.environ.get("BCOP_HUB_TIMEOUT") or DEFAULT_TIMEOUT_S)
    server = FakeHub()
    server.fault, server.delay_s = fault, 3 * deadline
    env = {
        "HF_ENDPOINT": server.endpoint,
        "HF_HUB_CACHE": str(workdir / f"hf-cache-{fault}"),
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "BCOP_HUB_OWNER": OWNER,
    }
    start = time.perf_counter()
    process, page_s = start_app(checkpoints, free_port(), timeout=120.0, env=env)
    try:
        url = f"http://{HOST}:{process.args[process.args.index('--port') + 1]}/"
        client = Client(url, verbose=False)
        _, table, _, _ = client.predict(None, handle_file(str(EXAMPLE)), MODELS, api_name="/certify")
        certify_s = time.perf_counter() - start
    finally:
        stop_app(process)
        server.close()
    sources = [row[-1] for row in table["data"]]  # the table's "loaded from" column
    return {"page_s": page_s, "certify_s": certify_s, "sources": sources, "deadline_s": deadline}


def markdown(results: dict[str, Any]) -> str:
    lines = [
        "# The app against a half-broken Hub",
        "",
        f"{results['cpus']} CPUs, load average at start {results['load_average']}; {results['date']}. "
        f"Hub deadline {results['deadline_s']:g} s. Seconds from `python app.py` start.",
        "",
        "| file requests | first page (s) | first /certify (s) | target (s) | met | models certified |",
        "|---|---:|---:|---:|---|---|",
    ]
    for fault, row in results["faults"].items():
        met = "yes" if max(row["page_s"], row["certify_s"]) < TARGET_S else "**no**"
        lines.append(
            f"| {fault} | {row['page_s']:.2f} | {row['certify_s']:.2f} | {TARGET_S:g} | {met} "
            f"| {sum('Hub:' not in s for s in row['sources'])} of {len(row['sources'])} embedded |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--faults", nargs="+", default=list(FAULTS), choices=FAULTS)
    parser.add_argument("--out", default="results/hub_fallback")
    parser.add_argument("--no-fail", action="store_true", help="exit 0 even when a target is missed")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        checkpoints, _ = prepare_checkpoints(checkpoints_dir(), Path(tmp))
        faults = {fault: measure(fault, checkpoints, Path(tmp)) for fault in args.faults}
    results = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
        "load_average": round(os.getloadavg()[0], 2),
        "deadline_s": next(iter(faults.values()))["deadline_s"],
        "target_s": TARGET_S,
        "faults": faults,
    }
    write_results(args.out, results, markdown(results))
    missed = any(max(r["page_s"], r["certify_s"]) >= TARGET_S for r in faults.values())
    return 1 if missed and not args.no_fail else 0


if __name__ == "__main__":
    sys.exit(main())

"""Latency of the Gradio app's actions, as a user on the same machine sees them.

Measured against an app served on 127.0.0.1 only (the script never contacts another host):

1. **Page ready**: ``python app.py`` started as a subprocess, time from process start to the
   first HTTP 200 on ``/`` (target < 15 s).
2. **Certify** one image with three Large models (``/certify`` through gradio_client, target
   < 0.3 s), and the handler alone (no HTTP, no queue).
3. **PGD**, 200 steps of size 0.01 at eps 1.58 on one Large model, on the app's served model
   (target < 3 s); and the whole ``/attack`` endpoint on that model (PGD + minimal-norm search).
4. **Per-layer gradient-norm plot** for three Large models (``/gradient_norms``, target < 0.5 s).

Steady-state figures are medians over ``--repeats`` calls after one warm-up call (models are
loaded and their Lipschitz bounds computed once, as in the app). Models come from
``--checkpoints`` (default: ``$BCOP_CHECKPOINTS`` or ``checkpoints/``); Large models missing
there are replaced by freshly initialised ones in a temporary folder, which take exactly as
long (the JSON lists which were fresh).

Usage::

    python benchmarks/app_latency.py [--repeats 10] [--checkpoints DIR] [--out results/app_latency]

writes ``<out>.json`` and ``<out>.md`` and prints the table. Exits with status 1 if a target is
missed (pass ``--no-fail`` on a shared machine).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from gradio_client import Client, handle_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import app  # noqa: E402
from bcop.attacks import pgd_l2  # noqa: E402
from bcop.preprocess import to_mnist_format  # noqa: E402
from benchmarks.common import (  # noqa: E402
    EXAMPLE,
    HOST,
    MODELS,
    ROOT,
    free_port,
    prepare_checkpoints,
    start_app,
    stop_app,
    write_results,
)
from demo.certify_tab import Actions  # noqa: E402

TARGETS_S = {"page_ready": 15.0, "certify_http": 0.3, "pgd_200": 3.0, "gradient_norms_http": 0.5}


def page_ready(checkpoints: Path) -> float:
    """Seconds from starting ``python app.py`` to an HTTP 200 on ``/``."""
    process, seconds = start_app(checkpoints, free_port(), ["--no-warm"])
    stop_app(process)
    return seconds


def timed(fn: Callable[[], Any], repeats: int) -> dict[str, float]:
    """Median / min / max seconds of ``fn`` over ``repeats`` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times), "n": repeats}


def measure(checkpoints: Path, repeats: int) -> dict[str, dict[str, float]]:
    """Steady-state latencies of the app served in this process."""
    os.environ["BCOP_CHECKPOINTS"] = str(checkpoints)
    os.environ["BCOP_HUB_OWNER"] = ""

    demo = app.launch(host=HOST, port=free_port(), warm=False)
    try:
        client = Client(demo.local_url, verbose=False)
        image = handle_file(str(EXAMPLE))
        one = MODELS[:1]
        served = demo.store.get(one[0])
        x = to_mnist_format(str(EXAMPLE)).unsqueeze(0)
        y = served.model(x).argmax(dim=1)
        handlers = Actions(demo.store)
        return {
            "certify_http": timed(lambda: client.predict(None, image, MODELS, api_name="/certify"), repeats),
            "certify_handler": timed(lambda: handlers.certify(None, str(EXAMPLE), MODELS), repeats),
            "pgd_200": timed(lambda: pgd_l2(served.model, x, y, 1.58, steps=200, step_size=0.01), repeats),
            "attack_http_one_model": timed(
                lambda: client.predict(None, image, one, 1.58, api_name="/attack"), max(1, repeats // 3)
            ),
            "gradient_norms_http": timed(
                lambda: client.predict(None, image, MODELS, api_name="/gradient_norms"), repeats
            ),
        }
    finally:
        demo.close()


DESCRIPTIONS = {
    "page_ready": "`python app.py` start to HTTP 200 on /",
    "certify_http": "/certify, 1 image, 3 Large models (gradio_client round trip)",
    "certify_handler": "certify handler alone, 1 image, 3 Large models",
    "pgd_200": "PGD-L2, 200 steps, 1 image, bcop-large-mnist",
    "attack_http_one_model": "/attack, 1 Large model: PGD 200 + minimal-norm search (9 x 50 steps)",
    "gradient_norms_http": "/gradient_norms, 3 Large models (gradio_client round trip)",
}


def markdown(results: dict[str, Any]) -> str:
    lines = [
        "# App latency",
        "",
        f"{results['machine']['cpus']} CPUs, torch threads {results['machine']['torch_threads']}, "
        f"load average at start {results['machine']['load_average']}; {results['date']}.",
        f"Fresh (untrained) models: {', '.join(results['fresh_models']) or 'none'}.",
        "",
        "| measurement | median (s) | min (s) | max (s) | target (s) | met |",
        "|---|---|---|---|---|---|",
    ]
    for key, row in results["timings"].items():
        target = TARGETS_S.get(key)
        met = "" if target is None else ("yes" if row["median_s"] < target else "**no**")
        lines.append(
            f"| {DESCRIPTIONS[key]} | {row['median_s']:.3f} | {row['min_s']:.3f} | {row['max_s']:.3f} | "
            f"{'' if target is None else target} | {met} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument(
        "--checkpoints", type=Path, default=Path(os.environ.get("BCOP_CHECKPOINTS", ROOT / "checkpoints"))
    )
    parser.add_argument("--out", default=str(ROOT / "results" / "app_latency"))
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the app's default is 1)")
    parser.add_argument("--no-fail", action="store_true", help="exit 0 even if a target is missed")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    workdir = Path(tempfile.mkdtemp(prefix="bcop-app-latency-"))
    try:
        checkpoints, fresh = prepare_checkpoints(args.checkpoints, workdir)
        load = [round(v, 2) for v in os.getloadavg()]
        ready = page_ready(checkpoints)
        timings = {"page_ready": {"median_s": ready, "min_s": ready, "max_s": ready, "n": 1}}
        timings.update(measure(checkpoints, args.repeats))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    results = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "load_average": load,
            "python": platform.python_version(),
            "torch": torch.__version__,
        },
        "models": MODELS,
        "fresh_models": fresh,
        "targets_s": TARGETS_S,
        "timings": timings,
    }
    write_results(args.out, results, markdown(results))
    missed = [k for k, t in TARGETS_S.items() if timings[k]["median_s"] >= t]
    return 1 if missed and not args.no_fail else 0


if __name__ == "__main__":
    sys.exit(main())

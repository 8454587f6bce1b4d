"""Load test: many simultaneous gradio_client users against a locally started app.

Starts ``python app.py`` on 127.0.0.1 (a free port; the script contacts no other host), waits
for the page, then runs ``--clients`` threads, each with its own ``gradio_client.Client``,
sending requests back to back for ``--duration`` seconds. Each request is drawn (seeded) from
a mix like a visitor's: certify the example digit with three Large models (60 %), per-layer
gradient norms (25 %), preprocess only (10 %) and an attack on one model (5 %). Requests still
running at the deadline are allowed to finish.

Reports throughput (completed requests per second), latency percentiles overall and per
endpoint, the errors (target: none) and the server's peak resident memory. Models come from
``--checkpoints`` like ``app_latency.py`` (fresh ones stand in for missing Large models).

Usage::

    python benchmarks/load_test.py [--clients 20] [--duration 60] [--out results/load_test]

writes ``<out>.json`` and ``<out>.md`` and prints the table; exits with status 1 on any error.
"""

from __future__ import annotations

import argparse
import datetime
import os
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gradio_client import Client, handle_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common  # noqa: E402

MIX = (("certify", 0.60), ("gradient_norms", 0.25), ("preprocess", 0.10), ("attack", 0.05))


@dataclass
class Sample:
    endpoint: str
    seconds: float
    error: str | None


def peak_memory_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def request(client: Client, endpoint: str) -> None:
    image = handle_file(str(common.EXAMPLE))
    if endpoint == "certify":
        client.predict(None, image, common.MODELS, api_name="/certify")
    elif endpoint == "gradient_norms":
        client.predict(None, image, common.MODELS, api_name="/gradient_norms")
    elif endpoint == "preprocess":
        client.predict(None, image, api_name="/preprocess")
    else:
        client.predict(None, image, common.MODELS[:1], 1.58, api_name="/attack")


def user(url: str, deadline: float, seed: int, samples: list[Sample], lock: threading.Lock) -> None:
    rng = random.Random(seed)
    names, weights = zip(*MIX, strict=True)
    try:
        client = Client(url, verbose=False)
    except Exception as err:
        with lock:
            samples.append(Sample("connect", 0.0, f"{type(err).__name__}: {err}"))
        return
    while time.perf_counter() < deadline:
        endpoint = rng.choices(names, weights)[0]
        start = time.perf_counter()
        error = None
        try:
            request(client, endpoint)
        except Exception as err:
            error = f"{type(err).__name__}: {err}"
        with lock:
            samples.append(Sample(endpoint, time.perf_counter() - start, error))


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summarise(samples: list[Sample], wall: float) -> dict[str, Any]:
    def stats(group: list[Sample]) -> dict[str, Any]:
        ok = [s.seconds for s in group if s.error is None]
        return {
            "requests": len(group),
            "errors": sum(s.error is not None for s in group),
            "throughput_per_s": len(ok) / wall,
            "p50_s": statistics.median(ok) if ok else None,
            "p95_s": percentile(ok, 0.95) if ok else None,
            "max_s": max(ok) if ok else None,
        }

    endpoints = sorted({s.endpoint for s in samples})
    return {
        "overall": stats(samples),
        "per_endpoint": {e: stats([s for s in samples if s.endpoint == e]) for e in endpoints},
        "error_messages": sorted({s.error for s in samples if s.error})[:20],
    }


def markdown(results: dict[str, Any]) -> str:
    def row(name: str, s: dict[str, Any]) -> str:
        def f(v: float | None) -> str:
            return "—" if v is None else f"{v:.3f}"

        return (
            f"| {name} | {s['requests']} | {s['errors']} | {s['throughput_per_s']:.2f} | "
            f"{f(s['p50_s'])} | {f(s['p95_s'])} | {f(s['max_s'])} |"
        )

    summary = results["summary"]
    lines = [
        "# Load test",
        "",
        f"{results['clients']} concurrent gradio_client users for {results['duration_s']} s "
        f"(wall {results['wall_s']:.1f} s) against `python app.py` on {common.HOST}; "
        f"{results['machine']['cpus']} CPUs, load average at start {results['machine']['load_average']}; "
        f"server peak memory {results['server_peak_memory_mb'] or 0:.0f} MB; {results['date']}.",
        "",
        "| endpoint | requests | errors | throughput (/s) | p50 (s) | p95 (s) | max (s) |",
        "|---|---|---|---|---|---|---|",
        row("**all**", summary["overall"]),
        *(row(name, s) for name, s in summary["per_endpoint"].items()),
    ]
    if summary["error_messages"]:
        lines += ["", "Errors:", *(f"- `{m}`" for m in summary["error_messages"])]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of sending requests")
    parser.add_argument(
        "--checkpoints",
        type=Path,
        default=Path(os.environ.get("BCOP_CHECKPOINTS", common.ROOT / "checkpoints")),
    )
    parser.add_argument("--out", default=str(common.ROOT / "results" / "load_test"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="bcop-load-test-"))
    port = common.free_port()
    load = [round(v, 2) for v in os.getloadavg()]
    process = None
    try:
        checkpoints, fresh = common.prepare_checkpoints(args.checkpoints, workdir)
        process, _ = common.start_app(checkpoints, port)
        url = f"http://{common.HOST}:{port}/"
        samples: list[Sample] = []
        lock = threading.Lock()
        start = time.perf_counter()
        deadline = start + args.duration
        threads = [
            threading.Thread(target=user, args=(url, deadline, args.seed + i, samples, lock), daemon=True)
            for i in range(args.clients)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=args.duration + 300)
        wall = time.perf_counter() - start
        memory = peak_memory_mb(process.pid)
    finally:
        if process is not None:
            common.stop_app(process)
        shutil.rmtree(workdir, ignore_errors=True)
    results = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "load_average": load},
        "clients": args.clients,
        "duration_s": args.duration,
        "wall_s": wall,
        "mix": dict(MIX),
        "models": common.MODELS,
        "fresh_models": fresh,
        "server_peak_memory_mb": memory,
        "summary": summarise(samples, wall),
    }
    common.write_results(args.out, results, markdown(results))
    return 1 if results["summary"]["overall"]["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())

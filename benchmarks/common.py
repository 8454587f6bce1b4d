"""What the benchmarks (and the app's tests) share: a free port, the models and the example
they use, a checkpoints folder, starting ``python app.py``, timing a call and writing a results
file. Nothing here imports ``bcop`` at module level: ``compare_trees.py`` times another
checkout's library with it."""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
MODELS = ["bcop-large-mnist", "rko-large-mnist", "plain-large-mnist"]
EXAMPLE = ROOT / "examples" / "digit_7_0.png"


def free_port(host: str = HOST) -> int:
    """A TCP port nobody listens on now (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def prepare_checkpoints(source: Path, workdir: Path, models: list[str] = MODELS) -> tuple[Path, list[str]]:
    """A folder with every model of ``models``: links to ``source`` where present, fresh
    (untrained, as fast) ones else. Returns the folder and the names of the fresh models."""
    import torch

    from bcop import create_model
    from bcop.hub import save_model

    folder = workdir / "checkpoints"
    folder.mkdir()
    fresh = []
    for name in models:
        if (source / name / "config.json").is_file():
            (folder / name).symlink_to((source / name).resolve())
        else:
            torch.manual_seed(0)
            save_model(create_model(name), folder / name)
            fresh.append(name)
    return folder, fresh


def start_app(
    checkpoints: Path,
    port: int,
    extra: list[str] = (),
    timeout: float = 120.0,
    env: dict[str, str] | None = None,
) -> tuple[subprocess.Popen, float]:
    """Start ``python app.py`` on HOST:port with the embedded ``checkpoints`` (and no Hub unless
    ``env`` names an owner: it is added to the environment); returns the process and the seconds
    until it answered HTTP 200 on ``/``."""
    env = {
        **os.environ,
        "BCOP_CHECKPOINTS": str(checkpoints),
        "BCOP_HUB_OWNER": "",
        "GRADIO_ANALYTICS_ENABLED": "False",
        **(env or {}),
    }
    start = time.perf_counter()
    command = [sys.executable, str(ROOT / "app.py"), "--host", HOST, "--port", str(port), *extra]
    process = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    while time.perf_counter() - start < timeout:
        try:
            with urllib.request.urlopen(f"http://{HOST}:{port}/", timeout=2) as response:
                if response.status == 200:
                    return process, time.perf_counter() - start
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        if process.poll() is not None:
            raise RuntimeError(f"app.py exited with status {process.returncode} before serving")
        time.sleep(0.1)
    process.terminate()
    raise TimeoutError(f"app.py did not serve / within {timeout} s")


def stop_app(process: subprocess.Popen) -> None:
    process.terminate()
    process.wait(timeout=30)


def write_results(out: str | Path, results: dict[str, Any], table: str) -> None:
    """Write ``<out>.json`` (for machines) and ``<out>.md`` (for people), and print the table."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    out.with_suffix(".md").write_text(table)
    print(table)


def markdown_table(title: list[str], header: str, separator: str, rows: list[list[str]]) -> list[str]:
    """A report section: a blank line, ``title`` lines (the heading and any text under it), a
    blank line, then a Markdown table of ``header``, ``separator`` and one line per row of
    formatted cells."""
    return ["", *title, "", header, separator, *("| " + " | ".join(cells) + " |" for cells in rows)]


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

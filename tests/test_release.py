"""The package index release (``docs/release.md``): ``python -m build`` gives a wheel and an sdist
that pass ``twine check --strict``, whose page is not the Space's, whose sdist holds no tests it
cannot run, and which upload to a package index (pypiserver on 127.0.0.1) and download again."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tarfile
import time
import urllib.request
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

import bcop
from benchmarks.common import free_port

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
COPY_IGNORED = (
    ".git",
    ".venv",
    "__pycache__",
    "checkpoints",
    "build",
    "*.egg-info",
    "runs",
    "results",
    "data",
)
SERVER_GUARD_S = 60.0


@pytest.fixture(scope="module")
def dists(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The wheel and the sdist, built (offline, no isolation) from a copy of the checkout."""
    tmp = tmp_path_factory.mktemp("release")
    source = shutil.copytree(ROOT, tmp / "source", ignore=shutil.ignore_patterns(*COPY_IGNORED))
    command = [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(tmp / "dist"), str(source)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    version = bcop.__version__
    return {
        "wheel": tmp / "dist" / f"bcop-{version}-py3-none-any.whl",
        "sdist": tmp / "dist" / f"bcop-{version}.tar.gz",
    }


def _metadata(wheel: Path) -> tuple[dict[str, list[str]], str]:
    """The wheel's METADATA headers (every value of each) and its long description."""
    with zipfile.ZipFile(wheel) as archive:
        text = archive.read(f"bcop-{bcop.__version__}.dist-info/METADATA").decode()
    message = Parser().parsestr(text)
    headers: dict[str, list[str]] = {}
    for key, value in message.items():
        headers.setdefault(key, []).append(value)
    return headers, message.get_payload()


def test_the_wheel_and_the_sdist_pass_twine_check_strict(dists: dict[str, Path]) -> None:
    result = subprocess.run(
        [str(BIN / "twine"), "check", "--strict", *map(str, dists.values())],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("PASSED") == 2


def test_the_package_index_page_is_not_the_spaces_page_and_links_absolutely(dists: dict[str, Path]) -> None:
    headers, description = _metadata(dists["wheel"])
    assert description.lstrip().startswith("# bcop"), "not the Space's YAML header"
    assert "sdk_version" not in description and "preload_from_hub" not in description
    links = re.findall(r"\]\(([^)]+)\)", description)
    assert links and all(link.startswith("https://") for link in links), links
    assert headers["Description-Content-Type"] == ["text/markdown"]
    assert headers["License-Expression"] == ["MIT"]
    assert headers["Author"] and len(headers["Classifier"]) >= 5
    assert {url.split(",")[0] for url in headers["Project-URL"]} >= {"Homepage", "Source", "Paper"}


def test_the_sdist_holds_the_library_and_no_tests_it_cannot_run(dists: dict[str, Path]) -> None:
    with tarfile.open(dists["sdist"]) as archive:
        names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    assert {"pyproject.toml", "LICENSE", "docs/pypi.md", "bcop/hub.py", "bcop/layers/conv.py"} <= names
    assert not [n for n in names if n.startswith(("tests/", "benchmarks/", "checkpoints/", "demo/"))]


def _wait_for_index(url: str, server: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + SERVER_GUARD_S
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            assert server.poll() is None, "pypi-server exited"
            assert time.monotonic() < deadline, f"no package index at {url} after {SERVER_GUARD_S} s"
            time.sleep(0.2)


def test_the_release_uploads_to_a_package_index_and_downloads_unchanged(
    dists: dict[str, Path], tmp_path: Path
) -> None:
    (tmp_path / "packages").mkdir()
    port = free_port()
    command = [str(BIN / "pypi-server"), "run", "-i", "127.0.0.1", "-p", str(port), "-a", ".", "-P", "."]
    server = subprocess.Popen(
        [*command, str(tmp_path / "packages")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        index = f"http://127.0.0.1:{port}"
        _wait_for_index(f"{index}/simple/", server)
        upload = [str(BIN / "twine"), "upload", "--non-interactive", "--repository-url", f"{index}/"]
        result = subprocess.run(
            [*upload, "-u", "test", "-p", "test", *map(str, dists.values())],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        download = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(tmp_path / "got")]
        result = subprocess.run(
            [*download, "--index-url", f"{index}/simple/", f"bcop=={bcop.__version__}"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr[-3000:]
    finally:
        server.terminate()
        server.wait(timeout=30)
    wheel = tmp_path / "got" / dists["wheel"].name
    assert wheel.read_bytes() == dists["wheel"].read_bytes()

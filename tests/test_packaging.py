"""The files that ship the project: the Space header, the dependency lists, LICENSE,
.gitattributes and the CI script agree with the code and with each other."""

from __future__ import annotations

import ast
import json
import re
import shutil
import subprocess
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
from huggingface_hub import SpaceCard
from packaging.requirements import Requirement

from bcop import list_models
from bcop.hub import GENERATOR_KIND, HUB_OWNER

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
DEV_TOOLS = {
    "pytest",
    "ruff",
    "gradio-client",
    "playwright",
    "build",
    "twine",
    "pypiserver",
    "onnx",
    "onnxruntime",
    "onnxscript",
}
# The LFS patterns of the .gitattributes the Hub gives a new repo (which publishing replaces).
HUB_DEFAULT_LFS = (
    "*.7z *.arrow *.bin *.bz2 *.ckpt *.ftz *.gz *.h5 *.joblib *.lfs.* *.mlmodel *.model *.msgpack "
    "*.npy *.npz *.onnx *.ot *.parquet *.pb *.pickle *.pkl *.pt *.pth *.rar *.safetensors "
    "saved_model/**/* *.tar.* *.tar *.tflite *.tgz *.wasm *.xz *.zip *.zst *tfevents*"
).split()


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _pins(path: Path) -> dict[str, str]:
    """``{distribution: version}`` of a requirements file's own lines (not its ``-r`` includes)."""
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line and not line.startswith("-"):
            requirement = Requirement(line)
            pins[_norm(requirement.name)] = str(requirement.specifier).removeprefix("==")
    return pins


def _declared(*extras: str) -> dict[str, Requirement]:
    lines = [*PYPROJECT["dependencies"], *(r for e in extras for r in PYPROJECT["optional-dependencies"][e])]
    requirements = [Requirement(line) for line in lines]
    return {_norm(r.name): r for r in requirements if _norm(r.name) != "bcop"}


def _imported_distributions(*paths: Path) -> set[str]:
    """The third-party distributions whose modules the Python files under ``paths`` import."""
    owners = packages_distributions()
    modules = set()
    for path in paths:
        for file in [path] if path.is_file() else path.rglob("*.py"):
            for node in ast.walk(ast.parse(file.read_text())):
                if isinstance(node, ast.Import):
                    modules.update(alias.name.split(".")[0] for alias in node.names)
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    modules.add(node.module.split(".")[0])
    local = {"bcop", "demo", "tests", "app", "fakehub"}
    third_party = modules - set(sys.stdlib_module_names) - local
    return {_norm(owners[m][0]) for m in third_party if m in owners}


def test_requirements_txt_is_the_runtime_and_requirements_dev_txt_adds_the_tools() -> None:
    runtime = _pins(ROOT / "requirements.txt")
    assert set(runtime) == set(_declared("app"))
    assert not DEV_TOOLS & set(runtime)
    dev_lines = (ROOT / "requirements-dev.txt").read_text().splitlines()
    assert "-r requirements.txt" in dev_lines
    assert set(_pins(ROOT / "requirements-dev.txt")) == DEV_TOOLS == set(_declared("dev")) - set(runtime)


def test_the_pinned_versions_satisfy_pyproject() -> None:
    pins = {**_pins(ROOT / "requirements.txt"), **_pins(ROOT / "requirements-dev.txt")}
    for name, requirement in _declared("app", "dev").items():
        assert requirement.specifier.contains(pins[name]), f"{name}=={pins[name]} against {requirement}"


def test_what_the_code_imports_is_declared_where_it_is_needed() -> None:
    library = set(_declared())
    app = set(_declared("app"))
    dev = set(_declared("app", "dev"))
    assert _imported_distributions(ROOT / "bcop") <= library
    assert _imported_distributions(*[ROOT / p for p in ("app.py", "demo") if (ROOT / p).exists()]) <= app
    # orthogonium: an optional reference in benchmarks/layers.py (installed with --no-deps; the
    # benchmark says when it is missing), deliberately not a declared dependency
    optional = {"pyyaml", "packaging", "orthogonium"}
    assert _imported_distributions(ROOT / "tests", ROOT / "benchmarks") <= dev | optional


def test_the_space_header_is_what_the_hub_needs() -> None:
    card = SpaceCard.load(ROOT / "README.md")
    data = card.data
    generators = sorted(
        p.parent.name
        for p in (ROOT / "checkpoints").glob("*/config.json")
        if json.loads(p.read_text()).get("kind") == GENERATOR_KIND
    )
    assert generators == ["wgan-gp-mnist"]
    repos = [f"{HUB_OWNER}/{name}" for name in [*list_models(pretrained=True), *generators]]
    assert data.python_version == "3.11"
    assert data.sdk == "gradio" and data.sdk_version == _pins(ROOT / "requirements.txt")["gradio"]
    assert (ROOT / data.app_file).is_file()
    assert 0 < len(data.short_description) <= 60
    assert data.tags
    assert data.models == repos
    assert [entry.split()[0] for entry in data.preload_from_hub] == repos


def test_the_license_is_mit_everywhere() -> None:
    assert SpaceCard.load(ROOT / "README.md").data.license == "mit"
    assert PYPROJECT["license"] == "MIT"
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")


@pytest.mark.skipif(
    shutil.which("git") is None or not (ROOT / ".git").exists(), reason="needs a git checkout"
)
def test_every_tracked_binary_file_goes_through_lfs() -> None:
    tracked = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout.split(b"\0")
    binary = [
        name.decode() for name in tracked if name and b"\0" in (ROOT / name.decode()).read_bytes()[:8000]
    ]
    assert binary, "the checkpoints and the example images are binary"
    attributes = subprocess.run(
        ["git", "check-attr", "filter", "--", *binary], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert [line for line in attributes if not line.endswith(": filter: lfs")] == []


def test_gitattributes_covers_every_pattern_of_the_hubs_default_file() -> None:
    rules = {
        line.split()[0]
        for line in (ROOT / ".gitattributes").read_text().splitlines()
        if line and not line.startswith("#") and "filter=lfs" in line.split()
    }
    assert [pattern for pattern in HUB_DEFAULT_LFS if pattern not in rules] == []


def test_ci_installs_the_dev_set_then_lints_and_tests() -> None:
    script = (ROOT / ".ci" / "run").read_text()
    assert "pip install -q -r requirements-dev.txt" in script
    assert "ruff check ." in script and "python -m pytest" in script

"""The library's shape: imports point down one order (STYLE.md's picture), with no circle, even
through an import inside a function; and every function is short enough to read at once.

The import and length checks read the source (``ast``); the layer signatures are inspected.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import warnings
from pathlib import Path

import pytest

from bcop.layers.conv import LipschitzConv2d

PACKAGE = Path(__file__).resolve().parent.parent / "bcop"

# The library bottom first: a module may import only modules of lower tiers. Within a package's
# own tier (``bcop.layers.*``, ``bcop.experiments.*``) its modules may import each other, without
# a circle. A new module goes into the tier its imports allow, and the picture in STYLE.md.
ORDER: list[tuple[str, ...]] = [
    ("bcop.deprecation", "bcop.cli"),  # helpers that know nothing of networks
    ("bcop.orthogonal", "bcop.kernels"),  # pure tensor maths
    ("bcop.layers.*",),  # thin nn.Modules over the maths
    ("bcop.preprocess",),  # a user's image to MNIST's format
    ("bcop.data",),  # datasets
    ("bcop.models",),  # the paper's networks and the registry of names
    ("bcop.export", "bcop.certify"),  # what a network is and guarantees
    ("bcop.attacks", "bcop.gradnorm", "bcop.spectra"),  # what the demo measures on a network
    ("bcop.report",),
    ("bcop.hardware",),  # where a run computes
    ("bcop.hub",),  # model folders and the Hub
    ("bcop.results",),
    ("bcop.cards",),
    ("bcop.publish",),
    ("bcop.factory",),  # create_model, list_models: above the networks and the Hub
    ("bcop.losses", "bcop.checkpoint"),  # training pieces
    ("bcop.train",),
    ("bcop.evaluate", "bcop.live"),
    ("bcop.gan",),
    ("bcop.wasserstein",),
    ("bcop.experiments.*",),  # runs that write docs/ tables
    ("bcop",),  # the package's face: what ``import bcop`` offers
]
PACKAGE_TIERS = {"bcop.layers.*", "bcop.experiments.*"}
MAX_FUNCTION_LINES = 60


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The bcop module an imported dotted name lives in (``bcop.layers.BCOPConv2d`` -> ``bcop.layers``)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def _imports(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Every other bcop module that ``module`` (its source at ``path``) imports, at the top or
    inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        found |= {_resolve(name, modules) for name in names if name.split(".")[0] == "bcop"} - {None}
    return found - {module}


def _tier(module: str) -> tuple[int, str]:
    for index, tier in enumerate(ORDER):
        for entry in tier:
            if module == entry or (entry.endswith(".*") and module.startswith(entry[:-1])):
                return index, entry
    if module == "bcop.layers" or module == "bcop.experiments":  # a package's own __init__
        return _tier(module + ".x")
    raise AssertionError(f"{module} has no place in ORDER: add it to the tier its imports allow")


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def test_every_import_in_bcop_points_down_the_order() -> None:
    upward = []
    for module, targets in _graph().items():
        (own, entry) = _tier(module)
        for target in sorted(targets):
            (other, _) = _tier(target)
            if other > own or (other == own and entry not in PACKAGE_TIERS):
                upward.append(f"{module} imports {target}")
    assert not upward, "imports that point up (or sideways) the order:\n" + "\n".join(upward)


def test_no_import_circle_in_bcop() -> None:
    graph = _graph()
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> None:
        if module in path:
            circle = path[path.index(module) :] + [module]
            pytest.fail("import circle: " + " -> ".join(circle))
        if module in done:
            return
        for target in sorted(graph[module]):
            visit(target, [*path, module])
        done.add(module)

    for module in sorted(graph):
        visit(module, [])


def test_no_function_in_bcop_is_longer_than_60_lines() -> None:
    long = []
    for name, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{name}.{node.name}: {lines} lines")
    assert not long, "functions to split:\n" + "\n".join(long)


def test_the_order_check_sees_an_import_inside_a_function(tmp_path: Path) -> None:
    source = tmp_path / "models.py"
    source.write_text("def f():\n    from bcop.hub import load_model\n    import bcop.factory\n")
    modules = {"bcop.models": source, "bcop.hub": source, "bcop.factory": source}
    assert _imports("bcop.models", source, modules) == {"bcop.hub", "bcop.factory"}


def _conv_classes() -> list[type]:
    found, todo = [], [LipschitzConv2d]
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo.extend(cls.__subclasses__())
    assert {"BCOPConv2d", "RKOConv2d", "OSSNConv2d", "SVCMConv2d"} <= {c.__name__ for c in found}
    return [c for c in found if c.__module__.startswith("bcop.layers")]


@pytest.mark.parametrize("cls", _conv_classes(), ids=lambda cls: cls.__name__)
def test_every_convolution_takes_its_settings_as_explicit_keyword_arguments(cls: type) -> None:
    """``Conv(in_channels, out_channels, kernel_size, *, bias=True, padding_mode="circular", ...)``:
    no ``**kwargs``, so help() and editors show every setting with its default."""
    params = list(inspect.signature(cls).parameters.values())
    assert [p.name for p in params[:3]] == ["in_channels", "out_channels", "kernel_size"]
    assert all(p.kind is p.POSITIONAL_OR_KEYWORD for p in params[:3])
    assert all(p.kind is p.KEYWORD_ONLY for p in params[3:]), [str(p) for p in params]
    named = {p.name: p.default for p in params[3:]}
    assert named["bias"] is True and named["padding_mode"] == "circular"


@pytest.mark.parametrize("module", sorted(_modules()), ids=str)
def test_every_public_name_exists_without_a_deprecation_warning(module: str) -> None:
    """``__all__`` lists only current names: none missing, none served by a deprecated alias."""
    mod = importlib.import_module(module)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        missing = [name for name in getattr(mod, "__all__", []) if not hasattr(mod, name)]
    assert not missing, f"{module}.__all__ names what it does not define: {missing}"

"""The Wasserstein table experiment (bcop.experiments.wasserstein_table): the page in docs/ is
what its results build, results files say what their names say, and a run continues where it
stopped and refuses other settings."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from bcop.experiments.wasserstein_table import (
    DISCUSSION_HEADING,
    TableConfig,
    main,
    render_markdown,
    run_table,
)
from bcop.models import SUCCESSORS

pytestmark = pytest.mark.usefixtures("one_thread")

DOCS = Path(__file__).resolve().parent.parent / "docs"
RESULTS_FILES = sorted(DOCS.glob("wasserstein_results*.json"))


def test_the_wasserstein_page_is_what_its_results_file_builds() -> None:
    results = json.loads((DOCS / "wasserstein_results.json").read_text())
    page = (DOCS / "wasserstein.md").read_text()
    assert page == render_markdown(results, page.split(DISCUSSION_HEADING, 1)[1])


@pytest.mark.parametrize("path", RESULTS_FILES, ids=lambda p: p.name)
def test_a_results_file_holds_the_runs_its_name_and_commands_say(path: Path) -> None:
    """``..._N_steps.json`` holds N-step runs; every recorded command is the current one and
    asks for the file's steps; every entry has one run per seed of the config."""
    results = json.loads(path.read_text())
    config = results["config"]
    named = re.fullmatch(r"wasserstein_results(?:_(\d+)_steps)?\.json", path.name)
    assert named, f"{path.name}: name results files wasserstein_results[_N_steps].json"
    assert config["steps"] == int(named.group(1) or TableConfig().steps)
    commands = results.get("commands", [results.get("command")])
    for command in commands:
        assert command.startswith("python -m bcop.experiments.wasserstein_table")
        steps = re.search(r"--steps (\d+)", command)
        assert (int(steps.group(1)) if steps else TableConfig().steps) == config["steps"], command
    for entry in results["entries"]:
        assert entry["critic"] in config["critics"] and entry["pair"] in config["pairs"]
        assert [run["seed"] for run in entry["runs"]] == config["seeds"]


def test_a_stopped_table_continues_and_refuses_other_settings(tmp_path: Path) -> None:
    cfg = TableConfig(
        critics=("bcop-small-mnist",),
        pairs=("gaussians",),
        steps=2,
        lrs=(1e-3,),
        seeds=(0,),
        n_select=8,
        n_report=8,
    )
    results_path, doc = tmp_path / "results.json", tmp_path / "page.md"
    first = run_table(cfg, results_path, doc, "test")
    assert [(e["critic"], e["pair"]) for e in first["entries"]] == [("bcop-small-mnist", "gaussians")]
    doc.write_text(doc.read_text().replace("(none yet)", "kept"))
    wider = TableConfig(**{**cfg.__dict__, "critics": ("bcop-small-mnist", "rko-small-mnist")})
    second = run_table(wider, results_path, doc, "test")
    assert second["entries"][0] == first["entries"][0], "the finished entry is not run again"
    assert [e["critic"] for e in second["entries"]] == ["bcop-small-mnist", "rko-small-mnist"]
    assert doc.read_text().rstrip().endswith("kept"), "the discussion survives a rewrite"
    with pytest.raises(ValueError, match="other settings"):
        run_table(TableConfig(**{**cfg.__dict__, "steps": 3}), results_path, None, "test")


def test_the_command_refuses_an_unknown_critic_before_training(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ValueError, match="unknown model name 'bcop-tiny-mnist'"):
        main(["--critics", "bcop-tiny-mnist", "--results", "/nonexistent/r.json", "--doc", ""])


def test_the_table_takes_the_successors_as_critics_and_keeps_the_papers_claim_to_its_own(
    tmp_path: Path,
) -> None:
    critics = ("bcop-small-mnist", *(f"{family}-small-mnist" for family in SUCCESSORS))
    cfg = TableConfig(
        critics=critics, pairs=("gaussians",), steps=2, lrs=(1e-3,), seeds=(0,), n_select=8, n_report=8
    )
    results = run_table(cfg, tmp_path / "results.json", tmp_path / "page.md", "test")
    assert [e["critic"] for e in results["entries"]] == list(critics)
    assert all(0 < run["lipschitz"] <= 1 + 1e-4 for e in results["entries"] for run in e["runs"])
    page = (tmp_path / "page.md").read_text()
    assert all(name in page for name in critics)
    assert "BCOP highest of the paper's MaxMin critics: yes" in page  # the only paper critic here

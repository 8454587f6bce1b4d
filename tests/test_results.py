"""Tests for bcop.results: the eval_results.json schema, upgrading files written before it, and
reading and writing results.

``tests/data/schema1/`` holds copies of results files as bcop wrote them before schema versions.
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from bcop.hub import checkpoints_dir
from bcop.results import (
    PAPER_RESULTS,
    RESULTS_SCHEMA_VERSION,
    UNRECORDED_HARDWARE,
    collect_results,
    hardware_segments,
    read_results,
    upgrade_results,
    write_results,
)

SCHEMA1 = Path(__file__).parent / "data" / "schema1"
CURVES = ("certified", "pgd", "pgd_paper_attack", "fgm")


def _schema1(name: str = "bcop-large-mnist") -> dict[str, Any]:
    return json.loads((SCHEMA1 / name / "eval_results.json").read_text())


def _oldest(results: dict[str, Any]) -> dict[str, Any]:
    """A schema-1 file as the earliest releases wrote it: no paper's attack, attack loss, PGD
    sample or evaluation hardware; a training record without selection or hardware."""
    old = copy.deepcopy(results)
    for key in ("pgd_paper_attack", "attack_loss", "pgd_sample", "eval_hardware"):
        old.pop(key, None)
    for key in ("selection", "hardware"):
        old["training"].pop(key, None)
    return old


def test_schema_1_results_are_upgraded_to_percent_with_the_schema_version() -> None:
    """Every accuracy times 100 (exactly the two-decimal figure for n = 10000), nothing else
    changed, the input untouched."""
    old = _schema1()
    before = copy.deepcopy(old)
    new = upgrade_results(old)
    assert old == before and "schema_version" not in old
    assert new["schema_version"] == RESULTS_SCHEMA_VERSION == 2
    assert new["clean"] == 98.62 and new["certified"]["1.58"] == 57.42 and new["certified"]["3"] == 0.03
    for key in CURVES:
        assert new[key] == {eps: round(100 * v, 10) for eps, v in old[key].items()}
        assert all(v == round(v, 2) for v in new[key].values())  # no float noise
    same = {k for k in old if k not in ("clean", *CURVES)}
    assert {k: new[k] for k in same} == {k: old[k] for k in same}
    assert new["paper"] == PAPER_RESULTS["bcop-large-mnist"]  # the paper's were percent already


def test_upgrading_schema_2_results_changes_nothing() -> None:
    new = upgrade_results(_schema1())
    assert upgrade_results(new) == new


def test_the_oldest_schema_1_layout_gets_what_later_files_record() -> None:
    """Missing fields become what was true when they were missing: the margin loss, the first
    pgd_n images, no paper's attack or hardware; the selection sentence; the 2-core machine."""
    new = upgrade_results(_oldest(_schema1("plain-large-mnist")))
    assert new["pgd_paper_attack"] is None and new["eval_hardware"] is None
    assert new["attack_loss"] == "margin" and new["pgd_sample"] == "first"
    training = new["training"]
    assert training["selection"].endswith("the epoch with the best validation score on the other 10,000: 4")
    assert training["hardware"] == [
        {
            "hardware": UNRECORDED_HARDWARE,
            "epochs": 4,
            "wall_hours": training["wall_hours"],
            "cpu_hours": training["cpu_hours"],
        }
    ]


def test_schema_1_segments_labelled_with_the_old_unrecorded_hardware_label_are_relabelled() -> None:
    old = _schema1()
    old["training"]["hardware"][0]["hardware"] = "a 2-core CPU machine"
    assert upgrade_results(old)["training"]["hardware"][0]["hardware"] == UNRECORDED_HARDWARE


@pytest.mark.parametrize(
    ("results", "message"),
    [
        ([1, 2], "must be a JSON object, got list"),
        ({"schema_version": 3}, "schema_version 3 was written by a newer bcop: upgrade bcop"),
        ({"schema_version": "2"}, "schema_version '2' is not a known results schema"),
        ({"model": "bcop-large-mnist", "clean": 0.9}, "lack dataset, n_test, eps, lipschitz"),
    ],
)
def test_invalid_results_raise_a_value_error_saying_what_is_wrong(results: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        upgrade_results(results)


def test_read_results_upgrades_a_schema_1_file_and_is_none_without_one(tmp_path: Path) -> None:
    shutil.copy(SCHEMA1 / "bcop-large-mnist" / "eval_results.json", tmp_path / "eval_results.json")
    assert read_results(tmp_path) == upgrade_results(_schema1())
    assert read_results(tmp_path / "missing") is None


def test_read_results_names_the_file_when_it_is_not_valid(tmp_path: Path) -> None:
    (tmp_path / "eval_results.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"eval_results.json is not valid evaluation results .*evaluate"):
        read_results(tmp_path)


def test_write_results_upgrades_a_schema_1_dict(tmp_path: Path) -> None:
    """A schema-1 dict (fractions, what evaluate() returned before 0.2.0) is written as schema 2
    and reads back equal."""
    evaluated = {k: v for k, v in _schema1().items() if k != "training"}
    written = write_results(tmp_path / "out", evaluated)
    stored = json.loads((tmp_path / "out" / "eval_results.json").read_text())
    assert stored == written == read_results(tmp_path / "out")
    assert stored["schema_version"] == 2 and stored["clean"] == 98.62


def test_every_shipped_results_file_is_schema_2_in_percent() -> None:
    """What the shipped files hold is already current (``python -m bcop.cards`` was run), and
    every accuracy is a percentage: the curve starts at the clean accuracy and falls."""
    folders = sorted(p.parent for p in checkpoints_dir().glob("*/eval_results.json"))
    assert len(folders) >= 6
    for folder in folders:
        stored = json.loads((folder / "eval_results.json").read_text())
        assert stored["schema_version"] == RESULTS_SCHEMA_VERSION and upgrade_results(stored) == stored
        curve = list(stored["certified"].values())
        assert curve[0] == stored["clean"] and curve == sorted(curve, reverse=True)
        assert stored["clean"] > 50 and all(0 <= v <= 100 for key in CURVES for v in stored[key].values())


def test_collect_results_puts_the_papers_models_first_then_the_registrys_order(tmp_path: Path) -> None:
    names = ["aol-large-mnist", "plain-large-mnist", "bcop-large-mnist", "aoc-large-mnist", "rko-small-mnist"]
    for name in names:
        write_results(tmp_path / name, {**_schema1(), "model": name})
    assert [r["model"] for r in collect_results(tmp_path)] == [
        "bcop-large-mnist", "plain-large-mnist", "aol-large-mnist", "aoc-large-mnist", "rko-small-mnist"
    ]  # fmt: skip
    with pytest.raises(ValueError, match="no \\*/eval_results.json under"):
        collect_results(tmp_path / "empty")


def test_hardware_segments_group_consecutive_epochs_and_label_unrecorded_ones() -> None:
    history = [
        {"epoch": 1, "wall_seconds": 360.0, "cpu_seconds": 400.0, "hardware": "NVIDIA H200"},
        {"epoch": 2, "wall_seconds": 720.0, "cpu_seconds": 800.0, "hardware": "NVIDIA H200"},
        {"epoch": 3, "wall_seconds": 4320.0, "cpu_seconds": 8000.0, "hardware": "CPU (2 threads)"},
        {"epoch": 4, "wall_seconds": 7920.0, "cpu_seconds": 15200.0},
    ]
    segments = hardware_segments(history)
    assert [(s["hardware"], s["epochs"]) for s in segments] == [
        ("NVIDIA H200", 2),
        ("CPU (2 threads)", 1),
        (UNRECORDED_HARDWARE, 1),
    ]
    assert [round(s["wall_hours"], 3) for s in segments] == [0.2, 1.0, 1.0]
    assert [round(s["cpu_hours"], 3) for s in segments] == [0.222, 2.0, 2.0]

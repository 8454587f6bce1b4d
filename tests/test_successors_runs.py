"""The commands that train and export the successors' models (bcop.experiments.successors), on
tiny runs: a Small network, 64 fake training images, one epoch."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bcop.evaluate import RECERTIFY_TOLERANCE, EvalConfig, complete_curve
from bcop.experiments import successors, successors_table
from bcop.experiments.successors import LR_CHOICES, RECIPE, RunSettings, choose_lr
from bcop.hub import load_folder
from bcop.results import write_results
from bcop.train import RESUME_MAY_CHANGE, TrainConfig
from tests.test_train import SIZES, data_root  # noqa: F401  (the fake MNIST fixture)

ROOT = Path(__file__).resolve().parent.parent
FAMILY = "aol"  # the cheapest successor to train


def _settings(tmp: Path, data: Path) -> RunSettings:
    return RunSettings(
        arch="small", runs=str(tmp / "runs"), record=str(tmp / "lr.json"), checkpoints=str(tmp / "ckpt"),
        select_epochs=1, final_epochs=1, limit_train=64, data_root=str(data),
        eval_options=("--pgd-limit", "5", "--pgd-steps", "2", "--device", "cpu"),
    )  # fmt: skip


def test_recipe_is_bcop_large_mnists_recorded_recipe_but_the_rate() -> None:
    recorded = json.loads((ROOT / "checkpoints/bcop-large-mnist/eval_results.json").read_text())
    config = recorded["training"]["config"]
    assert {k: config[k] for k in RECIPE} == RECIPE
    defaults = dataclasses.asdict(TrainConfig(model="bcop-large-mnist"))
    free = {"model", "lr", "epochs", "train_split", "limit_train", *RESUME_MAY_CHANGE}
    others = {k: v for k, v in config.items() if k not in RECIPE and k not in free}
    assert others == {k: defaults[k] for k in others}  # every other option at its default
    assert config["epochs"] == successors.FINAL_EPOCHS and config["train_split"] == "train+val"


def test_choose_lr_takes_the_best_certified_the_smaller_on_a_tie_and_waits_for_all() -> None:
    runs = {
        f"{lr:g}": {"epochs": 3, "val_certified": c}
        for lr, c in zip(LR_CHOICES, (0.2, 0.5, 0.4), strict=True)
    }
    assert choose_lr(runs, 3) == LR_CHOICES[1]
    tie = {**runs, f"{LR_CHOICES[2]:g}": {"epochs": 3, "val_certified": 0.5}}
    assert choose_lr(tie, 3) == LR_CHOICES[1]
    assert choose_lr({**runs, f"{LR_CHOICES[0]:g}": {"epochs": 2, "val_certified": 0.9}}, 3) is None
    assert choose_lr({k: v for k, v in runs.items() if k != f"{LR_CHOICES[2]:g}"}, 3) is None


def test_final_refuses_before_the_selection_is_finished(tmp_path: Path, data_root: Path) -> None:  # noqa: F811
    with pytest.raises(ValueError, match="select --family aol"):
        successors.final(FAMILY, _settings(tmp_path, data_root))


def test_select_then_final_records_the_choice_resumes_and_exports_a_checkpoint(
    tmp_path: Path,
    data_root: Path,  # noqa: F811
) -> None:
    settings = _settings(tmp_path, data_root)
    record = successors.select([FAMILY], settings)
    entry = record["models"]["aol-small-mnist"]
    assert sorted(entry["runs"]) == sorted(f"{lr:g}" for lr in LR_CHOICES)
    assert all(run["epochs"] == 1 and 0 <= run["val_certified"] <= 1 for run in entry["runs"].values())
    assert entry["chosen_lr"] == choose_lr(entry["runs"], 1)
    assert json.loads(Path(settings.record).read_text()) == record  # written as the runs finish

    stamp = Path(entry["runs"]["0.001"]["out"], "metrics.json").stat().st_mtime_ns
    assert successors.select([FAMILY], settings) == record  # finished runs are not run again
    assert Path(entry["runs"]["0.001"]["out"], "metrics.json").stat().st_mtime_ns == stamp

    longer = dataclasses.replace(settings, select_epochs=2)
    with pytest.raises(ValueError, match="use another --record"):
        successors.select([FAMILY], longer)  # a selection is not continued under other settings

    folder = successors.final(FAMILY, settings)
    results = json.loads((folder / "eval_results.json").read_text())
    assert results["n_test"] == SIZES["test"]  # evaluated on the run's data
    assert results["training"]["config"]["lr"] == entry["chosen_lr"]
    assert results["training"]["config"]["train_split"] == "train+val"
    assert (folder / "README.md").is_file() and load_folder(folder)[0].config.name == "aol-small-mnist"
    _check_table(Path(settings.checkpoints), results, tmp_path / "page.md")
    _check_complete_curve(folder, results, data_root)


def _check_complete_curve(folder: Path, results: dict, data: Path) -> None:
    """Results evaluated before the curve had 36/255 and 72/255 get them back, equal to a full
    evaluation's (to the tolerance), in the card too; results that disagree are refused."""
    short = {k: v for k, v in results["certified"].items() if k not in ("0.141176", "0.282353")}
    write_results(folder, {**results, "certified": short})
    cfg = EvalConfig(data_root=str(data), device="cpu")
    completed = complete_curve(folder, cfg)
    assert completed["certified"] == pytest.approx(results["certified"], abs=RECERTIFY_TOLERANCE)
    assert list(completed["certified"]) == list(results["certified"])  # in order of radius
    assert "0.141176" in (folder / "README.md").read_text()
    write_results(folder, {**results, "certified": {**short, "1.58": short["1.58"] + 5}})
    with pytest.raises(ValueError, match="certifies differently"):
        complete_curve(folder, cfg)


def _check_table(root: Path, results: dict, page: Path) -> None:
    """The table shows the numbers of the exported results (one code path with the card), and
    rewriting its section keeps the rest of the page."""
    (row,) = successors_table.table_rows(root)
    assert row["clean"] == results["clean"] and row["certified 1.58"] == results["certified"]["1.58"]
    assert row["certified 0.141176"] == results["certified"]["0.141176"]  # 36/255 is on the curve
    assert row["lipschitz"] == results["lipschitz"] and row["ms_1"] > 0 and row["ms_128"] > 0
    assert row["parameters"] > 0 and row["s_per_step"] > 0
    page.write_text("# Page\n\nintro\n\n## Results\n\nold\n\n## Speed\n\nkept\n")
    header = successors_table.render([]).split("\n")[0]
    readme = page.with_name("README.md")
    readme.write_text(f"# Readme\n\nabove\n\n{header}\n|---|\n| stale | row |\n\nbelow\n")
    table = successors_table.main(root, page, readme)
    text = page.read_text()
    assert text.startswith("# Page\n\nintro\n\n## Results\n") and text.endswith("## Speed\n\nkept\n")
    assert "old" not in text and table in text and f"| aol-small-mnist | {results['clean']:.2f} |" in table
    assert readme.read_text() == f"# Readme\n\nabove\n\n{table}\nbelow\n"


def test_the_readme_shows_the_successors_table_of_docs_successors_md() -> None:
    """``table`` writes both copies; a hand edit of one, or a run that wrote only one, fails here."""
    header = successors_table.render([]).split("\n")[0]

    def table_of(page: Path) -> list[str]:
        lines = page.read_text().split("\n")
        start = lines.index(header)
        end = next(i for i in range(start, len(lines)) if not lines[i].startswith("|"))
        return lines[start:end]

    assert table_of(ROOT / "README.md") == table_of(ROOT / "docs" / "successors.md")


def test_replace_table_refuses_a_page_without_the_table(tmp_path: Path) -> None:
    page = tmp_path / "README.md"
    page.write_text("# Readme\n\n| another | table |\n")
    with pytest.raises(ValueError, match="0 tables with the header"):
        successors_table.replace_table(page, successors_table.render([]))


def test_a_pgd_figure_on_a_sample_of_the_test_set_says_how_many_images() -> None:
    row = {
        "model": "soc-large-mnist", "family": "soc", "clean": 98.0, "certified 0.141176": 97.0,
        "certified 0.282353": 96.0, "certified 1.58": 57.0, "pgd": 80.5, "pgd_sample": 2000,
        "lipschitz": 1.0, "s_per_step": 1.0, "training_time": "", "ms_1": None, "ms_128": None,
        "parameters": 5,
    }  # fmt: skip
    sample = successors_table.render([row]).split("\n")[2].split(" | ")
    whole = successors_table.render([{**row, "pgd_sample": None}]).split("\n")[2].split(" | ")
    assert sample[5] == "80.50 (n = 2,000)" and whole[5] == "80.50"


def test_the_command_line_refuses_final_without_one_family(tmp_path: Path) -> None:
    record = str(tmp_path / "r.json")
    command = [sys.executable, "-m", "bcop.experiments.successors", "final", "--record", record]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "exactly one --family" in result.stderr

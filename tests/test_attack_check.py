"""The independent attack check (``python -m bcop.experiments.attack_check``): it passes on a
shipped model, and it catches a bound that is not sound."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from bcop.data import load_mnist
from bcop.experiments import attack_check
from bcop.hub import load_folder

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = Path(__file__).resolve().parents[1] / "checkpoints" / "bcop-small-mnist"
QUICK = ["--n", "20", "--restarts", "2", "--search-steps", "4", "--pgd-steps", "10"]


def test_the_check_passes_on_a_shipped_model_and_writes_its_row(tmp_path: Path) -> None:
    results, page = tmp_path / "check.json", tmp_path / "page.md"
    page.write_text("# Page\n\n## Independent attack check\n\nold\n\n## After\n\nkept\n")
    assert attack_check.main([str(SMALL), *QUICK, "--results", str(results), "--page", str(page)]) == 0
    row = json.loads(results.read_text())["models"]["bcop-small-mnist"]
    assert row["n"] == 20 and row["beaten"] == 0 and row["found"] == row["correct"] >= 15
    assert row["min_ratio"] >= 1.0 and row["passed"]
    text = page.read_text()
    assert "| bcop-small-mnist |" in text and "old" not in text and text.endswith("## After\n\nkept\n")


def test_the_check_refuses_to_mix_settings_in_one_results_file(tmp_path: Path) -> None:
    results = tmp_path / "check.json"
    results.write_text(json.dumps({"config": {"n": 1}, "models": {}}))
    with pytest.raises(SystemExit, match="other settings"):
        attack_check.main([str(SMALL), *QUICK, "--results", str(results), "--page", ""])


def test_an_understated_bound_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """Control: the same model reporting a tenth of its bound certifies radii ten times too large,
    which the attack beats."""
    model, _ = load_folder(SMALL)
    images, labels = load_mnist("test").tensors
    true_bound = attack_check.lipschitz_bound(model)
    monkeypatch.setattr(attack_check, "lipschitz_bound", lambda m: true_bound / 10)
    cfg = attack_check.CheckConfig(n=20, restarts=1, search_steps=4, pgd_steps=10)
    row = attack_check.check_model(model, images[:20], labels[:20], cfg)
    assert row["beaten"] > 0 and not row["passed"] and row["min_ratio"] < 1.0
    assert torch.isclose(torch.tensor(row["lipschitz"]), torch.tensor(true_bound / 10))


def test_a_result_is_added_to_what_the_file_holds_when_it_is_written(tmp_path: Path) -> None:
    # Another process's check finished after this one read the file: its result must stay.
    path, cfg = tmp_path / "check.json", attack_check.CheckConfig(n=4)
    path.write_text(json.dumps({"config": vars(cfg), "models": {"other-large-mnist": {"passed": True}}}))
    results = attack_check.record(path, cfg, "this-large-mnist", {"passed": False})
    assert set(results) == {"other-large-mnist", "this-large-mnist"}
    assert json.loads(path.read_text()) == {"config": vars(cfg), "models": results}

"""Tests for bcop.cards: model cards the Hub can index, built from schema-2 results, the tables
beside them, and the command that brings the shipped checkpoints up to date."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from huggingface_hub import EvalResult, ModelCard

from bcop import list_models
from bcop.cards import _time_sentence, eval_results, main, model_card, results_table, training_time_cell
from bcop.hub import HUB_OWNER, checkpoints_dir
from bcop.results import UNRECORDED_HARDWARE, read_results, upgrade_results

SCHEMA1 = Path(__file__).parent / "data" / "schema1"
SHIPPED = sorted(
    p.parent for p in checkpoints_dir().glob("*/eval_results.json") if p.parent.name in list_models()
)


def _results(name: str = "bcop-large-mnist") -> dict:
    return upgrade_results(json.loads((SCHEMA1 / name / "eval_results.json").read_text()))


@pytest.mark.parametrize("folder", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_card_loads_and_its_eval_results_round_trip(folder: Path) -> None:
    """The card's metadata parses with huggingface_hub into what the Hub indexes, and its
    model-index gives back exactly the metrics of the results beside it."""
    card = ModelCard.load(folder / "README.md")
    results = read_results(folder)
    data = card.data
    assert data.pipeline_tag == "image-classification" and data.library_name == "bcop"
    assert data.license == "mit" and data.datasets == ["ylecun/mnist"]
    assert data.model_name == folder.name
    assert data.eval_results == eval_results(results)
    for entry in data.eval_results:
        assert (entry.dataset_type, entry.dataset_name, entry.dataset_split) == (
            "ylecun/mnist",
            "MNIST",
            "test",
        )
    values = {e.metric_type: e.metric_value for e in data.eval_results}
    assert (
        values["accuracy"] == results["clean"]
        and values["certified_accuracy"] == results["certified"]["1.58"]
    )
    assert (
        values["pgd_accuracy"] == results["pgd"]["1.58"] and values["fgm_accuracy"] == results["fgm"]["1.58"]
    )


@pytest.mark.parametrize("folder", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_card_is_the_one_its_results_build(folder: Path) -> None:
    """``python -m bcop.cards`` was run after the last change to the cards or the results."""
    assert (folder / "README.md").read_text() == str(model_card(read_results(folder)))


def test_card_says_how_to_install_load_and_cite_and_what_was_measured() -> None:
    results = _results()
    text = str(model_card(results, owner="someone"))
    assert 'pip install "bcop @ git+https://huggingface.co/spaces/someone/bcop"' in text
    assert 'load_model("someone/bcop-large-mnist")' in text and "@inproceedings{li2019preventing" in text
    assert "| certified % | 98.62 | 97.25 |" in text  # the curve over eps, in percent
    assert "| bcop-large-mnist | 98.62 | 57.42 | 82.24 (n=10000) | 86.50 | 86.54 | 1.000004 |" in text
    assert (
        f"`{results['training']['command']}`" in text and "`python -m bcop.evaluate bcop-large-mnist`" in text
    )
    assert "Evaluated on" not in text  # this evaluation recorded no hardware
    timed = str(model_card({**results, "eval_hardware": "NVIDIA H200", "eval_seconds": 90.0}))
    assert "Evaluated on NVIDIA H200 in 1.5 min." in timed and f"{HUB_OWNER}/bcop-large-mnist" in timed


def test_card_of_the_oldest_results_layout_still_says_everything_it_knows() -> None:
    """Upgraded results from before the paper's attack and the PGD sample were recorded."""
    old = json.loads((SCHEMA1 / "plain-large-mnist" / "eval_results.json").read_text())
    for key in ("pgd_paper_attack", "pgd_sample"):
        del old[key]
    results = upgrade_results({**old, "pgd_n": 1000})
    card = model_card(results)
    assert "pgd_accuracy_paper_attack" not in {e.metric_type for e in card.data.eval_results}
    assert (
        "on the first 1000 test images" in card.text
        and "The paper reports no row for this model." in card.text
    )
    assert "Time: 4 epochs on CPU (2-core machine): 0.08 h wall clock, 0.06 CPU-hours" in card.text


def test_training_time_is_told_per_stretch_of_hardware() -> None:
    segments = [
        {"hardware": "NVIDIA H200", "epochs": 2, "wall_hours": 0.2, "cpu_hours": 0.222},
        {"hardware": "CPU (2 threads)", "epochs": 1, "wall_hours": 1.0, "cpu_hours": 2.0},
    ]
    training = {"hardware": segments, "epochs": 3, "cpu_hours": 8000 / 3600, "wall_hours": 1.2}
    assert _time_sentence(training) == (
        "Time: 2 epochs on NVIDIA H200: 0.20 h wall clock; 1 epoch on CPU (2 threads): "
        "1.00 h wall clock, 2.00 CPU-hours (machines possibly shared with other jobs)."
    )
    assert training_time_cell(training) == "0.20 h on NVIDIA H200 + 2.00 h, 3"
    cpu_only = {**training, "hardware": [{**segments[1], "hardware": UNRECORDED_HARDWARE}]}
    assert training_time_cell(cpu_only) == "2.22 h, 3"


def test_results_table_shows_percentages_and_a_dash_for_what_was_not_measured() -> None:
    results = {**_results("plain-large-mnist"), "pgd_paper_attack": None}
    row = results_table([results]).splitlines()[-1]
    assert row == "| plain-large-mnist | 98.70 | 0.00 | 27.00 (n=1000) | – | 63.16 | 6600.572 | – | – | – |"


def test_cards_command_upgrades_config_and_results_and_leaves_weights_alone(tmp_path: Path) -> None:
    """Schema-1 files in, schema-2 files and a card out; the weights keep their bytes; folders
    that are not classifiers are skipped."""
    folder = tmp_path / "bcop-large-mnist"
    shutil.copytree(SCHEMA1 / "bcop-large-mnist", folder)
    (folder / "model.safetensors").write_bytes(b"weights")
    generator = tmp_path / "wgan-gp-mnist"
    generator.mkdir()
    (generator / "config.json").write_text(json.dumps({"kind": "generator"}))
    assert main([str(tmp_path)]) == [folder]
    config = json.loads((folder / "config.json").read_text())
    assert config["schema_version"] == 2 and config["ortho"] == {"method": "polar", "bjorck_iters": 20}
    assert config["library_name"] == "bcop" and "ortho_method" not in config
    assert read_results(folder) == json.loads((folder / "eval_results.json").read_text()) == _results()
    assert (folder / "model.safetensors").read_bytes() == b"weights"
    assert ModelCard.load(folder / "README.md").data.eval_results == eval_results(_results())
    assert not (generator / "README.md").exists()


def test_eval_results_carry_the_radius_of_the_robust_metrics() -> None:
    entries = {e.metric_type: e for e in eval_results(_results())}
    assert entries["accuracy"].metric_args is None
    assert entries["certified_accuracy"].metric_args == {"norm": "L2", "eps": 1.58}
    assert isinstance(entries["pgd_accuracy_paper_attack"], EvalResult)


def test_the_generator_card_names_the_hub_dataset_and_the_licence_and_is_what_export_writes() -> None:
    import dataclasses

    from bcop.gan import GENERATOR_NAME, GanConfig, _card

    folder = checkpoints_dir() / GENERATOR_NAME
    card = ModelCard.load(folder / "README.md")
    assert card.data.datasets == ["ylecun/mnist"] and card.data.license == "mit"
    assert (card.data.library_name, card.data.pipeline_tag) == ("bcop", "unconditional-image-generation")
    quality = json.loads((folder / "quality.json").read_text())
    step = quality.pop("step")
    minutes = int(card.text.split(" minutes on one CPU thread")[0].rsplit(" ", 1)[1])
    written = _card(dataclasses.asdict(GanConfig()), step, 60 * minutes, quality)
    assert written == (folder / "README.md").read_text(), "the shipped card is the one export writes"


def test_a_later_familys_card_names_its_layer_and_paper_and_bcops_only_as_the_architecture() -> None:
    results = {**_results(), "model": "aol-large-mnist", "paper": None}
    intro = str(model_card(results, owner="someone")).split("# aol-large-mnist", 1)[1].split("\n\n")[1]
    assert "with AOL convolutions (Prach & Lampert, ECCV 2022, a later family than BCOP's)" in intro
    assert "in the architecture from [bcop]" in intro
    assert "AOL" not in str(model_card(_results())).split("## Citation")[0]

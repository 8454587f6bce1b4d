"""Tests for the command lines' options: every option of ``python -m bcop.train`` and
``python -m bcop.evaluate`` says what it does and its default, and the options are the settings
dataclasses' fields (bcop.cli), so the two cannot drift apart."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from bcop import evaluate as evaluate_module
from bcop import train as train_module
from bcop.cli import add_options, from_args, option
from bcop.evaluate import EvalConfig
from bcop.losses import TRAINING_LOSSES
from bcop.train import TrainConfig

PARSERS = {"train": train_module._parser, "evaluate": evaluate_module._parser}


def _options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if a.option_strings and a.dest != "help"]


@pytest.mark.parametrize("command", PARSERS)
def test_every_option_has_a_one_line_help_that_states_its_default(command: str) -> None:
    parser = PARSERS[command]()
    for action in _options(parser):
        text = action.help or ""
        assert text and "\n" not in text and len(text) <= 160, action.dest
        assert text.rstrip(")").count("(default: ") == 1 and text.endswith(")"), (action.dest, text)
    for action in parser._actions:  # positional arguments say what they take
        if not action.option_strings:
            assert action.help, action.dest


@pytest.mark.parametrize(("command", "settings"), [("train", TrainConfig), ("evaluate", EvalConfig)])
def test_the_options_are_the_settings_fields_with_their_defaults(command: str, settings: type) -> None:
    parser = PARSERS[command]()
    by_dest = {action.dest: action for action in parser._actions}
    for field in dataclasses.fields(settings):
        action = by_dest[field.name]
        assert field.metadata["help"] in action.help, field.name
        if field.default is not dataclasses.MISSING:
            assert action.option_strings == ["--" + field.name.replace("_", "-")]
            assert action.default == field.default, field.name


def test_parsing_no_options_gives_the_default_settings() -> None:
    assert train_module._parse(["bcop-small-mnist"]) == TrainConfig("bcop-small-mnist")
    args = evaluate_module._parse(["bcop-small-mnist"])
    assert from_args(EvalConfig, args) == EvalConfig()


def test_options_are_converted_to_the_fields_types_and_choices_are_enforced(
    capsys: pytest.CaptureFixture[str],
) -> None:
    cfg = train_module._parse(["bcop-small-mnist", "--limit-train", "5", "--lr", "0.01", "--loss", "ce"])
    assert (cfg.limit_train, cfg.lr, cfg.loss) == (5, 0.01, "ce")
    args = evaluate_module._parse(["bcop-small-mnist", "--pgd-limit", "7", "--device", "cpu"])
    assert from_args(EvalConfig, args) == EvalConfig(pgd_limit=7, device="cpu")
    with pytest.raises(SystemExit) as info:
        train_module._parse(["bcop-small-mnist", "--loss", "mse"])
    assert info.value.code == 2
    assert "invalid choice: 'mse'" in capsys.readouterr().err
    assert train_module._parser()._option_string_actions["--loss"].choices == ("auto", *TRAINING_LOSSES)


@pytest.mark.parametrize("command", PARSERS)
def test_help_renders_every_default(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        PARSERS[command]().parse_args(["--help"])
    assert info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # undo argparse's line wrapping
    expected = {
        "train": ["(default: 0.96235)", "(default: runs/MODEL)", "(default: all)", "(default: polar)"],
        "evaluate": ["(default: 1.58)", "(default: all)", "(default: cuda when available, else cpu)"],
    }[command]
    assert all(item in text for item in expected), text


def test_a_settings_field_without_help_is_refused() -> None:
    @dataclasses.dataclass
    class Settings:
        documented: int = option(1, "a setting with 100% of its help")
        bare: int = 2

    parser = argparse.ArgumentParser()
    with pytest.raises(TypeError, match="Settings.bare has no help: declare it with option"):
        add_options(parser, Settings)
    assert "100%" in parser._option_string_actions["--documented"].help % {}

"""Tests for bcop.factory: one way to a model (create_model, list_models), the Hub options it
passes through, and the clear refusals of what it cannot mean. Hub downloads use the fake Hub on
127.0.0.1 (:mod:`tests.fakehub`)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from huggingface_hub import constants

import bcop
from bcop import create_model, hub, list_models
from bcop.models import OrthoParams, parse_model_name
from tests.fakehub import FakeHub, point_client_at

pytestmark = pytest.mark.usefixtures("one_thread")

NAME = "bcop-small-mnist"
REPO = f"owner/{NAME}"


@pytest.fixture
def fake_hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[FakeHub]:
    """A fake Hub holding a fresh bcop-small-mnist as REPO, an empty checkpoints folder, and a
    Hub cache in ``tmp_path``."""
    server = FakeHub()
    point_client_at(monkeypatch, server.endpoint)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("BCOP_CHECKPOINTS", str(tmp_path / "checkpoints"))
    monkeypatch.setattr(hub, "_reachable", {})
    monkeypatch.setattr(hub, "_fell_back", set())
    torch.manual_seed(0)
    folder = hub.save_model(create_model(NAME), tmp_path / "saved" / NAME)
    server.repos[REPO] = {p.name: p.read_bytes() for p in folder.iterdir()}
    yield server
    server.close()


def test_pretrained_create_model_passes_the_hub_options_to_the_loader(fake_hub: FakeHub) -> None:
    """The revision asked for is the commit loaded (it used to be refused as an override)."""
    commit = fake_hub.commit(REPO)
    model = create_model(REPO, pretrained=True, revision=commit)
    assert not model.training and model.config.name == NAME
    cached = create_model(REPO, pretrained=True, revision=commit, local_files_only=True)
    torch.testing.assert_close(cached.state_dict(), model.state_dict(), rtol=0, atol=0)
    with pytest.raises(RuntimeError, match="RevisionNotFound"):
        create_model(REPO, pretrained=True, revision="v9")


def test_the_hub_loader_says_which_commit_it_read(fake_hub: FakeHub, tmp_path: Path) -> None:
    assert hub.load_model(REPO).commit == fake_hub.commit(REPO)
    assert hub.load_model(hub.save_model(create_model(NAME), tmp_path / NAME)).commit is None


def test_pretrained_create_model_loads_a_folder_bitwise(tmp_path: Path) -> None:
    torch.manual_seed(3)
    fresh = create_model("plain-small-mnist")
    folder = hub.save_model(fresh, tmp_path / "run" / "best")
    loaded = create_model(folder, pretrained=True)
    torch.testing.assert_close(loaded.state_dict(), fresh.state_dict(), rtol=0, atol=0)


def test_create_model_refuses_hub_options_or_a_repo_without_pretrained(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="revision, token only apply to trained weights: pass pretrained="):
        create_model(NAME, revision="v1", token="hf_x")
    with pytest.raises(ValueError, match="Hub repo id or a folder.*pass pretrained=True"):
        create_model(REPO)
    with pytest.raises(ValueError, match="Hub repo id or a folder.*pass pretrained=True"):
        create_model(tmp_path)
    with pytest.raises(ValueError, match="unknown model name 'bcop-tiny-mnist'"):
        create_model("bcop-tiny-mnist")


def test_a_fresh_model_takes_config_overrides_and_a_trained_one_refuses_them() -> None:
    model = create_model(NAME, ortho=OrthoParams("bjorck", 7))
    assert model.config.ortho == OrthoParams("bjorck", 7)
    with pytest.raises(ValueError, match="keeps the config it was trained with; drop ortho"):
        create_model(NAME, pretrained=True, ortho=OrthoParams("bjorck", 7))
    with pytest.raises(TypeError, match="unknown config fields \\['depth'\\]"):
        create_model(NAME, depth=3)


def test_list_models_is_one_registry_whose_pretrained_names_are_shipped() -> None:
    names = list_models()
    pretrained = list_models(pretrained=True)
    assert len(set(names)) == len(names) and all(parse_model_name(n).name == n for n in names)
    assert set(pretrained) < set(names) and len(set(pretrained)) == len(pretrained) >= 6
    assert pretrained[0] == "bcop-large-mnist"  # the app's default comes first
    assert set(pretrained) <= set(hub.local_checkpoints())
    assert bcop.create_model is create_model and bcop.list_models is list_models


def test_the_deprecated_models_create_model_builds_fresh_and_points_to_the_factory() -> None:
    from bcop import models

    with pytest.warns(DeprecationWarning, match=r"use bcop\.create_model"):
        old = models.create_model
    assert old(NAME).config.name == NAME
    with pytest.raises(ValueError, match=r"bcop\.create_model\('bcop-small-mnist', pretrained=True\)"):
        old(NAME, pretrained=True)

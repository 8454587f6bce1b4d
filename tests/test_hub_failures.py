"""A Hub that half-fails: it answers its root (so a reachability probe passes) but its file
requests hang, are dropped, or are answered slowly. Loading falls back within a deadline, the
first model included, marks the Hub unreachable once for the process, and never asks it again.
Real loopback servers (:mod:`tests.fakehub`); nothing patches ``time.sleep``.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from huggingface_hub import constants

from bcop import hub
from bcop.models import create_model
from tests.fakehub import FakeHub, point_client_at, within

NAMES = ("bcop-small-mnist", "rko-small-mnist", "plain-small-mnist")
OWNER = "owner"
GUARD_S = 15.0  # the generous bound on a fallback (minutes before), not a speed target


@pytest.fixture
def fault_hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[FakeHub]:
    """A FakeHub holding three small models that the embedded checkpoints hold too."""
    server = FakeHub()
    point_client_at(monkeypatch, server.endpoint)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("BCOP_CHECKPOINTS", str(tmp_path / "checkpoints"))
    monkeypatch.setenv("BCOP_HUB_OWNER", OWNER)
    monkeypatch.setattr(hub, "_reachable", {})
    monkeypatch.setattr(hub, "_fell_back", set())
    torch.manual_seed(0)
    for name in NAMES:
        folder = hub.save_model(create_model(name), tmp_path / "checkpoints" / name)
        server.repos[f"{OWNER}/{name}"] = {p.name: p.read_bytes() for p in folder.iterdir()}
    yield server
    server.close()


def _load_all() -> tuple[list[hub.LoadedModel], list[str], float]:
    """Every model of NAMES by name: the results, the warnings' first words, the seconds taken."""
    start = time.monotonic()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        results = within(GUARD_S, lambda: [hub.load_model(name) for name in NAMES])
    return results, [str(w.message).split(" (")[0] for w in caught], time.monotonic() - start


@pytest.mark.parametrize("fault", ["hang", "drop", "slow"])
def test_a_hub_whose_file_requests_fail_costs_one_deadline_and_one_warning(
    fault: str, fault_hub: FakeHub
) -> None:
    fault_hub.fault, fault_hub.delay_s = fault, 3 * hub.hub_timeout()
    results, caught, seconds = _load_all()
    assert [r.source for r in results] == ["local"] * len(NAMES)
    assert caught == [f"the Hugging Face Hub at {fault_hub.endpoint} cannot be reached"]
    assert seconds < GUARD_S
    assert hub.hub_reachable() is False
    for name in NAMES[1:]:  # once unreachable, never asked again
        assert fault_hub.hub_requests(f"{OWNER}/{name}") == []


def test_a_hanging_hub_falls_back_within_the_default_deadline(
    fault_hub: FakeHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("BCOP_HUB_TIMEOUT")
    assert hub.hub_timeout() == hub.DEFAULT_TIMEOUT_S == 5.0
    fault_hub.fault = "hang"
    results, caught, seconds = _load_all()
    assert [r.source for r in results] == ["local"] * len(NAMES)
    assert len(caught) == 1
    assert hub.DEFAULT_TIMEOUT_S <= seconds < GUARD_S


def test_a_slow_but_steady_transfer_is_not_cut_by_the_deadline(fault_hub: FakeHub) -> None:
    fault_hub.fault, fault_hub.delay_s = "trickle", hub.hub_timeout() / 4  # ten pieces: 2.5 deadlines
    start = time.monotonic()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded = hub.load_model(NAMES[0])
    assert time.monotonic() - start > hub.hub_timeout()
    assert (loaded.source, loaded.repo_id) == ("hub", f"{OWNER}/{NAMES[0]}")


def test_a_hub_that_hangs_leaves_the_cached_copy_usable(fault_hub: FakeHub) -> None:
    first = hub.load_model(NAMES[0])
    assert first.source == "hub"
    fault_hub.fault = "hang"
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        again = hub.load_model(NAMES[0], force_download=True)
    assert (again.source, again.commit) == ("hub", first.commit)  # from the Hub cache


def test_the_loaded_model_names_its_commit_and_fetch_file_reads_that_commit(fault_hub: FakeHub) -> None:
    repo = f"{OWNER}/{NAMES[0]}"
    fault_hub.repos[repo]["eval_results.json"] = b'{"first": true}'
    loaded = hub.load_model(NAMES[0])
    assert loaded.commit == fault_hub.commit(repo)
    fault_hub.repos[repo]["eval_results.json"] = b'{"second": true}'  # a push after the load
    path = hub.fetch_file(repo, "eval_results.json", revision=loaded.commit)
    assert path is not None and path.read_bytes() == b'{"first": true}'


def test_fetch_file_goes_through_the_reachability_check(fault_hub: FakeHub) -> None:
    repo = f"{OWNER}/{NAMES[0]}"
    fault_hub.fault = "hang"
    start = time.monotonic()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert hub.fetch_file(repo, "eval_results.json") is None
        assert hub.fetch_file(repo, "README.md") is None
    assert time.monotonic() - start < GUARD_S
    assert len(caught) == 1 and hub.hub_reachable() is False
    assert len(fault_hub.hub_requests(repo)) == 1  # the second file was not asked for


def test_offline_mode_is_named_when_nothing_can_be_had(
    fault_hub: FakeHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(
        RuntimeError, match=r"HF_HUB_OFFLINE is set \(offline mode\) and the Hub cache has no copy"
    ):
        hub.load_model(f"{OWNER}/bcop-small-mnist-relu")
    assert fault_hub.requests == []


# --- whose copy stands in ---------------------------------------------------------------------


def test_another_owners_repo_is_never_replaced_by_the_embedded_copy(fault_hub: FakeHub) -> None:
    with pytest.raises(
        RuntimeError, match=r"(?s)nobody/bcop-small-mnist.*RepositoryNotFound.*stands in only"
    ):
        hub.load_model(f"nobody/{NAMES[0]}")
    fault_hub.fault = "hang"  # unreachable: still not replaced
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        with pytest.raises(RuntimeError, match=r"(?s)nobody/bcop-small-mnist.*load 'bcop-small-mnist'"):
            hub.load_model(f"nobody/{NAMES[0]}")


def test_the_name_and_the_default_owners_repo_fall_back_to_the_embedded_copy(
    fault_hub: FakeHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    fault_hub.repos.clear()
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        assert hub.load_model(NAMES[0]).source == "local"
        assert hub.load_model(f"{OWNER}/{NAMES[1]}").source == "local"
        monkeypatch.setenv("BCOP_HUB_OWNER", "someone")
        assert hub.load_model(f"{hub.HUB_OWNER}/{NAMES[2]}").source == "local"  # what checkpoints/ holds

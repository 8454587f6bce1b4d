"""Tests for bcop.hub: save / load round trips, validation of what is loaded, and downloads by
the real ``huggingface_hub`` client from a local server that answers like the Hub
(:mod:`tests.fakehub`). No test touches the network beyond 127.0.0.1.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import shutil
import socket
import subprocess
import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import huggingface_hub
import pytest
import torch
from huggingface_hub import constants
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from bcop import create_model, hub, list_models
from bcop.models import LipschitzNet, ModelConfig
from tests.fakehub import FakeHub, point_client_at, within

REPO = "owner/bcop-small-mnist"
NAME = "bcop-small-mnist"
ROOT = Path(__file__).resolve().parent.parent


def _unused_endpoint() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


@pytest.fixture(autouse=True)
def isolated_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test reaches huggingface.co: the Hub client points at a port where nothing listens
    (``fake_hub`` replaces it), and each test probes reachability afresh."""
    point_client_at(monkeypatch, _unused_endpoint())
    monkeypatch.delenv("BCOP_HUB_OWNER", raising=False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(hub, "_reachable", {})
    monkeypatch.setattr(hub, "_fell_back", set())


@pytest.fixture
def fake_hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[FakeHub]:
    """A running FakeHub that ``huggingface_hub`` talks to, with its cache, and an empty
    checkpoints folder, all in ``tmp_path``."""
    server = FakeHub()
    point_client_at(monkeypatch, server.endpoint)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("BCOP_CHECKPOINTS", str(tmp_path / "checkpoints"))
    yield server
    server.close()


@dataclass
class Saved:
    """A model, the folder it was saved to, and its logits on ``_inputs()``."""

    model: LipschitzNet
    folder: Path
    logits: torch.Tensor


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Saved:
    """A freshly initialised bcop-small-mnist and its folder in Hub layout (with a card)."""
    torch.manual_seed(0)
    model = create_model(NAME).eval()
    folder = hub.save_model(model, tmp_path_factory.mktemp("saved") / NAME, card="# bcop-small-mnist\n")
    return Saved(model, folder, _logits(model))


def _publish(server: FakeHub, folder: Path, repo_id: str = REPO) -> None:
    server.repos[repo_id] = {p.name: p.read_bytes() for p in folder.iterdir()}


def _inputs() -> torch.Tensor:
    return torch.rand(8, 1, 28, 28, generator=torch.Generator().manual_seed(1))


def _logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(_inputs())


# --- local folders ---------------------------------------------------------------------------


def test_save_then_load_folder_gives_bitwise_equal_outputs_without_unpickling(
    saved: Saved, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert sorted(p.name for p in saved.folder.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    config = json.loads((saved.folder / "config.json").read_text())
    assert config["model_name"] == NAME and config["library_name"] == "bcop"

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("weights must be read from safetensors, never unpickled")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    loaded, card = hub.load_folder(saved.folder)
    assert card == "# bcop-small-mnist\n"
    assert not loaded.training
    assert torch.equal(_logits(loaded), saved.logits)
    assert set(load_file(str(saved.folder / "model.safetensors"))) == set(saved.model.state_dict())


def test_load_model_from_a_local_folder_reports_source_local(saved: Saved) -> None:
    result = hub.load_model(saved.folder)
    assert (result.source, result.location, result.repo_id) == ("local", saved.folder, None)
    assert torch.equal(_logits(result.model), saved.logits)


def test_load_folder_without_weights_raises_file_not_found(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        hub.load_folder(tmp_path)


def test_load_folder_with_weights_of_another_model_raises_value_error(saved: Saved, tmp_path: Path) -> None:
    hub.save_model(create_model("plain-small-mnist"), tmp_path)
    (tmp_path / "config.json").write_text((saved.folder / "config.json").read_text())
    with pytest.raises(ValueError, match="does not match bcop-small-mnist"):
        hub.load_folder(tmp_path)


def test_unknown_name_raises_value_error_listing_known_names() -> None:
    with pytest.raises(ValueError, match="known names: .*bcop-large-mnist") as info:
        hub.load_model("resnet-50")
    assert all(name in str(info.value) for name in list_models())


def test_missing_path_raises_file_not_found_not_a_hub_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no model folder"):
        hub.load_model(tmp_path / "nothing" / "here")


def test_registry_name_without_hub_loads_the_embedded_checkpoint(
    saved: Saved, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("BCOP_HUB_OWNER", "")
    monkeypatch.setenv("BCOP_CHECKPOINTS", str(tmp_path))
    hub.save_model(saved.model, tmp_path / NAME)
    result = hub.load_model(NAME)
    assert (result.source, result.location) == ("local", tmp_path / NAME)
    assert torch.equal(_logits(result.model), saved.logits)
    assert hub.local_checkpoints() == [NAME]


def test_registry_name_without_hub_or_local_copy_lists_what_is_available(
    saved: Saved, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("BCOP_HUB_OWNER", "")
    monkeypatch.setenv("BCOP_CHECKPOINTS", str(tmp_path))
    hub.save_model(saved.model, tmp_path / NAME)
    with pytest.raises(
        ValueError, match=r"no pretrained weights for 'bcop-large-mnist'.*available: bcop-small"
    ):
        hub.load_model("bcop-large-mnist")


# --- downloads from the fake Hub -------------------------------------------------------------


def test_hub_download_through_hf_endpoint_in_a_fresh_process(
    saved: Saved, fake_hub: FakeHub, tmp_path: Path
) -> None:
    """HF_ENDPOINT / HF_HUB_CACHE set in the environment, as a user would, before the import."""
    _publish(fake_hub, saved.folder)
    save_file({"x": _inputs()}, str(tmp_path / "x.safetensors"))
    code = (
        "import sys, torch; from safetensors.torch import load_file, save_file; "
        "from bcop.hub import load_model; r = load_model(sys.argv[1]); "
        "x = load_file(sys.argv[2])['x']; "
        "save_file({'y': r.model(x).detach()}, sys.argv[3]); print(r.source, r.repo_id, r.location)"
    )
    env = {
        **os.environ,
        "HF_ENDPOINT": fake_hub.endpoint,
        "HF_HUB_CACHE": str(tmp_path / "hf-cache"),
        "HF_HOME": str(tmp_path / "hf-home"),
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "PYTHONPATH": str(ROOT),
    }
    files = [str(tmp_path / "x.safetensors"), str(tmp_path / "y.safetensors")]
    result = subprocess.run(
        [sys.executable, "-c", code, REPO, *files],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    source, repo_id, location = result.stdout.split()
    assert (source, repo_id) == ("hub", REPO)
    assert Path(location).parent.parent.name == "models--owner--bcop-small-mnist"
    # the same weights; not bit for bit: with two threads on busy cores a reduction's order can vary
    downloaded = load_file(str(tmp_path / "y.safetensors"))["y"]
    torch.testing.assert_close(downloaded, saved.logits, rtol=0, atol=1e-5)


def test_hub_download_is_cached_verified_and_gives_equal_outputs(
    saved: Saved, fake_hub: FakeHub, tmp_path: Path
) -> None:
    _publish(fake_hub, saved.folder)
    result = hub.load_model(REPO)
    assert isinstance(result, hub.LoadedModel)
    assert (result.source, result.repo_id, result.card) == ("hub", REPO, "# bcop-small-mnist\n")
    snapshot = tmp_path / "hf-cache" / "models--owner--bcop-small-mnist" / "snapshots" / fake_hub.commit(REPO)
    assert result.location == snapshot
    weights = (snapshot / "model.safetensors").resolve()
    assert weights.name == hashlib.sha256((saved.folder / "model.safetensors").read_bytes()).hexdigest()
    assert torch.equal(_logits(result.model), saved.logits)
    # the weights went through the CDN redirect, like an LFS file on the Hub
    assert any(r.startswith("GET /lfs/") for r in fake_hub.requests)

    # a second load revalidates with HEAD requests only: nothing is downloaded again
    before = len(fake_hub.requests)
    again = hub.load_model(REPO)
    assert all(r.startswith("HEAD") for r in fake_hub.requests[before:])
    assert torch.equal(_logits(again.model), saved.logits)


def test_registry_name_downloads_from_the_owner_in_bcop_hub_owner_or_the_owner_keyword(
    saved: Saved, fake_hub: FakeHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    _publish(fake_hub, saved.folder)
    monkeypatch.setenv("BCOP_HUB_OWNER", "owner")
    result = hub.load_model(NAME)
    assert (result.source, result.repo_id, result.commit) == ("hub", REPO, fake_hub.commit(REPO))
    assert torch.equal(_logits(result.model), saved.logits)
    monkeypatch.setenv("BCOP_HUB_OWNER", "")
    assert hub.load_model(NAME, owner="owner").repo_id == REPO


def test_hub_revision_pins_the_commit(saved: Saved, fake_hub: FakeHub) -> None:
    _publish(fake_hub, saved.folder)
    result = hub.load_model(REPO, revision=fake_hub.commit(REPO))
    assert result.location.name == fake_hub.commit(REPO)
    with pytest.raises(RuntimeError, match="RevisionNotFound"):
        hub.load_model(REPO, revision="v9")


def test_truncated_weights_on_the_hub_raise_value_error_naming_the_file(
    saved: Saved, fake_hub: FakeHub
) -> None:
    _publish(fake_hub, saved.folder)
    body = fake_hub.repos[REPO]["model.safetensors"]
    fake_hub.repos[REPO]["model.safetensors"] = body[: len(body) // 2]
    with pytest.raises(ValueError, match=r"(?s)owner/bcop-small-mnist.*safetensors is corrupt or truncated"):
        hub.load_model(REPO)


def test_corrupt_weights_on_the_hub_raise_value_error_naming_the_file(
    saved: Saved, fake_hub: FakeHub
) -> None:
    _publish(fake_hub, saved.folder)
    body = fake_hub.repos[REPO]["model.safetensors"]
    fake_hub.repos[REPO]["model.safetensors"] = b"\xff" * 16 + body[16:]
    with pytest.raises(ValueError, match=r"model\.safetensors is corrupt or truncated"):
        hub.load_model(REPO)


def test_weights_damaged_in_transit_are_detected_deleted_and_downloaded_again(
    saved: Saved, fake_hub: FakeHub, tmp_path: Path
) -> None:
    """Same size, different bytes: huggingface_hub's size check passes, the sha256 check does not."""
    _publish(fake_hub, saved.folder)
    body = fake_hub.repos[REPO]["model.safetensors"]
    sha = hashlib.sha256(body).hexdigest()
    fake_hub.transfer[sha] = body[:-4] + b"\x00\x00\x80\x7f"  # last float becomes +inf
    with pytest.raises(ValueError, match=f"corrupt: its sha256 .* announced {sha}"):
        hub.load_model(REPO)
    assert not list((tmp_path / "hf-cache").rglob(sha))

    del fake_hub.transfer[sha]
    assert torch.equal(_logits(hub.load_model(REPO).model), saved.logits)


def test_download_shorter_than_announced_is_not_cached(
    saved: Saved, fake_hub: FakeHub, tmp_path: Path
) -> None:
    _publish(fake_hub, saved.folder)
    body = fake_hub.repos[REPO]["model.safetensors"]
    sha = hashlib.sha256(body).hexdigest()
    fake_hub.transfer[sha] = body[:1000]
    with pytest.raises(RuntimeError, match=r"(?s)could not download the model owner/bcop-small-mnist.*size"):
        hub.load_model(REPO)
    assert not list((tmp_path / "hf-cache").rglob(sha))

    del fake_hub.transfer[sha]
    assert torch.equal(_logits(hub.load_model(REPO).model), saved.logits)


def test_missing_repo_without_local_copy_raises_runtime_error_naming_it(fake_hub: FakeHub) -> None:
    with pytest.raises(
        RuntimeError, match=r"(?s)owner/bcop-large-mnist .*RepositoryNotFound.*no local copy.*: none"
    ):
        hub.load_model("owner/bcop-large-mnist")


def test_missing_repo_falls_back_to_local_copy_with_one_warning(
    saved: Saved, fake_hub: FakeHub, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    hub.save_model(saved.model, tmp_path / "checkpoints" / NAME)
    monkeypatch.setenv("BCOP_HUB_OWNER", "owner")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        results = [hub.load_model(NAME) for _ in range(3)]
    assert len(caught) == 1
    assert "could not download owner/bcop-small-mnist" in str(caught[0].message)
    assert all((r.source, r.location) == ("local", tmp_path / "checkpoints" / NAME) for r in results)
    assert all(torch.equal(_logits(r.model), saved.logits) for r in results)
    # the later loads did not ask the Hub again
    assert len(fake_hub.hub_requests(REPO)) == 1


def test_a_file_on_the_hub_is_what_huggingface_hub_returns(saved: Saved, fake_hub: FakeHub) -> None:
    """The server speaks the protocol the client expects, checked with the client's own call."""
    _publish(fake_hub, saved.folder)
    path = huggingface_hub.hf_hub_download(REPO, "config.json")
    assert Path(path).read_bytes() == (saved.folder / "config.json").read_bytes()
    with pytest.raises(huggingface_hub.errors.RemoteEntryNotFoundError):
        huggingface_hub.hf_hub_download(REPO, "pytorch_model.bin")


# --- the Hub owner, the shipped models ------------------------------------------------------


def test_hub_owner_is_the_constant_unless_bcop_hub_owner_says_otherwise(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert hub.hub_owner() == hub.HUB_OWNER == "bcop-lipschitz"
    monkeypatch.setenv("BCOP_HUB_OWNER", "someone")
    assert hub.hub_owner() == "someone"
    monkeypatch.setenv("BCOP_HUB_OWNER", "")
    assert hub.hub_owner() == ""


def test_pretrained_models_are_the_classifier_folders_of_checkpoints() -> None:
    folders = [p for p in (ROOT / "checkpoints").iterdir() if (p / "config.json").is_file()]
    kinds = {p.name: json.loads((p / "config.json").read_text()).get("kind", "classifier") for p in folders}
    assert sorted(list_models(pretrained=True)) == sorted(
        name for name, kind in kinds.items() if kind == "classifier"
    )
    assert len(set(list_models(pretrained=True))) == len(list_models(pretrained=True)) >= 6
    assert set(list_models(pretrained=True)) <= set(list_models())


def test_every_shipped_checkpoint_carries_its_registry_name() -> None:
    """What loading by name checks (the models themselves load in tests/test_publish.py)."""
    for name in list_models(pretrained=True):
        config = json.loads((ROOT / "checkpoints" / name / "config.json").read_text())
        assert ModelConfig.from_dict(config).name == config["model_name"] == name
        with safe_open(str(ROOT / "checkpoints" / name / "model.safetensors"), framework="pt") as f:
            assert f.metadata()["model_name"] == name


def test_registry_name_loads_from_the_default_owner_when_nothing_is_local(
    saved: Saved, fake_hub: FakeHub
) -> None:
    """What a pip-installed library (no checkpoints/) does with BCOP_HUB_OWNER unset."""
    _publish(fake_hub, saved.folder, f"{hub.HUB_OWNER}/{NAME}")
    result = hub.load_model(NAME)
    assert (result.source, result.repo_id) == ("hub", f"bcop-lipschitz/{NAME}")
    assert torch.equal(_logits(result.model), saved.logits)


# --- the download arguments and one commit ---------------------------------------------------


def test_cache_dir_token_and_force_download_reach_the_hub_client(
    saved: Saved, fake_hub: FakeHub, tmp_path: Path
) -> None:
    _publish(fake_hub, saved.folder)
    cache = tmp_path / "my-cache"
    result = hub.load_model(REPO, cache_dir=cache, token="hf_secret")
    assert result.location.is_relative_to(cache)
    assert not (tmp_path / "hf-cache").exists()
    assert "Bearer hf_secret" in fake_hub.authorizations

    def weight_downloads() -> int:
        return sum(r.startswith("GET /lfs/") for r in fake_hub.requests)

    before = weight_downloads()
    hub.load_model(REPO, cache_dir=cache)
    assert weight_downloads() == before
    hub.load_model(REPO, cache_dir=cache, force_download=True)
    assert weight_downloads() == before + 1


def test_local_files_only_loads_from_the_hub_cache_without_a_request(saved: Saved, fake_hub: FakeHub) -> None:
    _publish(fake_hub, saved.folder)
    first = hub.load_model(REPO)
    asked = len(fake_hub.requests)
    again = hub.load_model(REPO, local_files_only=True)
    assert (again.source, again.location) == ("hub", first.location)
    assert torch.equal(_logits(again.model), saved.logits)
    with pytest.raises(
        RuntimeError, match=r"owner/bcop-large-mnist .*local_files_only is set and the Hub cache"
    ):
        hub.load_model("owner/bcop-large-mnist", local_files_only=True)
    assert len(fake_hub.requests) == asked


def test_config_weights_and_card_come_from_one_commit_when_a_push_lands_in_between(
    saved: Saved, fake_hub: FakeHub, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _publish(fake_hub, saved.folder)
    commit = fake_hub.commit(REPO)
    other = hub.save_model(create_model("plain-small-mnist"), tmp_path / "other", card="# other\n")
    download = huggingface_hub.hf_hub_download

    def push_after_the_config(repo_id: str, filename: str, **options: object) -> str:
        path = download(repo_id, filename, **options)
        if filename == "config.json":
            _publish(fake_hub, other)
        return path

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", push_after_the_config)
    result = hub.load_model(REPO)
    assert fake_hub.commit(REPO) != commit
    assert result.location.name == commit
    assert result.card == "# bcop-small-mnist\n"
    assert torch.equal(_logits(result.model), saved.logits)
    later = [r for r in fake_hub.hub_requests(REPO) if "config.json" not in r]
    assert later and all(f"/resolve/{commit}/" in r for r in later)


# --- what is loaded is checked, and errors name the file -------------------------------------


def _copy(saved: Saved, folder: Path) -> Path:
    shutil.copytree(saved.folder, folder)
    return folder


def _rewrite_weights(
    folder: Path, change: Callable[[dict[str, torch.Tensor]], None], **metadata: str
) -> None:
    path = folder / "model.safetensors"
    state = load_file(str(path))
    change(state)
    save_file(state, str(path), metadata={"format": "pt", "model_name": NAME, **metadata})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[1, 2]", r"config\.json must hold a JSON object of config fields, not a list"),
        ('"bcop"', r"config\.json must hold a JSON object of config fields, not a str"),
        ("{", r"config\.json is not valid JSON"),
        (
            '{"arch": "huge", "conv": "bcop", "dataset": "mnist"}',
            r"config\.json is not a valid bcop config.*huge",
        ),
        ('{"kind": "generator"}', r"config\.json describes a 'generator', not a classifier"),
    ],
)
def test_an_invalid_config_raises_value_error_naming_the_file(
    saved: Saved, tmp_path: Path, text: str, message: str
) -> None:
    folder = _copy(saved, tmp_path / NAME)
    (folder / "config.json").write_text(text)
    with pytest.raises(ValueError, match=message) as info:
        hub.load_folder(folder)
    assert str(folder / "config.json") in str(info.value)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_weights_raise_value_error_naming_the_file_and_the_tensor(
    saved: Saved, tmp_path: Path, value: float
) -> None:
    folder = _copy(saved, tmp_path / NAME)
    key = next(k for k in sorted(saved.model.state_dict()) if k.endswith("bias"))

    def poison(state: dict[str, torch.Tensor]) -> None:
        state[key][0] = value

    _rewrite_weights(folder, poison)
    with pytest.raises(ValueError, match=rf"model\.safetensors: tensor {re.escape(key)} has 1 non-finite"):
        hub.load_folder(folder)


def test_weights_that_are_not_float32_raise_value_error_naming_the_file_and_the_tensor(
    saved: Saved, tmp_path: Path
) -> None:
    folder = _copy(saved, tmp_path / NAME)
    key = sorted(saved.model.state_dict())[0]

    def widen(state: dict[str, torch.Tensor]) -> None:
        state[key] = state[key].double()

    _rewrite_weights(folder, widen)
    with pytest.raises(ValueError, match=rf"model\.safetensors: tensor {re.escape(key)} is torch\.float64"):
        hub.load_folder(folder)


def test_a_checkpoint_named_for_one_model_holding_another_is_refused_by_name(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("BCOP_HUB_OWNER", "")
    monkeypatch.setenv("BCOP_CHECKPOINTS", str(tmp_path))
    hub.save_model(create_model("plain-small-mnist"), tmp_path / NAME)
    with pytest.raises(ValueError, match=r"config\.json describes plain-small-mnist .*not bcop-small-mnist"):
        hub.load_model(NAME)
    # a folder path is loaded as what it holds
    assert hub.load_model(tmp_path / NAME).model.config.name == "plain-small-mnist"


def test_weights_whose_metadata_names_another_model_are_refused_by_name(
    saved: Saved, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("BCOP_HUB_OWNER", "")
    monkeypatch.setenv("BCOP_CHECKPOINTS", str(tmp_path))
    folder = _copy(saved, tmp_path / NAME)
    _rewrite_weights(folder, lambda state: None, model_name="bcop-large-mnist")
    with pytest.raises(
        ValueError, match=r"safetensors holds the weights of bcop-large-mnist, not bcop-small"
    ):
        hub.load_model(NAME)


def test_a_hub_repo_named_for_one_model_holding_another_is_refused_by_name(
    fake_hub: FakeHub, tmp_path: Path
) -> None:
    _publish(fake_hub, hub.save_model(create_model("plain-small-mnist"), tmp_path / "other"))
    with pytest.raises(ValueError, match=r"(?s)owner/bcop-small-mnist does not load.*describes plain-small"):
        hub.load_model(REPO)


# --- an unreachable Hub ----------------------------------------------------------------------

GUARD_S = 15.0  # a guard against retries and hangs (minutes before), not a speed target


@contextmanager
def _silent_server() -> Iterator[tuple[str, Callable[[], int]]]:
    """An endpoint that accepts connections and never answers, and a count of the connections
    made to it so far."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        listener.settimeout(0.5)
        held: list[socket.socket] = []

        def connections() -> int:
            while True:
                try:
                    held.append(listener.accept()[0])
                except TimeoutError:
                    return len(held)

        yield f"http://127.0.0.1:{listener.getsockname()[1]}", connections
        for conn in held:
            conn.close()


@pytest.mark.parametrize("server", ["refuses", "never answers"])
def test_unreachable_hub_falls_back_to_the_local_copy_within_seconds_and_warns_once(
    server: str, saved: Saved, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("BCOP_CHECKPOINTS", str(tmp_path / "checkpoints"))
    monkeypatch.setenv("BCOP_HUB_OWNER", "owner")
    hub.save_model(saved.model, tmp_path / "checkpoints" / NAME)
    with ExitStack() as stack:
        if server == "refuses":
            endpoint, connections = _unused_endpoint(), None
        else:
            endpoint, connections = stack.enter_context(_silent_server())
        point_client_at(monkeypatch, endpoint)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            results = within(GUARD_S, lambda: [hub.load_model(NAME) for _ in range(3)])
            with pytest.raises(
                RuntimeError, match=r"(?s)owner/bcop-large-mnist.*cannot be reached.*no local"
            ):
                within(GUARD_S, lambda: hub.load_model("bcop-large-mnist"))
        if connections is not None:
            assert connections() == 1  # one probe, then never asked again
    assert [str(w.message).split(" (")[0] for w in caught] == [
        f"the Hugging Face Hub at {endpoint} cannot be reached"
    ]
    assert all(r.source == "local" and torch.equal(_logits(r.model), saved.logits) for r in results)
    assert hub.hub_reachable() is False


def test_hub_offline_mode_skips_the_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert hub.hub_reachable() is False
    assert hub._reachable == {}


def test_a_hub_that_stops_answering_after_the_probe_is_unreachable_from_then_on(
    saved: Saved, fake_hub: FakeHub, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("BCOP_HUB_OWNER", "owner")
    hub.save_model(saved.model, tmp_path / "checkpoints" / NAME)
    assert hub.hub_reachable()
    fake_hub.close()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = within(GUARD_S, lambda: hub.load_model(NAME))
    assert [str(w.message).split(" (")[0] for w in caught] == [
        f"the Hugging Face Hub at {fake_hub.endpoint} cannot be reached"
    ]
    assert result.source == "local"
    assert hub.hub_reachable() is False


def test_a_pinned_revision_is_never_replaced_by_the_embedded_copy(
    saved: Saved, fake_hub: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BCOP_HUB_OWNER", "owner")  # the embedded copies are this owner's models
    _publish(fake_hub, saved.folder)
    hub.save_model(saved.model, tmp_path / "checkpoints" / NAME)
    with pytest.raises(RuntimeError, match=r"(?s)RevisionNotFound.*does not stand in for the revision 'v9'"):
        hub.load_model(REPO, revision="v9")
    del fake_hub.repos[REPO]
    with pytest.warns(UserWarning, match="could not download owner/bcop-small-mnist"):
        assert hub.load_model(REPO).source == "local"  # unpinned, the embedded copy stands in


def test_local_files_only_and_force_download_together_are_refused() -> None:
    with pytest.raises(ValueError, match="local_files_only and force_download exclude each other"):
        hub.load_model(REPO, local_files_only=True, force_download=True)

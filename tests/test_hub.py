"""Tests for bcop.hub: save / load round trips, and downloads by the real ``huggingface_hub``
client from a local server that answers like the Hub.

The server (a thread on 127.0.0.1) implements what ``hf_hub_download`` uses:

* ``HEAD`` / ``GET {endpoint}/{repo_id}/resolve/{revision}/{filename}``: regular files answer
  200 with ``X-Repo-Commit``, ``ETag`` (the git blob id) and ``Content-Length``; LFS files
  (``*.safetensors``) answer 302 to a CDN url on another origin with ``X-Linked-Etag`` (the
  sha256), ``X-Linked-Size`` and ``X-Repo-Commit``, as the Hub does;
* ``GET {cdn}/lfs/{sha256}``: the LFS content;
* 404 with ``X-Error-Code: RepoNotFound`` / ``EntryNotFound`` for unknown repos / files.

No test touches the network beyond 127.0.0.1.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import pickle
import socket
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import huggingface_hub
import pytest
import torch
from huggingface_hub import constants
from safetensors.torch import load_file, save_file

from bcop import hub
from bcop.models import MODEL_NAMES, LipschitzNet, create_model

REPO = "owner/bcop-small-mnist"
NAME = "bcop-small-mnist"
ROOT = Path(__file__).resolve().parent.parent


def _git_blob_id(body: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(body) + body).hexdigest()


class FakeHub:
    """A local server that answers ``hf_hub_download``'s requests like huggingface.co.

    Attributes:
        repos: ``{repo_id: {filename: content}}``.
        transfer: ``{sha256: bytes}``: what the CDN sends instead of the announced content (a
            download damaged on the way).
        requests: ``"METHOD path"`` of every request, in order.
    """

    def __init__(self) -> None:
        self.repos: dict[str, dict[str, bytes]] = {}
        self.transfer: dict[str, bytes] = {}
        self.requests: list[str] = []
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        port = self._server.server_port
        self.endpoint = f"http://127.0.0.1:{port}"
        self.cdn = f"http://localhost:{port}"  # another origin: the client does not follow it on HEAD
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def commit(self, repo_id: str) -> str:
        files = self.repos[repo_id]
        return hashlib.sha1(
            b"".join(_git_blob_id(files[name]).encode() for name in sorted(files))
        ).hexdigest()

    def hub_requests(self, repo_id: str) -> list[str]:
        return [r for r in self.requests if f"/{repo_id}/" in r]

    def _handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        hub_server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_HEAD(self) -> None:
                self._answer(head=True)

            def do_GET(self) -> None:
                self._answer(head=False)

            def _send(self, status: int, headers: dict[str, str], body: bytes, head: bool) -> None:
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if not head:
                    self.wfile.write(body)

            def _answer(self, head: bool) -> None:
                hub_server.requests.append(f"{self.command} {self.path}")
                parts = self.path.split("/")
                if len(parts) == 3 and parts[1] == "lfs":
                    return self._cdn(parts[2], head)
                if len(parts) != 6 or parts[3] != "resolve":
                    return self._send(404, {}, b"not found", head)
                repo_id, revision, filename = f"{parts[1]}/{parts[2]}", parts[4], parts[5]
                files = hub_server.repos.get(repo_id)
                if files is None:
                    return self._send(404, {"X-Error-Code": "RepoNotFound"}, b"Repository not found", head)
                commit = hub_server.commit(repo_id)
                if revision not in ("main", commit):
                    return self._send(404, {"X-Error-Code": "RevisionNotFound"}, b"Invalid rev id", head)
                if filename not in files:
                    headers = {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": commit}
                    return self._send(404, headers, b"Entry not found", head)
                body = files[filename]
                headers = {"X-Repo-Commit": commit, "ETag": f'"{_git_blob_id(body)}"'}
                if not filename.endswith(".safetensors"):
                    return self._send(200, headers, body, head)
                sha = hashlib.sha256(body).hexdigest()
                headers.update(
                    {
                        "X-Linked-Etag": f'"{sha}"',
                        "X-Linked-Size": str(len(body)),
                        "Location": f"{hub_server.cdn}/lfs/{sha}",
                    }
                )
                return self._send(302, headers, b"", head)

            def _cdn(self, sha: str, head: bool) -> None:
                blobs = {
                    hashlib.sha256(body).hexdigest(): body
                    for files in hub_server.repos.values()
                    for body in files.values()
                }
                if sha not in blobs:
                    return self._send(404, {}, b"no such blob", head)
                self._send(200, {"ETag": f'"{sha}"'}, hub_server.transfer.get(sha, blobs[sha]), head)

        return Handler


def _unused_endpoint() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def _point_client_at(monkeypatch: pytest.MonkeyPatch, endpoint: str) -> None:
    """What HF_ENDPOINT does when set before huggingface_hub is imported."""
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(
        constants, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}"
    )


@pytest.fixture
def fake_hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[FakeHub]:
    """A running FakeHub that ``huggingface_hub`` talks to, with its cache, and an empty
    checkpoints folder, all in ``tmp_path``."""
    server = FakeHub()
    _point_client_at(monkeypatch, server.endpoint)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("BCOP_HUB_REPO", raising=False)
    monkeypatch.setenv("BCOP_CHECKPOINTS", str(tmp_path / "checkpoints"))
    monkeypatch.setattr(hub, "_fell_back", set())
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
    assert all(name in str(info.value) for name in MODEL_NAMES)


def test_missing_path_raises_file_not_found_not_a_hub_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no model folder"):
        hub.load_model(tmp_path / "nothing" / "here")


def test_registry_name_without_hub_loads_the_embedded_checkpoint(
    saved: Saved, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("BCOP_HUB_REPO", raising=False)
    monkeypatch.setenv("BCOP_CHECKPOINTS", str(tmp_path))
    hub.save_model(saved.model, tmp_path / NAME)
    result = hub.load_model(NAME)
    assert (result.source, result.location) == ("local", tmp_path / NAME)
    assert torch.equal(_logits(result.model), saved.logits)
    assert hub.local_checkpoints() == [NAME]


def test_registry_name_without_hub_or_local_copy_lists_what_is_available(
    saved: Saved, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("BCOP_HUB_REPO", raising=False)
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


def test_registry_name_with_hub_namespace_downloads_from_the_hub(
    saved: Saved, fake_hub: FakeHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    _publish(fake_hub, saved.folder)
    monkeypatch.setenv("BCOP_HUB_REPO", "owner")
    result = hub.load_model(NAME)
    assert (result.source, result.repo_id) == ("hub", REPO)
    assert torch.equal(_logits(result.model), saved.logits)


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
    monkeypatch.setenv("BCOP_HUB_REPO", "owner")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        results = [hub.load_model(NAME) for _ in range(3)]
    assert len(caught) == 1
    assert "could not download owner/bcop-small-mnist" in str(caught[0].message)
    assert all((r.source, r.location) == ("local", tmp_path / "checkpoints" / NAME) for r in results)
    assert all(torch.equal(_logits(r.model), saved.logits) for r in results)
    # the later loads did not ask the Hub again
    assert len(fake_hub.hub_requests(REPO)) == 1


def test_unreachable_hub_falls_back_to_local_copy_with_one_warning(
    saved: Saved, fake_hub: FakeHub, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _point_client_at(monkeypatch, _unused_endpoint())  # nothing listens there: connection refused
    sleeps: list[float] = []
    monkeypatch.setattr(time, "sleep", sleeps.append)  # huggingface_hub's retry backoff
    hub.save_model(saved.model, tmp_path / "checkpoints" / NAME)
    monkeypatch.setenv("BCOP_HUB_REPO", "owner")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        results = [hub.load_model(NAME) for _ in range(3)]
    assert len(caught) == 1
    assert str(caught[0].message).startswith("could not download owner/bcop-small-mnist from the Hub")
    assert all(r.source == "local" and torch.equal(_logits(r.model), saved.logits) for r in results)
    assert 0 < len(sleeps) <= 5  # only the first load waited for the client's retries

    with pytest.raises(
        RuntimeError, match=r"(?s)owner/bcop-large-mnist.*no local copy.*available: bcop-small"
    ):
        hub.load_model("bcop-large-mnist")


def test_a_file_on_the_hub_is_what_huggingface_hub_returns(saved: Saved, fake_hub: FakeHub) -> None:
    """The server speaks the protocol the client expects, checked with the client's own call."""
    _publish(fake_hub, saved.folder)
    path = huggingface_hub.hf_hub_download(REPO, "config.json")
    assert Path(path).read_bytes() == (saved.folder / "config.json").read_bytes()
    with pytest.raises(huggingface_hub.errors.RemoteEntryNotFoundError):
        huggingface_hub.hf_hub_download(REPO, "pytorch_model.bin")

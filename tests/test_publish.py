"""End-to-end tests of ``python -m bcop.publish`` against the fake Hub of :mod:`tests.fakehub`.

Everything is published once per module, through the real ``HfApi`` upload path (LFS, since the
fake does not speak Xet); then the tests read what arrived the way the Hub and a Space would: the
files, the cards and the Space header through ``huggingface_hub``'s card classes, the Space's
variables, and the app started from the uploaded Space files against the fake Hub.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from gradio_client import Client
from huggingface_hub import ModelCard, ModelCardData, SpaceCard, constants, metadata_load
from safetensors.torch import save_file

from bcop import list_models
from bcop.publish import Upload, main, publish
from tests.fakehub import FakeHub, point_client_at, within

ROOT = Path(__file__).resolve().parent.parent
OWNER = "owner"
SPACE = "owner/bcop"
STARTUP_GUARD_S = 300.0  # a guard against a hung start on busy cores, not a speed target
PREFLIGHT_GUARD_S = 15.0  # the publishing check's bound (400 s of silence before)


GENERATOR = "toy-generator"
TOKEN = "hf_fake_token"  # the fake Hub takes any token


@dataclass
class Published:
    server: FakeHub
    uploads: list[Upload]
    checkpoints: Path


def _with_a_generator(folder: Path) -> Path:
    """The shipped checkpoints (linked) and a small generator folder beside them."""
    folder.mkdir()
    for shipped in (ROOT / "checkpoints").glob("*/"):
        (folder / shipped.name).symlink_to(shipped, target_is_directory=True)
    generator = folder / GENERATOR
    generator.mkdir()
    (generator / "config.json").write_text(json.dumps({"kind": "generator", "model_name": GENERATOR}))
    save_file({"weight": torch.zeros(4, 4)}, str(generator / "model.safetensors"))
    data = ModelCardData(library_name="bcop", license="mit", pipeline_tag="unconditional-image-generation")
    ModelCard.from_template(data).save(generator / "README.md")
    (generator / "samples.png").write_bytes((ROOT / "examples" / "digit_0_0.png").read_bytes())
    return folder


def _prepare_client(monkeypatch: pytest.MonkeyPatch, published: Published) -> None:
    point_client_at(monkeypatch, published.server.endpoint)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("BCOP_CHECKPOINTS", str(published.checkpoints))


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Published]:
    checkpoints = _with_a_generator(tmp_path_factory.mktemp("publish") / "checkpoints")
    result = Published(FakeHub(), [], checkpoints)
    with pytest.MonkeyPatch.context() as monkeypatch:
        _prepare_client(monkeypatch, result)
        result.uploads = publish(OWNER, "bcop", token=TOKEN)
        yield result
    result.server.close()


def _generators(published: Published) -> list[str]:
    return sorted(
        p.parent.name
        for p in published.checkpoints.glob("*/config.json")
        if json.loads(p.read_text()).get("kind") == "generator"
    )


def _sha256(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- what arrives -----------------------------------------------------------------------------


def test_every_model_folder_arrives_file_for_file(published: Published) -> None:
    folders = [p.name for p in published.checkpoints.iterdir() if (p / "config.json").is_file()]
    assert sorted(published.server.repos) == sorted(f"{OWNER}/{name}" for name in folders)
    for name in folders:
        local = published.checkpoints / name
        remote = published.server.repos[f"{OWNER}/{name}"]
        assert sorted(remote) == sorted(p.name for p in local.iterdir())
        for path, body in remote.items():
            expected = (local / path).read_bytes()
            if path == "README.md":  # the card names the repo it is published in
                expected = expected.replace(b"bcop-lipschitz/", b"owner/")
            assert body == expected, f"{name}/{path}"


def test_binaries_are_committed_through_lfs_and_text_as_regular_files(published: Published) -> None:
    committed: dict[str, str] = {}
    for _, repo_id, operations in published.server.commits:
        committed.update({f"{repo_id}/{path}": kind for path, kind in operations.items()})
    binary = [p for p in committed if p.endswith((".safetensors", ".png"))]
    # each model's weights, in its repo and the Space
    assert len(binary) >= 2 * len(list_models(pretrained=True))
    assert all(committed[p] == "lfsFile" for p in binary)
    assert all(committed[p] == "file" for p in committed if p.endswith((".py", ".md", ".json", ".txt")))


def test_uploaded_model_cards_parse_with_huggingface_hub(published: Published, tmp_path: Path) -> None:
    for name in list_models(pretrained=True):
        path = tmp_path / f"{name}.md"
        path.write_bytes(published.server.repos[f"{OWNER}/{name}"]["README.md"])
        card = ModelCard.load(path)
        assert card.data.library_name == "bcop"
        assert card.data.license == "mit"
        assert metadata_load(path) == card.data.to_dict()


def test_a_generator_is_published_as_its_own_kind_and_the_space_preloads_it(
    published: Published, tmp_path: Path
) -> None:
    repo = published.server.repos[f"{OWNER}/{GENERATOR}"]
    assert sorted(repo) == ["README.md", "config.json", "model.safetensors", "samples.png"]
    path = tmp_path / "README.md"
    path.write_bytes(repo["README.md"])
    assert ModelCard.load(path).data.pipeline_tag == "unconditional-image-generation"
    space_card = SpaceCard(published.server.spaces[SPACE]["README.md"].decode())
    assert f"{OWNER}/{GENERATOR}" in space_card.data.models  # the Wasserstein tab downloads it
    assert f"{OWNER}/{GENERATOR} config.json,model.safetensors,README.md" in space_card.data.preload_from_hub
    assert f"checkpoints/{GENERATOR}/config.json" in published.server.spaces[SPACE]


def test_the_space_header_links_and_preloads_the_model_repos(published: Published, tmp_path: Path) -> None:
    path = tmp_path / "README.md"
    path.write_bytes(published.server.spaces[SPACE]["README.md"])
    card = SpaceCard.load(path)
    repos = [f"{OWNER}/{name}" for name in [*list_models(pretrained=True), *_generators(published)]]
    assert card.data.models == repos
    assert [entry.split()[0] for entry in card.data.preload_from_hub] == repos
    assert (card.data.sdk, card.data.python_version, card.data.license) == ("gradio", "3.11", "mit")
    assert card.data.app_file in published.server.spaces[SPACE]
    assert len(card.data.short_description) <= 60
    assert metadata_load(path)["models"] == repos
    assert published.server.space_sdks[SPACE] == "gradio"
    # the body below the header is the repository's README, naming the owner's repos
    body = SpaceCard.load(ROOT / "README.md").text.replace("bcop-lipschitz/", "owner/")
    assert card.text.strip() == body.strip()


def test_the_space_holds_the_app_the_runtime_requirements_and_the_fallback_models(
    published: Published,
) -> None:
    files = published.server.spaces[SPACE]
    for name in (
        "app.py",
        "pyproject.toml",
        "LICENSE",
        ".gitattributes",
        "bcop/hub.py",
        "bcop/layers/conv.py",
    ):
        assert files[name] == (ROOT / name).read_bytes(), name
    for name in list_models(pretrained=True):
        weights = (ROOT / "checkpoints" / name / "model.safetensors").read_bytes()
        assert files[f"checkpoints/{name}/model.safetensors"] == weights
    assert not [p for p in files if "__pycache__" in p or p.startswith(("tests/", "benchmarks/", ".ci/"))]


def test_the_space_variable_points_the_app_at_the_owner(published: Published) -> None:
    assert published.server.variables[SPACE] == {"BCOP_HUB_OWNER": OWNER}


def test_publishing_again_unchanged_uploads_and_commits_nothing(
    published: Published, monkeypatch: pytest.MonkeyPatch
) -> None:
    _prepare_client(monkeypatch, published)
    before, commits = len(published.server.requests), len(published.server.commits)
    publish(OWNER, "bcop", token=TOKEN)
    assert not [r for r in published.server.requests[before:] if r.startswith("PUT")]
    assert len(published.server.commits) == commits  # nothing changed, so no empty commits


def test_publishing_removes_what_is_no_longer_shipped(
    published: Published, monkeypatch: pytest.MonkeyPatch
) -> None:
    _prepare_client(monkeypatch, published)
    published.server.spaces[SPACE]["demo/retired_tab.py"] = b"import nothing\n"
    published.server.repos[f"{OWNER}/bcop-small-mnist"]["pytorch_model.bin"] = b"\x00old weights"
    publish(OWNER, "bcop", token=TOKEN)
    assert "demo/retired_tab.py" not in published.server.spaces[SPACE]
    assert "pytorch_model.bin" not in published.server.repos[f"{OWNER}/bcop-small-mnist"]
    assert "app.py" in published.server.spaces[SPACE]


def test_dry_run_lists_the_repos_and_sends_nothing(
    published: Published, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _prepare_client(monkeypatch, published)
    before = len(published.server.requests)
    main(["--owner", "someone", "--space", "demo", "--dry-run"])
    lines = capsys.readouterr().out.splitlines()
    generators = _generators(published)
    assert GENERATOR in generators
    assert [line.split(":")[0] for line in lines] == [
        *(f"would upload model someone/{name}" for name in [*list_models(pretrained=True), *generators]),
        "would upload space someone/demo",
    ]
    assert len(published.server.requests) == before


def test_the_space_installs_cpu_torch_and_leaves_gradio_to_its_sdk_version(published: Published) -> None:
    requirements = published.server.spaces[SPACE]["requirements.txt"].decode().splitlines()
    ours = {
        line.split("==")[0]: line.split("==")[1]
        for line in (ROOT / "requirements.txt").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    }
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in requirements
    pins = dict(line.split("==") for line in requirements if "==" in line and not line.startswith("#"))
    assert pins["torch"] == ours["torch"] + "+cpu" and pins["torchvision"] == ours["torchvision"] + "+cpu"
    assert "gradio" not in pins and "gradio" in ours  # sdk_version installs it
    header = SpaceCard(published.server.spaces[SPACE]["README.md"].decode()).data
    assert header.sdk_version == ours["gradio"]
    assert {k: v for k, v in pins.items() if k not in ("torch", "torchvision")} == {
        k: v for k, v in ours.items() if k not in ("torch", "torchvision", "gradio")
    }
    assert "+cpu" not in (ROOT / "requirements.txt").read_text(), "our own machines keep PyPI's build"


@pytest.mark.parametrize("hub", ["no token", "offline mode", "closed port", "hanging endpoint", "bad token"])
def test_publishing_without_a_hub_or_a_token_says_what_to_do_in_one_line(
    hub: str, published: Published, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _prepare_client(monkeypatch, published)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    server = FakeHub()
    point_client_at(monkeypatch, server.endpoint)
    argv = ["--owner", OWNER, "--token", TOKEN]
    expected = "cannot be reached"
    if hub == "no token":
        argv, expected = ["--owner", OWNER], "no Hub token: log in with `hf auth login`"
    elif hub == "offline mode":
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
        expected = "offline mode is on (HF_HUB_OFFLINE is set)"
    elif hub == "closed port":
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            point_client_at(monkeypatch, f"http://127.0.0.1:{s.getsockname()[1]}")
    elif hub == "hanging endpoint":
        server.fault = "hang"
    else:
        server.user = None  # refuses every token
        expected = "refused the token (HTTP 401)"
    with pytest.raises(SystemExit) as exit_info:
        within(PREFLIGHT_GUARD_S, lambda: main(argv))
    message = str(exit_info.value.code)
    assert message.startswith("nothing was published: ") and expected in message, message
    assert "\n" not in message and "Traceback" not in message
    assert not [r for r in server.requests if not r.endswith("/api/whoami-v2")], "nothing was uploaded"
    server.close()


# --- using what arrived -----------------------------------------------------------------------


def _wait_for(condition: Callable[[], bool], process: subprocess.Popen[bytes], log: Path, what: str) -> None:
    deadline = time.monotonic() + STARTUP_GUARD_S
    while not condition():
        assert process.poll() is None, f"the app exited before {what}:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"no {what} after {STARTUP_GUARD_S} s:\n{log.read_text()[-3000:]}"
        time.sleep(0.5)


def _serves(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status == 200
    except OSError:
        return False


def test_the_uploaded_space_starts_as_a_space_does_and_loads_every_model_from_the_hub(
    published: Published, tmp_path: Path
) -> None:
    server = published.server
    space = server.write_space(SPACE, tmp_path / "space")
    port = _free_port()
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("PYTHONPATH", "BCOP_CHECKPOINTS", "HF_TOKEN")
    }
    env.update(
        {
            "HF_ENDPOINT": server.endpoint,
            "HF_HOME": str(tmp_path / "hf-home"),
            "HF_HUB_CACHE": str(tmp_path / "hf-cache"),
            "HF_HUB_DISABLE_PROGRESS_BARS": "1",
            "GRADIO_ANALYTICS_ENABLED": "False",
            "GRADIO_SERVER_NAME": "0.0.0.0",
            "GRADIO_SERVER_PORT": str(port),
            "SPACE_ID": SPACE,
            **server.variables[SPACE],
        }
    )
    log = tmp_path / "app.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "app.py"], cwd=space, env=env, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        _wait_for(lambda: _serves(f"http://127.0.0.1:{port}/"), process, log, "page")
        overview = Client(f"http://127.0.0.1:{port}/", verbose=False).predict(api_name="/models")
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
    rows = {row.split("|")[1].strip(): row for row in overview.splitlines() if row.startswith("| ")}
    for name in list_models(pretrained=True):
        assert f"Hub: [{OWNER}/{name}]" in rows[name], rows[name]  # loaded from the Hub, not checkpoints/
    downloads = {r.split("/")[-1] for r in server.requests if r.startswith("GET /lfs/")}
    assert {
        _sha256(server.repos[f"{OWNER}/{n}"]["model.safetensors"]) for n in list_models(pretrained=True)
    } <= downloads


def _git_repo(folder: Path) -> Path:
    """``folder`` as a git repository of one commit holding all its files."""
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@localhost", "-c", "init.defaultBranch=main"]
    for command in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "the Space's files"]):
        subprocess.run([*git, *command], cwd=folder, check=True, capture_output=True, timeout=120)
    return folder


def _fresh_venv(folder: Path) -> Path:
    """A new virtual environment whose base packages are this one's (torch and the rest), not
    the base interpreter's: ``--system-site-packages`` alone gives the latter. Returns its python."""
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", "--system-site-packages", str(folder)],
        check=True,
        timeout=120,
    )
    site = next((folder / "lib").glob("python3*/site-packages"))
    (site / "outer_environment.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return folder / "bin" / "python"


@pytest.mark.slow
def test_the_cards_install_line_installs_the_library_from_exactly_the_spaces_files(
    published: Published, tmp_path: Path
) -> None:
    """The card's ``pip install "bcop @ git+https://huggingface.co/spaces/OWNER/bcop"``, with the
    Space's url replaced by a git copy of what was uploaded to it, in a fresh environment
    (offline: no dependencies, no build isolation); then the library finds the models on the Hub."""
    card = published.server.repos[f"{OWNER}/bcop-small-mnist"]["README.md"].decode()
    line = re.search(r'pip install "(bcop @ git\+https://huggingface\.co/spaces/[^"]+)"', card)
    assert line is not None, "the card has an install line"
    space = _git_repo(published.server.write_space(SPACE, tmp_path / "space"))
    requirement = line.group(1).replace(f"https://huggingface.co/spaces/{SPACE}", f"file://{space}")
    python = _fresh_venv(tmp_path / "venv")
    install = [str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index"]
    result = subprocess.run([*install, requirement], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "BCOP_CHECKPOINTS")}
    env.update(
        {
            "HF_ENDPOINT": published.server.endpoint,
            "HF_HUB_CACHE": str(tmp_path / "hf-cache"),
            "BCOP_HUB_OWNER": OWNER,
            "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        }
    )
    code = (
        "import bcop, bcop.hub; bcop.create_model('bcop-small-mnist', pretrained=True); "
        "r = bcop.hub.load_model('bcop-small-mnist'); "
        "print(bcop.__file__, r.source, r.repo_id, bcop.hub.checkpoints_dir().is_dir())"
    )
    result = subprocess.run(
        [str(python), "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    module, source_kind, repo_id, has_checkpoints = result.stdout.split()
    assert Path(module).is_relative_to(tmp_path / "venv"), "imported from the installed copy"
    assert (source_kind, repo_id, has_checkpoints) == ("hub", f"{OWNER}/bcop-small-mnist", "False")


def test_the_fake_hub_reads_chunked_bodies_and_answers_a_body_that_is_not_json_with_a_400() -> None:
    """The fake Hub takes a JSON body sent in chunks, and answers a malformed one with an HTTP
    error naming what arrived (not a dropped connection and a traceback from its thread)."""
    import http.client

    server = FakeHub()
    try:
        connection = http.client.HTTPConnection(server.endpoint.removeprefix("http://"), timeout=10)
        body = json.dumps({"organization": "owner", "name": "chunked", "type": "model"}).encode()
        connection.request("POST", "/api/repos/create", body=iter([body[:7], body[7:]]), encode_chunked=True)
        answer = connection.getresponse()
        answer.read()
        assert answer.status == 200 and "owner/chunked" in server.repos
        connection.request("POST", "/api/validate-yaml", body=b"", headers={"Content-Length": "0"})
        answer = connection.getresponse()
        assert answer.status == 400 and "is not JSON" in json.loads(answer.read())["error"]
    finally:
        server.close()

"""Publish the pretrained models and the demo Space to the Hugging Face Hub in one command::

    python -m bcop.publish --owner OWNER [--space NAME] [--token TOKEN] [--private] [--dry-run]

It first asks the Hub who the token belongs to, under the Hub deadline, and stops with one line
saying what to do when there is no token, the Hub cannot be reached or offline mode is on.

Each model folder of ``checkpoints/`` becomes the model repo ``OWNER/NAME``: the classifiers of
:func:`bcop.list_models` ``(pretrained=True)`` and, as their own kind with their own card, any generator
(``"kind": "generator"`` in its config). Then the Space ``OWNER/NAME`` (default ``bcop``)
receives the app (``app.py``, ``demo/``, ``bcop/``, ``examples/``), what ``pip`` needs to
install the library from it (``pyproject.toml``, ``MANIFEST.in``, ``docs/pypi.md``), the
Space's ``requirements.txt`` (:func:`space_requirements`), ``LICENSE``, ``.gitattributes``, the
model folders as its fallback, and the README whose YAML header lists the model repos under
``models`` and ``preload_from_hub``; its variable ``BCOP_HUB_OWNER`` is set to ``OWNER`` so
that the app loads them from the Hub.

Everything goes through ``HfApi.create_repo`` and one ``create_commit`` per repo (binaries
through Xet or LFS as the Hub requires; files no longer shipped are deleted; unchanged files are
skipped), never a git push, so the repository's history does not travel. A card that names
:data:`bcop.hub.HUB_OWNER` names ``OWNER`` instead when they differ.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from bcop.hub import (
    CARD_FILE,
    CONFIG_FILE,
    GENERATOR_KIND,
    HUB_OWNER,
    OWNER_ENV,
    SPACE_NAME,
    call_hub,
    checkpoints_dir,
    hub_owner,
    load_folder,
)
from bcop.models import list_models

if TYPE_CHECKING:
    from huggingface_hub import HfApi

__all__ = [
    "PublishError",
    "Upload",
    "check_login",
    "model_uploads",
    "space_requirements",
    "space_upload",
    "publish",
    "publish_model",
    "main",
]

ROOT = Path(__file__).resolve().parent.parent
# The app, and what `pip install "bcop @ git+https://huggingface.co/spaces/OWNER/bcop"` needs.
SPACE_FILES = ("app.py", "pyproject.toml", "MANIFEST.in", "docs/pypi.md", "LICENSE", ".gitattributes")
SPACE_FOLDERS = ("bcop", "demo", "examples")
PRELOADED_FILES = (CONFIG_FILE, "model.safetensors", CARD_FILE)
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
CPU_BUILDS = ("torch", "torchvision")  # on the CPU index as VERSION+cpu, without CUDA's 4 GB


class PublishError(RuntimeError):
    """Publishing cannot start or failed; the message is one line saying what to do."""


@dataclass
class Upload:
    """One repo to publish: its id and type and ``{path in repo: local file or content}``."""

    repo_id: str
    repo_type: str
    files: dict[str, Path | bytes]

    def size(self) -> int:
        return sum(len(f) if isinstance(f, bytes) else f.stat().st_size for f in self.files.values())


def _for_owner(text: str, owner: str) -> str:
    """A card's text with the repos of :data:`HUB_OWNER` moved to ``owner``."""
    return text if owner == HUB_OWNER else text.replace(f"{HUB_OWNER}/", f"{owner}/")


def _folder_files(folder: Path, prefix: str, owner: str) -> dict[str, Path | bytes]:
    """The files under ``folder`` (no caches, no hidden files), cards rewritten for ``owner``."""
    files: dict[str, Path | bytes] = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        relative = path.relative_to(folder)
        if any(part.startswith(".") or part == "__pycache__" for part in relative.parts):
            continue
        if path.suffix == ".pyc":
            continue
        name = f"{prefix}{relative.as_posix()}"
        files[name] = _for_owner(path.read_text(), owner).encode() if path.name == CARD_FILE else path
    return files


def _kind(folder: Path) -> str:
    config = json.loads((folder / CONFIG_FILE).read_text())
    return config.get("kind", "classifier") if isinstance(config, dict) else "invalid"


def model_folders(root: Path | None = None) -> list[Path]:
    """The folders to publish: every classifier of ``list_models(pretrained=True)``, then the generators.

    Raises:
        FileNotFoundError: a shipped classifier is missing.
        ValueError: a shipped classifier does not load under its name.
    """
    root = checkpoints_dir() if root is None else root
    missing = [name for name in list_models(pretrained=True) if not (root / name / CONFIG_FILE).is_file()]
    if missing:
        names = ", ".join(missing)
        raise FileNotFoundError(f"{root} lacks the shipped models {names}; restore checkpoints/ first")
    for name in list_models(pretrained=True):
        load_folder(root / name, expected_name=name)  # refuse to publish what would not load
    generators = sorted(
        p for p in root.iterdir() if (p / CONFIG_FILE).is_file() and _kind(p) == GENERATOR_KIND
    )
    return [root / name for name in list_models(pretrained=True)] + generators


def model_uploads(owner: str, folders: Sequence[Path]) -> list[Upload]:
    """One model repo ``owner/NAME`` per model folder."""
    return [Upload(f"{owner}/{folder.name}", "model", _folder_files(folder, "", owner)) for folder in folders]


def space_header(readme: str, owner: str, names: Sequence[str] | None = None) -> str:
    """The README with its Space header naming the model repos ``owner/NAME`` of ``names``
    (default: the pretrained classifiers; publishing passes them and the generators) under
    ``models`` and ``preload_from_hub``, which downloads them into the Space's Hub cache at
    build time."""
    from huggingface_hub import SpaceCard

    card = SpaceCard(_for_owner(readme, owner))
    repos = [f"{owner}/{name}" for name in (list_models(pretrained=True) if names is None else names)]
    card.data.models = repos
    card.data.preload_from_hub = [f"{repo} {','.join(PRELOADED_FILES)}" for repo in repos]
    return str(card)


def space_requirements(runtime: str) -> str:
    """The Space's ``requirements.txt`` from ours (``runtime``): torch and torchvision as their
    CPU builds from the PyTorch CPU index (Spaces on CPU hardware have no GPU for CUDA's
    libraries), and no gradio pin, which the header's ``sdk_version`` sets.

    Raises:
        ValueError: a line is not a plain ``name==version`` pin.
    """
    lines = [
        "# Written by bcop.publish from the repository's requirements.txt: CPU builds of torch.",
        f"--extra-index-url {TORCH_CPU_INDEX}",
    ]
    for line in runtime.splitlines():
        pin = line.split("#")[0].strip()
        if not pin:
            continue
        name, sep, version = pin.partition("==")
        if not sep or not name.strip() or not version.strip():
            raise ValueError(f"requirements.txt: {line!r} is not a name==version pin")
        if name.strip().lower() == "gradio":  # the Space's sdk_version installs it
            continue
        cpu = "+cpu" if name.strip().lower() in CPU_BUILDS else ""
        lines.append(f"{name.strip()}=={version.strip()}{cpu}")
    return "\n".join(lines) + "\n"


def space_upload(space_id: str, owner: str, folders: Sequence[Path], source: Path = ROOT) -> Upload:
    """The Space's files, from a checkout of this repository (``source``), with the model
    folders as its ``checkpoints/``."""
    files: dict[str, Path | bytes] = {n: source / n for n in SPACE_FILES if (source / n).is_file()}
    files["requirements.txt"] = space_requirements((source / "requirements.txt").read_text()).encode()
    for name in SPACE_FOLDERS:
        if (source / name).is_dir():
            files.update(_folder_files(source / name, f"{name}/", owner))
    for folder in folders:
        files.update(_folder_files(folder, f"checkpoints/{folder.name}/", owner))
    readme = (source / CARD_FILE).read_text()
    files[CARD_FILE] = space_header(readme, owner, [folder.name for folder in folders]).encode()
    return Upload(space_id, "space", files)


def check_login(token: str | None = None) -> str:
    """Who the token (default: the saved login or ``$HF_TOKEN``) belongs to, asked of the Hub
    under its deadline (:func:`bcop.hub.hub_timeout`).

    Raises:
        PublishError: offline mode, no token, an unreachable Hub or a refused token; the
            message says what to do.
    """
    from huggingface_hub import HfApi, constants, get_token
    from huggingface_hub.errors import HfHubHTTPError

    if constants.HF_HUB_OFFLINE:
        raise PublishError("offline mode is on (HF_HUB_OFFLINE is set): unset it to publish")
    if token is None and get_token() is None:
        raise PublishError("no Hub token: log in with `hf auth login`, set HF_TOKEN, or pass --token")
    try:
        return call_hub(lambda: HfApi(token=token).whoami()["name"], "asking the Hub who the token is")
    except HfHubHTTPError as err:
        status = err.response.status_code if err.response is not None else "no"
        if status in (401, 403):
            raise PublishError(
                f"the Hub at {constants.ENDPOINT} refused the token (HTTP {status}): log in again with "
                "`hf auth login` or pass a valid --token"
            ) from err
        raise PublishError(
            f"the Hub at {constants.ENDPOINT} failed (HTTP {status}): try again later"
        ) from err
    except Exception as err:  # no answer in time, refused or dropped: no HTTP status at all
        raise PublishError(
            f"the Hub at {constants.ENDPOINT} cannot be reached ({type(err).__name__}): check the network "
            "(and HF_ENDPOINT), then publish again"
        ) from err


def _commit(api: HfApi, upload: Upload, private: bool, message: str) -> str:
    """Create the repo if needed and make it hold exactly the upload's files (plus the
    ``.gitattributes`` the Hub creates) in one commit; returns the repo url."""
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete

    repo_id, repo_type = upload.repo_id, upload.repo_type
    space = {"space_sdk": "gradio"} if repo_type == "space" else {}
    url = api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True, **space)
    stale = set(api.list_repo_files(repo_id, repo_type=repo_type)) - set(upload.files) - {".gitattributes"}
    operations: list[CommitOperationAdd | CommitOperationDelete] = [
        CommitOperationAdd(path, content if isinstance(content, bytes) else str(content))
        for path, content in upload.files.items()
    ]
    operations += [CommitOperationDelete(path) for path in sorted(stale)]
    api.create_commit(repo_id, operations, commit_message=message, repo_type=repo_type)
    return str(url)


def publish_model(folder: str | Path, repo_id: str, token: str | None = None, private: bool = False) -> str:
    """Upload one model folder to the model repo ``repo_id`` (created if needed); returns its url.

    Raises:
        ValueError: the folder does not load as a bcop classifier.
    """
    from huggingface_hub import HfApi

    folder = Path(folder)
    load_folder(folder)
    owner = repo_id.split("/", 1)[0]
    upload = Upload(repo_id, "model", _folder_files(folder, "", owner))
    return _commit(HfApi(token=token), upload, private, f"Upload {folder.name} with bcop.publish")


def publish(
    owner: str,
    space: str | None = SPACE_NAME,
    token: str | None = None,
    private: bool = False,
    dry_run: bool = False,
    source: Path = ROOT,
) -> list[Upload]:
    """Publish every model repo and then the Space (``space=None``: no Space).

    Args:
        owner: Hub user or organisation.
        space: Space name under ``owner``.
        token: Hub token with write access (default: the saved login or ``$HF_TOKEN``).
        private: create the repos private.
        dry_run: only build and return the uploads.
        source: the checkout holding the app files.

    Returns:
        The uploads, models first.

    Raises:
        PublishError: no token, offline mode, or the Hub cannot be reached (before any upload).
    """
    from huggingface_hub import HfApi

    if not dry_run:
        check_login(token)  # before anything else: one line at once when it cannot work
    folders = model_folders()
    uploads = model_uploads(owner, folders)
    if space:
        uploads.append(space_upload(f"{owner}/{space}", owner, folders, source))
    if dry_run:
        return uploads
    api = HfApi(token=token)
    for upload in uploads:
        _commit(api, upload, private, "Publish with bcop.publish")
    if space:
        api.add_space_variable(
            f"{owner}/{space}", OWNER_ENV, owner, description="Hub owner of the models the app loads"
        )
    return uploads


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Publish the bcop models and the demo Space to the Hub")
    parser.add_argument("--owner", default=hub_owner() or HUB_OWNER, help="Hub user or organisation")
    parser.add_argument("--space", default=SPACE_NAME, help=f"Space name (default {SPACE_NAME})")
    parser.add_argument("--no-space", action="store_true", help="publish the model repos only")
    parser.add_argument("--token", default=None, help="Hub token (default: the saved login or $HF_TOKEN)")
    parser.add_argument("--private", action="store_true", help="create the repos private")
    parser.add_argument("--dry-run", action="store_true", help="list what would be uploaded, upload nothing")
    args = parser.parse_args(argv)
    space = None if args.no_space else args.space
    from huggingface_hub.errors import HfHubHTTPError

    try:
        uploads = publish(args.owner, space, args.token, args.private, args.dry_run)
    except (FileNotFoundError, ValueError, PublishError) as err:
        sys.exit(f"nothing was published: {err}")
    except HfHubHTTPError as err:
        sys.exit(
            f"publishing to {args.owner} failed: {err}\nLog in with `hf auth login` (a token that may "
            f"write to {args.owner}) or pass --token."
        )
    for upload in uploads:
        verb = "would upload" if args.dry_run else "uploaded"
        print(
            f"{verb} {upload.repo_type} {upload.repo_id}: {len(upload.files)} files, "
            f"{upload.size() / 1e6:.1f} MB"
        )


if __name__ == "__main__":
    main()

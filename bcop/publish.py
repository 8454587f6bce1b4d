"""Publish the pretrained models and the demo Space to the Hugging Face Hub in one command::

    python -m bcop.publish --owner OWNER [--space NAME] [--token TOKEN] [--private] [--dry-run]

Each model folder of ``checkpoints/`` becomes the model repo ``OWNER/NAME``: the classifiers of
:func:`bcop.list_models` ``(pretrained=True)`` and, as their own kind with their own card, any generator
(``"kind": "generator"`` in its config). Then the Space ``OWNER/NAME`` (default ``bcop``)
receives the app (``app.py``, ``demo/``, ``bcop/``, ``examples/``), the runtime
``requirements.txt``, ``LICENSE``, ``.gitattributes``, the model folders as its fallback, and
the README whose YAML header lists the classifier repos under ``models`` and
``preload_from_hub``; its variable ``BCOP_HUB_REPO`` is set to ``OWNER`` so that the app loads
them from the Hub.

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
    HUB_OWNER,
    checkpoints_dir,
    hub_owner,
    load_folder,
)
from bcop.models import list_models

if TYPE_CHECKING:
    from huggingface_hub import HfApi

__all__ = ["SPACE_NAME", "Upload", "model_uploads", "space_upload", "publish", "publish_model", "main"]

SPACE_NAME = "bcop"
ROOT = Path(__file__).resolve().parent.parent
SPACE_FILES = ("app.py", "requirements.txt", "LICENSE", ".gitattributes")
SPACE_FOLDERS = ("bcop", "demo", "examples")
PRELOADED_FILES = (CONFIG_FILE, "model.safetensors", CARD_FILE)
GENERATOR_KIND = "generator"


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


def space_header(readme: str, owner: str) -> str:
    """The README with its Space header naming the classifier repos of ``owner`` (``models`` and
    ``preload_from_hub``, which downloads them into the Space's Hub cache at build time)."""
    from huggingface_hub import SpaceCard

    card = SpaceCard(_for_owner(readme, owner))
    repos = [f"{owner}/{name}" for name in list_models(pretrained=True)]
    card.data.models = repos
    card.data.preload_from_hub = [f"{repo} {','.join(PRELOADED_FILES)}" for repo in repos]
    return str(card)


def space_upload(space_id: str, owner: str, folders: Sequence[Path], source: Path = ROOT) -> Upload:
    """The Space's files, from a checkout of this repository (``source``), with the model
    folders as its ``checkpoints/``."""
    files: dict[str, Path | bytes] = {n: source / n for n in SPACE_FILES if (source / n).is_file()}
    for name in SPACE_FOLDERS:
        if (source / name).is_dir():
            files.update(_folder_files(source / name, f"{name}/", owner))
    for folder in folders:
        files.update(_folder_files(folder, f"checkpoints/{folder.name}/", owner))
    files[CARD_FILE] = space_header((source / CARD_FILE).read_text(), owner).encode()
    return Upload(space_id, "space", files)


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
    """
    from huggingface_hub import HfApi

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
            f"{owner}/{space}", "BCOP_HUB_REPO", owner, description="Hub owner of the models the app loads"
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
    except (FileNotFoundError, ValueError) as err:
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

"""Save, load and publish models in Hugging Face Hub layout.

A model folder (a local ``checkpoints/NAME/`` or a Hub model repo) holds:

* ``config.json`` -- the :class:`~bcop.models.ModelConfig` fields plus ``model_name`` and
  ``library_name``; everything needed to rebuild the network;
* ``model.safetensors`` -- the state dict (weights are only ever read from safetensors, never
  unpickled);
* ``README.md`` -- the model card.

:func:`load_model` accepts a local folder, a Hub repo id (``"user/bcop-large-mnist"``) or a
registry name (``"bcop-large-mnist"``). A registry name is looked up on the Hub under the
namespace in ``$BCOP_HUB_REPO`` (or the ``hub_namespace`` argument) when one is configured,
and in the embedded ``checkpoints/`` folder otherwise, or when the Hub cannot be reached (with
one warning per repo saying so; later loads of that repo in the same process go straight to the
embedded copy, so an offline app does not wait for the Hub client's retries again).

``huggingface_hub`` checks a download's size but not its content; :func:`load_model` also checks
the weights' sha256 against the Hub's LFS etag and deletes a mismatching cached copy.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from bcop.models import MODEL_NAMES, LipschitzNet, ModelConfig, build_model

__all__ = [
    "CONFIG_FILE",
    "WEIGHTS_FILE",
    "CARD_FILE",
    "EVAL_RESULTS_FILE",
    "CorruptDownloadError",
    "LoadedModel",
    "checkpoints_dir",
    "local_checkpoints",
    "save_model",
    "load_model",
    "load_folder",
    "push_to_hub",
]

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "README.md"
EVAL_RESULTS_FILE = "eval_results.json"
LIBRARY_NAME = "bcop"
_SHA256 = re.compile(r"[0-9a-f]{64}")
_fell_back: set[str] = set()  # Hub repos that failed this session and have a local copy


class CorruptDownloadError(ValueError):
    """A downloaded file's content does not match the checksum the Hub announced for it."""


@dataclass
class LoadedModel:
    """A model and where it came from.

    Attributes:
        model: the network, in eval mode.
        source: ``"local"`` or ``"hub"``.
        location: the folder it was read from (for the Hub: the local cache snapshot).
        repo_id: the Hub repo id when downloaded, else None.
        card: the model card text ("" when there is none).
    """

    model: LipschitzNet
    source: str
    location: Path
    repo_id: str | None
    card: str


def checkpoints_dir() -> Path:
    """The embedded checkpoints folder: ``$BCOP_CHECKPOINTS``, else ``checkpoints/`` beside the
    package."""
    env = os.environ.get("BCOP_CHECKPOINTS")
    return Path(env) if env else Path(__file__).resolve().parent.parent / "checkpoints"


def local_checkpoints() -> list[str]:
    """Names of the models present in the checkpoints folder, sorted."""
    root = checkpoints_dir()
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / CONFIG_FILE).is_file())


def save_model(model: LipschitzNet, folder: str | Path, card: str | None = None) -> Path:
    """Write ``config.json``, ``model.safetensors`` and (optionally) the model card.

    Args:
        model: a network built by :mod:`bcop.models`.
        folder: destination (created if needed).
        card: model card markdown, written as ``README.md``.

    Returns:
        The folder.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = {**model.config.to_dict(), "model_name": model.config.name, "library_name": LIBRARY_NAME}
    (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(folder / WEIGHTS_FILE), metadata={"format": "pt", "model_name": model.config.name})
    if card is not None:
        (folder / CARD_FILE).write_text(card)
    return folder


def load_folder(folder: str | Path) -> tuple[LipschitzNet, str]:
    """Rebuild a network from a model folder; returns the model (eval mode) and its card.

    Raises:
        FileNotFoundError: the folder lacks ``config.json`` or ``model.safetensors``.
        ValueError: the config or the weights are corrupt or do not match each other.
    """
    folder = Path(folder)
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{folder} has no {name}: not a bcop model folder")
    try:
        config = ModelConfig.from_dict(json.loads((folder / CONFIG_FILE).read_text()))
    except (json.JSONDecodeError, TypeError, ValueError) as err:
        raise ValueError(f"{folder / CONFIG_FILE} is not a valid bcop config: {err}") from err
    try:
        state = load_file(str(folder / WEIGHTS_FILE))
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(
            f"{folder / WEIGHTS_FILE} is corrupt or truncated ({err}); delete it and download "
            "or save the model again"
        ) from err
    model = build_model(config)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ValueError(f"{folder / WEIGHTS_FILE} does not match {config.name}: {err}") from err
    card_path = folder / CARD_FILE
    return model.eval(), card_path.read_text() if card_path.is_file() else ""


def _verify_lfs_file(pointer: Path, repo_id: str) -> None:
    """Compare a cached LFS file with its sha256, the etag that names its blob in the Hub cache.

    A mismatch (a download damaged in transit: the Hub client only checks its size) deletes the
    cached blob and snapshot link, so that the next load downloads the file again.

    Raises:
        CorruptDownloadError: the content does not match.
    """
    blob = pointer.resolve()
    if not _SHA256.fullmatch(blob.name):  # not an LFS blob, or a cache without symlinks
        return
    with blob.open("rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    if digest != blob.name:
        pointer.unlink(missing_ok=True)
        blob.unlink(missing_ok=True)
        raise CorruptDownloadError(
            f"{pointer.name} downloaded from {repo_id} is corrupt: its sha256 is {digest}, the Hub "
            f"announced {blob.name}; the damaged copy was deleted from the cache, load it again"
        )


def _download(repo_id: str, revision: str | None) -> Path:
    """Download a model repo's files into the Hub cache; returns the snapshot folder."""
    from huggingface_hub import hf_hub_download

    hf_hub_download(repo_id, CONFIG_FILE, revision=revision)
    weights = Path(hf_hub_download(repo_id, WEIGHTS_FILE, revision=revision))
    _verify_lfs_file(weights, repo_id)
    try:
        hf_hub_download(repo_id, CARD_FILE, revision=revision)
    except Exception:  # a missing model card does not stop the model from loading
        pass
    return weights.parent


def load_model(
    name_or_repo_or_path: str | Path,
    revision: str | None = None,
    hub_namespace: str | None = None,
) -> LoadedModel:
    """Load a pretrained model from a local folder, the Hub, or the embedded checkpoints.

    Args:
        name_or_repo_or_path: a folder path, a Hub repo id ``"owner/name"``, or a registry name
            such as ``"bcop-large-mnist"``.
        revision: Hub branch, tag or commit.
        hub_namespace: Hub owner for registry names (default ``$BCOP_HUB_REPO``; unset means
            use the embedded checkpoints).

    Raises:
        ValueError: unknown name, or corrupt files.
        FileNotFoundError: a path (not of the form ``owner/name``) that is not a folder.
        RuntimeError: the Hub repo could not be downloaded and there is no local copy; the
            message names the repo and the cause.
    """
    target = str(name_or_repo_or_path)
    if Path(target).is_dir():
        model, card = load_folder(target)
        return LoadedModel(model, "local", Path(target), None, card)

    if isinstance(name_or_repo_or_path, Path) or target.startswith((".", "/", "~")) or target.count("/") > 1:
        raise FileNotFoundError(f"no model folder at {target}")
    namespace = hub_namespace if hub_namespace is not None else os.environ.get("BCOP_HUB_REPO")
    if "/" in target:
        repo_id, name = target, target.rsplit("/", 1)[-1]
    elif target in MODEL_NAMES:
        repo_id, name = (f"{namespace}/{target}" if namespace else None), target
    else:
        raise ValueError(
            f"{target!r} is not a folder, a Hub repo id or a model name; known names: "
            f"{', '.join(MODEL_NAMES)}"
        )

    local = checkpoints_dir() / name
    available = ", ".join(local_checkpoints()) or "none"
    if repo_id is not None and not (repo_id in _fell_back and (local / CONFIG_FILE).is_file()):
        try:
            folder = _download(repo_id, revision)
        except CorruptDownloadError:
            raise
        except Exception as err:  # network, HTTP, missing repo: decide below
            cause = f"{type(err).__name__}: {err}"
            if not (local / CONFIG_FILE).is_file():
                raise RuntimeError(
                    f"could not download the model {repo_id} from the Hub ({cause}), and there is no "
                    f"local copy in {checkpoints_dir()} (available: {available})"
                ) from err
            _fell_back.add(repo_id)
            warnings.warn(
                f"could not download {repo_id} from the Hub ({cause}); using the embedded copy in "
                f"{local} (and will for the rest of this session)",
                stacklevel=2,
            )
        else:
            try:
                model, card = load_folder(folder)
            except ValueError as err:
                raise ValueError(f"the model downloaded from {repo_id} does not load: {err}") from err
            return LoadedModel(model, "hub", folder, repo_id, card)

    if not (local / CONFIG_FILE).is_file():
        raise ValueError(
            f"no pretrained weights for {name!r} in {checkpoints_dir()} (available: {available}); "
            "train one with `python -m bcop.train NAME` or pass a Hub repo id"
        )
    model, card = load_folder(local)
    return LoadedModel(model, "local", local, None, card)


def push_to_hub(folder: str | Path, repo_id: str, token: str | None = None, private: bool = False) -> str:
    """Upload a model folder to a Hub model repo (created if needed); returns the repo URL."""
    from huggingface_hub import HfApi

    load_folder(folder)  # refuse to publish a folder that does not load
    api = HfApi(token=token)
    url = api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    api.upload_folder(repo_id=repo_id, folder_path=str(folder), repo_type="model")
    return str(url)


# --- Interim versions of HUB's interface (issue 20), for the demo branch: the lead keeps HUB's. ---

HUB_OWNER = "bcop-lipschitz"
PRETRAINED_MODELS: tuple[str, ...] = (
    "bcop-large-mnist",
    "rko-large-mnist",
    "ossn-large-mnist",
    "svcm-large-mnist",
    "bcop-small-mnist",
    "plain-large-mnist",
)
_reachable: list[bool] = []  # the one probe's answer, once made


def hub_owner() -> str:
    """The Hub owner of the pretrained models: ``$BCOP_HUB_REPO`` when set ("" means no Hub),
    else :data:`HUB_OWNER`."""
    return os.environ.get("BCOP_HUB_REPO", HUB_OWNER)


def hub_reachable(timeout: float = 5.0) -> bool:
    """Whether the Hub answers at all (any HTTP status counts); probed once per process."""
    if not _reachable:
        import urllib.error
        import urllib.request

        from huggingface_hub import constants

        answer = not constants.HF_HUB_OFFLINE
        if answer:
            try:
                urllib.request.urlopen(f"{constants.ENDPOINT}/api/models?limit=1", timeout=timeout).close()
            except urllib.error.HTTPError:
                pass
            except (OSError, ValueError):
                answer = False
        if not answer:
            warnings.warn("the Hugging Face Hub cannot be reached: using embedded checkpoints", stacklevel=2)
        _reachable.append(answer)
    return _reachable[0]

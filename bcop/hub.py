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
one warning per name saying so).
"""

from __future__ import annotations

import json
import os
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
LIBRARY_NAME = "bcop"
_warned: set[str] = set()


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


def _download(repo_id: str, revision: str | None) -> Path:
    """Download a model repo's files into the Hub cache; returns the snapshot folder."""
    from huggingface_hub import hf_hub_download

    path = None
    for filename in (CONFIG_FILE, WEIGHTS_FILE):
        path = hf_hub_download(repo_id, filename, revision=revision)
    try:
        hf_hub_download(repo_id, CARD_FILE, revision=revision)
    except Exception:  # a missing model card does not stop the model from loading
        pass
    return Path(path).parent


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, stacklevel=3)


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
        RuntimeError: the Hub repo could not be downloaded and there is no local copy; the
            message names the repo and the cause.
    """
    target = str(name_or_repo_or_path)
    if Path(target).is_dir():
        model, card = load_folder(target)
        return LoadedModel(model, "local", Path(target), None, card)

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
    if repo_id is not None:
        try:
            folder = _download(repo_id, revision)
        except Exception as err:  # network, HTTP, missing repo: decide below
            cause = f"{type(err).__name__}: {err}"
            if (local / CONFIG_FILE).is_file():
                _warn_once(
                    repo_id,
                    f"could not download {repo_id} from the Hub ({cause}); "
                    f"using the embedded copy in {local}",
                )
            else:
                raise RuntimeError(f"could not download the model {repo_id} from the Hub: {cause}") from err
        else:
            model, card = load_folder(folder)
            return LoadedModel(model, "hub", folder, repo_id, card)

    if not (local / CONFIG_FILE).is_file():
        available = ", ".join(local_checkpoints()) or "none"
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

"""Save and load models in Hugging Face Hub layout; find the pretrained ones on the Hub.

A model folder (a local ``checkpoints/NAME/`` or a Hub model repo) holds:

* ``config.json`` -- a JSON object: the :class:`~bcop.models.ModelConfig` fields plus
  ``model_name`` and ``library_name``; everything needed to rebuild the network;
* ``model.safetensors`` -- the state dict, float32 and finite (weights are only ever read from
  safetensors, never unpickled), with ``model_name`` in its metadata;
* ``README.md`` -- the model card.

:func:`load_model` accepts a local folder, a Hub repo id (``"user/bcop-large-mnist"``) or a
registry name (``"bcop-large-mnist"``). A registry name is looked up on the Hub under
:func:`hub_owner` (``$BCOP_HUB_REPO``, else :data:`HUB_OWNER`), so a pip-installed library finds
the pretrained models, and in the embedded ``checkpoints/`` folder when the Hub cannot be
reached, does not have the repo, or ``$BCOP_HUB_REPO`` is empty.

Note [One probe per process]
    ``hf_hub_download`` retries a failed request with backoff (25 s when the connection is
    refused, minutes when the server accepts and never answers). So before the first download
    :func:`hub_reachable` makes one request with a short timeout in a daemon thread (bounding DNS
    too) and remembers the answer for the process. An unreachable Hub is never asked again and
    the user is warned once; downloads then run with ``local_files_only`` (the Hub cache only). A
    download that fails without an HTTP answer probes again, so a Hub that stops answering
    becomes unreachable too.

``huggingface_hub`` checks a download's size but not its content; :func:`load_model` also checks
the weights' sha256 against the Hub's LFS etag and deletes a mismatching cached copy.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from bcop.deprecation import deprecated_names
from bcop.models import LipschitzNet, ModelConfig, list_models

__all__ = [
    "CONFIG_FILE",
    "WEIGHTS_FILE",
    "CARD_FILE",
    "EVAL_RESULTS_FILE",
    "HUB_OWNER",
    "CorruptDownloadError",
    "LoadedModel",
    "hub_owner",
    "hub_reachable",
    "checkpoints_dir",
    "local_checkpoints",
    "save_folder",
    "save_model",
    "load_model",
    "fetch_folder",
    "load_folder",
]

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "README.md"
EVAL_RESULTS_FILE = "eval_results.json"
LIBRARY_NAME = "bcop"

HUB_OWNER = "bcop-lipschitz"
"""The Hub user or organisation that holds the pretrained models (``HUB_OWNER/NAME``)."""


_SHA256 = re.compile(r"[0-9a-f]{64}")
_reachable: dict[str, bool] = {}  # Hub endpoint -> answer of its one probe (Note [One probe per process])
_probe_lock = threading.Lock()
_fell_back: set[str] = set()  # repos the Hub answered for but could not serve, and that have a local copy


class CorruptDownloadError(ValueError):
    """A downloaded file's content does not match the checksum the Hub announced for it."""


@dataclass
class LoadedModel:
    """A model and where it came from.

    Attributes:
        model: the network, in eval mode.
        source: ``"local"`` or ``"hub"``.
        location: the folder it was read from (for the Hub: the cache snapshot of one commit).
        repo_id: the Hub repo id when downloaded, else None.
        card: the model card text ("" when there is none).
        commit: the Hub commit the files were read from (all of them: see :func:`_download`),
            else None.
    """

    model: LipschitzNet
    source: str
    location: Path
    repo_id: str | None
    card: str
    commit: str | None = None


def hub_owner() -> str:
    """The Hub owner of the pretrained models: ``$BCOP_HUB_REPO`` when set (an empty value means
    no Hub: the embedded checkpoints only), else :data:`HUB_OWNER`."""
    return os.environ.get("BCOP_HUB_REPO", HUB_OWNER)


def hub_reachable(timeout: float = 5.0) -> bool:
    """Whether the Hub endpoint (``$HF_ENDPOINT``) answers at all; any HTTP status counts.

    Probed once per process and endpoint (see Note [One probe per process]); an unreachable Hub
    stays unreachable for the process, with one warning. False without a probe when
    ``HF_HUB_OFFLINE`` is set.

    Args:
        timeout: seconds to wait for the answer, name resolution and connection included.
    """
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    endpoint = constants.ENDPOINT
    with _probe_lock:
        if endpoint not in _reachable:
            cause = _probe(endpoint, timeout)
            if cause is not None:
                _mark_unreachable(endpoint, cause)
            else:
                _reachable[endpoint] = True
        return _reachable[endpoint]


def _probe(endpoint: str, timeout: float) -> str | None:
    """One HEAD request to the endpoint; returns why it failed, or None when anything answered."""
    from huggingface_hub.utils import get_session

    outcome: list[str | None] = []

    def ask() -> None:
        try:
            get_session().head(endpoint + "/", timeout=timeout, follow_redirects=False)
        except Exception as err:  # any failure to get an HTTP answer means unreachable
            outcome.append(f"{type(err).__name__}: {err}")
        else:
            outcome.append(None)

    thread = threading.Thread(target=ask, name="bcop-hub-probe", daemon=True)
    thread.start()
    thread.join(timeout)
    return outcome[0] if outcome else f"no answer within {timeout:g} s"


def _mark_unreachable(endpoint: str, cause: str) -> None:
    _reachable[endpoint] = False
    warnings.warn(
        f"the Hugging Face Hub at {endpoint} cannot be reached ({cause}); models load from the Hub "
        f"cache or from {checkpoints_dir()} for the rest of this process",
        stacklevel=3,
    )


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


def save_folder(
    folder: str | Path, config: dict[str, Any], module: torch.nn.Module, card: str | None = None
) -> Path:
    """Write any kind of model in Hub layout: ``config.json`` (``config``, which names the model
    in ``model_name``), ``model.safetensors`` (the state dict, named in its metadata too) and,
    when given, the card as ``README.md``. Returns the folder (created if needed)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    state = {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}
    metadata = {"format": "pt", "model_name": config["model_name"]}
    save_file(state, str(folder / WEIGHTS_FILE), metadata=metadata)
    if card is not None:
        (folder / CARD_FILE).write_text(card)
    return folder


def save_model(model: LipschitzNet, folder: str | Path, card: str | None = None) -> Path:
    """Write ``config.json``, ``model.safetensors`` and (optionally) the model card.

    Args:
        model: a network built by :mod:`bcop.models`.
        folder: destination (created if needed).
        card: model card markdown, written as ``README.md``.

    Returns:
        The folder.
    """
    config = {**model.config.to_dict(), "model_name": model.config.name, "library_name": LIBRARY_NAME}
    return save_folder(folder, config, model, card)


def load_folder(folder: str | Path, expected_name: str | None = None) -> tuple[LipschitzNet, str]:
    """Rebuild a network from a model folder; returns the model (eval mode) and its card.

    Args:
        folder: a folder in the layout described in the module docstring.
        expected_name: when given, the registry name the config and the weights must carry.

    Raises:
        FileNotFoundError: the folder lacks ``config.json`` or ``model.safetensors``.
        ValueError: the config or the weights are invalid, corrupt, not float32 or not finite,
            name another model than ``expected_name``, or do not match each other; the message
            names the file.
    """
    folder = Path(folder)
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{folder} has no {name}: not a bcop model folder")
    config = _read_config(folder / CONFIG_FILE, expected_name)
    state = _read_weights(folder / WEIGHTS_FILE, expected_name)
    model = LipschitzNet(config)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ValueError(f"{folder / WEIGHTS_FILE} does not match {config.name}: {err}") from err
    card_path = folder / CARD_FILE
    return model.eval(), card_path.read_text() if card_path.is_file() else ""


def _read_config(path: Path, expected_name: str | None) -> ModelConfig:
    """Parse and check ``config.json``; every error names the file."""
    try:
        data: Any = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON ({err}); save or download the model again") from err
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object of config fields, not a {type(data).__name__}")
    kind = data.get("kind", "classifier")
    if kind != "classifier":
        raise ValueError(
            f"{path} describes a {kind!r}, not a classifier: load_model loads classifiers only"
            + (" (bcop.gan.load_generator loads a generator)" if kind == "generator" else "")
        )
    try:
        config = ModelConfig.from_dict(data)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{path} is not a valid bcop config: {err}") from err
    named = data.get("model_name", config.name)
    if expected_name is not None and expected_name != config.name or expected_name not in (None, named):
        raise ValueError(
            f"{path} describes {config.name} (model_name {named!r}), not {expected_name}: the folder "
            "or repo holds another model than its name says"
        )
    return config


def _read_weights(path: Path, expected_name: str | None) -> dict[str, torch.Tensor]:
    """Read a state dict from safetensors; checks it is float32, finite and named as expected."""
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            state = {key: f.get_tensor(key) for key in f.keys()}
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(
            f"{path} is corrupt or truncated ({err}); delete it and download or save the model again"
        ) from err
    named = metadata.get("model_name", expected_name)
    if expected_name is not None and named != expected_name:
        raise ValueError(f"{path} holds the weights of {named}, not {expected_name}")
    for key, tensor in state.items():
        if tensor.dtype != torch.float32:
            raise ValueError(f"{path}: tensor {key} is {tensor.dtype}; bcop models store float32 weights")
        bad = int((~torch.isfinite(tensor)).sum())
        if bad:
            raise ValueError(
                f"{path}: tensor {key} has {bad} non-finite values (NaN or inf); the weights are damaged, "
                "download or save the model again"
            )
    return state


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


def _download(repo_id: str, revision: str | None, **options: Any) -> Path:
    """Download config, weights and card of one commit into the Hub cache; returns its snapshot.

    The config's download resolves ``revision`` to a commit (its snapshot folder is named by
    it); the weights and the card are then asked for at that commit, so a push in between cannot
    mix two versions.
    """
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    commit = Path(hf_hub_download(repo_id, CONFIG_FILE, revision=revision, **options)).parent.name
    weights = Path(hf_hub_download(repo_id, WEIGHTS_FILE, revision=commit, **options))
    _verify_lfs_file(weights, repo_id)
    try:
        hf_hub_download(repo_id, CARD_FILE, revision=commit, **options)
    except (EntryNotFoundError, LocalEntryNotFoundError):  # a model loads without its card
        pass
    return weights.parent


def _split_target(target: str, hub_namespace: str | None, known: Sequence[str]) -> tuple[str | None, str]:
    """``(repo_id or None, name)`` for a repo id or a name in ``known``."""
    if "/" in target:
        return target, target.rsplit("/", 1)[-1]
    if target not in known:
        raise ValueError(
            f"{target!r} is not a folder, a Hub repo id or a model name; known names: {', '.join(known)}"
        )
    owner = hub_owner() if hub_namespace is None else hub_namespace
    return (f"{owner}/{target}" if owner else None), target


def fetch_folder(
    name_or_repo_or_path: str | Path,
    *,
    known: Sequence[str] = tuple(list_models()),
    revision: str | None = None,
    local_files_only: bool = False,
    hub_namespace: str | None = None,
    **download: Any,
) -> tuple[Path, str | None]:
    """The model folder a folder path, a Hub repo id or a name in ``known`` stands for, and the
    repo id it was downloaded from (None for a local folder). Every kind of model (classifiers,
    the generator) is found the same way; see :func:`load_model` for the arguments (``download``:
    ``cache_dir``, ``token``, ``force_download``) and the fallback to ``checkpoints/``.
    """
    force_download = download.get("force_download", False)
    if local_files_only and force_download:
        raise ValueError("local_files_only and force_download exclude each other: choose one")
    target = str(name_or_repo_or_path)
    if Path(target).is_dir():
        return Path(target), None
    if isinstance(name_or_repo_or_path, Path) or target.startswith((".", "/", "~")) or target.count("/") > 1:
        raise FileNotFoundError(f"no model folder at {target}")
    repo_id, name = _split_target(target, hub_namespace, known)
    local = checkpoints_dir() / name
    has_local = (local / CONFIG_FILE).is_file()
    stands_in = has_local and revision is None  # a pinned revision is never replaced by another copy
    if repo_id is not None and not (repo_id in _fell_back and stands_in):
        options = {"cache_dir": None, "token": None, "force_download": False, **download}
        folder = _download_or_explain(repo_id, revision, local_files_only, stands_in, options)
        if folder is not None:
            return folder, repo_id
    elif not has_local:
        raise ValueError(
            f"no pretrained weights for {name!r} in {checkpoints_dir()} (available: {_available()}); "
            "train one with `python -m bcop.train NAME` or pass a Hub repo id"
        )
    return local, None


def load_model(
    name_or_repo_or_path: str | Path,
    *,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    token: str | bool | None = None,
    local_files_only: bool = False,
    force_download: bool = False,
    hub_namespace: str | None = None,
) -> LoadedModel:
    """Load a pretrained model from a local folder, the Hub, or the embedded checkpoints.

    A registry name or a repo id whose last part is a registry name must hold that model (its
    config and weights say so); a folder path is loaded as it is. A Hub repo that cannot be
    downloaded (unreachable Hub, missing repo) is replaced by ``checkpoints/NAME`` when there is
    one and no ``revision`` was asked for, with a warning.

    Args:
        name_or_repo_or_path: a folder path, a Hub repo id ``"owner/name"``, or a registry name
            such as ``"bcop-large-mnist"`` (looked up as ``hub_owner()/name``).
        revision: Hub branch, tag or commit; resolved to one commit for all the files.
        cache_dir: Hub cache folder (default ``$HF_HUB_CACHE``).
        token: Hub token, as for ``hf_hub_download``.
        local_files_only: use the Hub cache only, never the network.
        force_download: download again even when cached.
        hub_namespace: Hub owner for registry names (default :func:`hub_owner`; "" means the
            embedded checkpoints only).

    Raises:
        ValueError: unknown name, invalid files (the message names the file), or both
            ``local_files_only`` and ``force_download``.
        FileNotFoundError: a path (not of the form ``owner/name``) that is not a folder.
        RuntimeError: the Hub repo could not be downloaded and there is no local copy; the
            message names the repo and the cause.
    """
    folder, repo_id = fetch_folder(
        name_or_repo_or_path,
        revision=revision,
        cache_dir=cache_dir,
        token=token,
        local_files_only=local_files_only,
        force_download=force_download,
        hub_namespace=hub_namespace,
    )
    name = str(name_or_repo_or_path).rsplit("/", 1)[-1]
    asked_by_name = not Path(str(name_or_repo_or_path)).is_dir() and name in list_models()
    try:
        model, card = load_folder(folder, name if asked_by_name else None)
    except ValueError as err:
        if repo_id is None:
            raise
        raise ValueError(f"the model downloaded from {repo_id} does not load: {err}") from err
    # a Hub snapshot folder is named by its commit (huggingface_hub's cache layout)
    commit = None if repo_id is None else folder.name
    return LoadedModel(model, "local" if repo_id is None else "hub", folder, repo_id, card, commit)


def _available() -> str:
    return ", ".join(local_checkpoints()) or "none"


def _download_or_explain(
    repo_id: str, revision: str | None, local_files_only: bool, stands_in: bool, options: dict[str, Any]
) -> Path | None:
    """The downloaded snapshot, or None when the local copy is to be used instead.

    Raises:
        CorruptDownloadError: the weights were damaged in transit.
        RuntimeError: the download failed and no local copy stands in.
    """
    from huggingface_hub import constants
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    offline = local_files_only or not hub_reachable()
    if offline:
        options = {**options, "force_download": False}  # the cache is all there is
    try:
        return _download(repo_id, revision, local_files_only=offline, **options)
    except CorruptDownloadError:
        raise
    except Exception as err:  # network, HTTP, missing repo or file: decide below
        cause = f"{type(err).__name__}: {err}"
        if isinstance(err, LocalEntryNotFoundError) and offline:
            why = "local_files_only is set" if local_files_only else "the Hub cannot be reached"
            cause = f"{why} and the Hub cache has no copy"
        if not offline and not isinstance(err, HfHubHTTPError):  # has the Hub stopped answering?
            with _probe_lock:
                _reachable.pop(constants.ENDPOINT, None)
            hub_reachable()
        if not stands_in:
            instead = (
                f"there is no local copy in {checkpoints_dir()} (available: {_available()})"
                if revision is None
                else f"the embedded copy does not stand in for the revision {revision!r} asked for"
            )
            raise RuntimeError(
                f"could not download the model {repo_id} from the Hub ({cause}), and {instead}"
            ) from err
        if not offline and hub_reachable():  # the Hub answers but not with this repo: say so once
            _fell_back.add(repo_id)
            warnings.warn(
                f"could not download {repo_id} from the Hub ({cause}); using the embedded copy in "
                f"{checkpoints_dir()} (and will for the rest of this process)",
                stacklevel=3,
            )
        return None


_PRETRAINED = tuple(list_models(pretrained=True))
__getattr__ = deprecated_names(
    __name__, {"PRETRAINED_MODELS": ("bcop.list_models(pretrained=True)", _PRETRAINED)}
)

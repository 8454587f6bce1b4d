"""Save and load models in Hugging Face Hub layout; find the pretrained ones on the Hub.

A model folder (a local ``checkpoints/NAME/`` or a Hub model repo) holds:

* ``config.json`` -- a JSON object: the :class:`~bcop.models.ModelConfig` fields plus
  ``model_name`` and ``library_name``; everything needed to rebuild the network;
* ``model.safetensors`` -- the state dict, float32 and finite (weights are only ever read from
  safetensors, never unpickled), with ``model_name`` in its metadata;
* ``README.md`` -- the model card.

:func:`load_model` accepts a local folder, a Hub repo id (``"user/bcop-large-mnist"``) or a
registry name (``"bcop-large-mnist"``). A registry name is looked up on the Hub under
:func:`hub_owner` (``$BCOP_HUB_OWNER``, else :data:`HUB_OWNER`), so a pip-installed library finds
the pretrained models, and in the embedded ``checkpoints/`` folder when the Hub cannot be
reached, does not have the repo, or ``$BCOP_HUB_OWNER`` is empty. The embedded copy stands in
only for a registry name or a repo of the default owner: it *is* their model, not anyone's.

Note [A deadline on every Hub call]
    ``hf_hub_download`` retries a failed request with backoff (25 s when the connection is
    refused, minutes when the server accepts and never answers, and again for the next repo). So
    every call to the Hub runs in a daemon thread that is given up when it shows no sign of life
    for :func:`hub_timeout` seconds (``$BCOP_HUB_TIMEOUT``, default 5): no answer to a request,
    whatever the cause, costs one deadline. A response body that is arriving is not timed here
    (the HTTP client's own read timeout bounds its stalls), so a slow transfer is never cut. Before
    the first download :func:`hub_reachable` probes the endpoint once with that deadline. Any
    download that fails without an answer from the Hub (a deadline passed, a dropped connection,
    a 5xx) marks the Hub unreachable for the rest of the process, with one warning; from then on
    downloads run with ``local_files_only`` (the Hub cache only). An answer (no such repo,
    revision or file) concerns that repo only.

``huggingface_hub`` checks a download's size but not its content; :func:`load_model` also checks
the weights' sha256 against the Hub's LFS etag and deletes a mismatching cached copy.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from bcop.deprecation import deprecated_names, warn_renamed
from bcop.models import LipschitzNet, ModelConfig, list_models

__all__ = [
    "CONFIG_FILE",
    "WEIGHTS_FILE",
    "CARD_FILE",
    "EVAL_RESULTS_FILE",
    "HUB_OWNER",
    "SPACE_NAME",
    "GENERATOR_KIND",
    "DEFAULT_TIMEOUT_S",
    "CorruptDownloadError",
    "HubTimeoutError",
    "LoadedModel",
    "hub_owner",
    "hub_timeout",
    "hub_reachable",
    "call_hub",
    "checkpoints_dir",
    "local_checkpoints",
    "save_folder",
    "save_model",
    "load_model",
    "fetch_folder",
    "fetch_file",
    "load_folder",
]

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "README.md"
EVAL_RESULTS_FILE = "eval_results.json"
LIBRARY_NAME = "bcop"
GENERATOR_KIND = "generator"
"""The ``kind`` in the config of a generator (a classifier's config has none, or "classifier")."""

HUB_OWNER = "bcop-lipschitz"
"""The Hub user or organisation that holds the pretrained models (``HUB_OWNER/NAME``)."""
SPACE_NAME = "bcop"
"""The Space that holds the code and the demo: ``OWNER/bcop``."""
OWNER_ENV = "BCOP_HUB_OWNER"
_OLD_OWNER_ENV = "BCOP_HUB_REPO"  # deprecated in 0.3.0: it names an owner, not a repo
DEFAULT_TIMEOUT_S = 5.0
"""Seconds a Hub call may go without an answer or progress (Note [A deadline on every Hub call])."""


_SHA256 = re.compile(r"[0-9a-f]{64}")
_reachable: dict[str, bool] = {}  # Hub endpoint -> reachable (Note [A deadline on every Hub call])
_probe_lock = threading.RLock()
_fell_back: set[str] = set()  # repos the Hub answered for but could not serve, and that have a local copy
T = TypeVar("T")


class CorruptDownloadError(ValueError):
    """A downloaded file's content does not match the checksum the Hub announced for it."""


class HubTimeoutError(TimeoutError):
    """A Hub call showed no sign of life within :func:`hub_timeout` seconds."""


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
    """The Hub owner of the pretrained models: ``$BCOP_HUB_OWNER`` when set (an empty value means
    no Hub: the embedded checkpoints only), else :data:`HUB_OWNER`. The old ``$BCOP_HUB_REPO`` is
    still read, with a DeprecationWarning."""
    if OWNER_ENV in os.environ:
        return os.environ[OWNER_ENV]
    if _OLD_OWNER_ENV in os.environ:
        warn_renamed(f"${_OLD_OWNER_ENV}", f"${OWNER_ENV}")
        return os.environ[_OLD_OWNER_ENV]
    return HUB_OWNER


def hub_timeout() -> float:
    """Seconds a Hub call may go without an answer or progress before it is given up:
    ``$BCOP_HUB_TIMEOUT``, else :data:`DEFAULT_TIMEOUT_S`."""
    value = os.environ.get("BCOP_HUB_TIMEOUT", "")
    try:
        seconds = float(value) if value else DEFAULT_TIMEOUT_S
    except ValueError as err:
        raise ValueError(f"$BCOP_HUB_TIMEOUT must be a number of seconds, not {value!r}") from err
    if not seconds > 0:
        raise ValueError(f"$BCOP_HUB_TIMEOUT must be positive, not {value!r}")
    return seconds


class _Liveness:
    """When a Hub call last showed a sign of life, and how many response bodies are arriving
    (a body in transfer is not timed here: the HTTP client's read timeout bounds its stalls)."""

    def __init__(self) -> None:
        self.last = time.monotonic()
        self.receiving = 0

    def touch(self) -> None:
        self.last = time.monotonic()


def _with_deadline(call: Callable[[_Liveness], T], deadline: float, what: str) -> T:
    """``call(alive)`` in a daemon thread, given up (:class:`HubTimeoutError`) when ``deadline``
    seconds pass without ``alive.touch()`` while no body is arriving. A call given up runs on
    in the background, never waited for (Note [A deadline on every Hub call])."""
    alive = _Liveness()
    outcome: list[tuple[bool, Any]] = []

    def run() -> None:
        try:
            outcome.append((True, call(alive)))
        except BaseException as err:  # handed to the waiting thread below
            outcome.append((False, err))

    thread = threading.Thread(target=run, name="bcop-hub-call", daemon=True)
    thread.start()
    while not outcome:
        left = alive.last + deadline - time.monotonic()
        if left <= 0 and not alive.receiving:
            raise HubTimeoutError(f"no answer within {deadline:g} s while {what}")
        thread.join(max(left, 0.05))
    ok, value = outcome[0]
    if not ok:
        raise value
    return value


def call_hub(call: Callable[[], T], what: str) -> T:
    """``call()``, a request to the Hub, given up after :func:`hub_timeout` seconds without an
    answer (:class:`HubTimeoutError`, naming ``what`` was being done)."""
    return _with_deadline(lambda alive: call(), hub_timeout(), what)


def hub_reachable(timeout: float | None = None) -> bool:
    """Whether the Hub endpoint (``$HF_ENDPOINT``) answers at all; any HTTP status counts.

    Probed once per process and endpoint, and marked unreachable by any download that fails
    without an answer (see Note [A deadline on every Hub call]); an unreachable Hub stays
    unreachable for the process, with one warning. False without a probe when
    ``HF_HUB_OFFLINE`` is set.

    Args:
        timeout: seconds to wait for the answer, name resolution and connection included
            (default :func:`hub_timeout`).
    """
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    endpoint = constants.ENDPOINT
    with _probe_lock:
        if endpoint not in _reachable:
            cause = _probe(endpoint, hub_timeout() if timeout is None else timeout)
            if cause is not None:
                _mark_unreachable(endpoint, cause)
            else:
                _reachable[endpoint] = True
        return _reachable[endpoint]


def _probe(endpoint: str, timeout: float) -> str | None:
    """One HEAD request to the endpoint; returns why it failed, or None when anything answered."""
    from huggingface_hub.utils import get_session

    def ask(alive: _Liveness) -> object:
        return get_session().head(endpoint + "/", timeout=timeout, follow_redirects=False)

    try:
        _with_deadline(ask, timeout, f"probing {endpoint}")
    except Exception as err:  # any failure to get an HTTP answer means unreachable
        return f"{type(err).__name__}: {err}"
    return None


def _mark_unreachable(endpoint: str, cause: str) -> None:
    """Remember that the Hub is unreachable; warns the first time only."""
    with _probe_lock:
        if _reachable.get(endpoint) is False:
            return
        _reachable[endpoint] = False
    warnings.warn(
        f"the Hugging Face Hub at {endpoint} cannot be reached ({cause}); models load from the Hub "
        f"cache or from {checkpoints_dir()} for the rest of this process",
        stacklevel=4,
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
            + (" (bcop.gan.load_generator loads a generator)" if kind == GENERATOR_KIND else "")
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


@dataclass
class _Fetched:
    """Where a model's files are: the folder, and the Hub repo and commit they came from."""

    folder: Path
    repo_id: str | None = None
    commit: str | None = None


def _progress_class(alive: _Liveness) -> type:
    """A ``huggingface_hub`` progress bar that tells ``alive`` when a response body starts
    arriving, at every chunk, and when it is complete."""
    from huggingface_hub.utils import tqdm

    class Progress(tqdm):  # type: ignore[misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            alive.receiving += 1
            alive.touch()
            self._receiving = True
            super().__init__(*args, **kwargs)

        def update(self, n: float | None = 1) -> bool | None:
            alive.touch()
            return super().update(n)

        def close(self) -> None:
            if getattr(self, "_receiving", False):
                self._receiving = False
                alive.receiving -= 1
                alive.touch()
            super().close()

    return Progress


def _get(repo_id: str, filename: str, revision: str | None, alive: _Liveness, **options: Any) -> Path:
    """``hf_hub_download`` of one file, telling ``alive`` of each sign of life."""
    from huggingface_hub import hf_hub_download

    path = hf_hub_download(
        repo_id,
        filename,
        revision=revision,
        etag_timeout=hub_timeout(),
        tqdm_class=_progress_class(alive),
        **options,
    )
    alive.touch()
    return Path(path)


def _download(repo_id: str, revision: str | None, alive: _Liveness, **options: Any) -> _Fetched:
    """Download config, weights and card of one commit into the Hub cache.

    The config's download resolves ``revision`` to a commit (its snapshot folder in the Hub cache
    is named by it); the weights and the card are then asked for at that commit, so a push in
    between cannot mix two versions.
    """
    from huggingface_hub.errors import EntryNotFoundError

    commit = _get(repo_id, CONFIG_FILE, revision, alive, **options).parent.name
    weights = _get(repo_id, WEIGHTS_FILE, commit, alive, **options)
    _verify_lfs_file(weights, repo_id)
    try:
        _get(repo_id, CARD_FILE, commit, alive, **options)
    except EntryNotFoundError:  # a model loads without its card
        pass
    return _Fetched(weights.parent, repo_id, commit)


def _answered(err: Exception) -> bool:
    """Whether the Hub answered about this repo (no such repo, revision or file; not allowed; a
    file of another size than announced) rather than failed to answer (no answer in time, a
    refused or dropped connection, a server error)."""
    from huggingface_hub.errors import HfHubHTTPError

    if isinstance(err, HfHubHTTPError):
        return err.response is not None and err.response.status_code < 500
    return type(err) is OSError  # huggingface_hub's size check failed: an answer, with wrong content


def _offline_reason(local_files_only: bool) -> str | None:
    """Why no request goes to the Hub, or None when one may."""
    from huggingface_hub import constants

    if local_files_only:
        return "local_files_only is set"
    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set (offline mode)"
    if not hub_reachable():
        return "the Hub cannot be reached"
    return None


class _NotFetched(Exception):
    """Neither the Hub nor its cache gave the files; the message says why, the cause is the
    first error."""


def _from_hub_or_cache(call: Callable[[_Liveness, bool], T], reason: str | None, what: str) -> T:
    """``call(alive, offline)``: from the Hub under the deadline when ``reason`` (why not to ask
    the Hub) is None, then from the Hub cache unless the Hub answered that it has no such thing.
    A failure without an answer from the Hub marks it unreachable.

    Raises:
        CorruptDownloadError: as ``call`` does.
        _NotFetched: neither gave it.
    """
    from huggingface_hub import constants

    failure: Exception | None = None
    if reason is None:
        try:
            return _with_deadline(lambda alive: call(alive, False), hub_timeout(), what)
        except CorruptDownloadError:
            raise
        except Exception as err:  # network, HTTP, missing repo or file
            if _answered(err):
                raise _NotFetched(f"{type(err).__name__}: {err}") from err
            _mark_unreachable(constants.ENDPOINT, f"{type(err).__name__}: {err}")
            failure = err
    try:
        return call(_Liveness(), True)
    except CorruptDownloadError:
        raise
    except Exception as err:
        missing = "the Hub cache has no copy" if isinstance(err, FileNotFoundError) else str(err)
        if failure is None:
            raise _NotFetched(f"{reason} and {missing}") from err
        raise _NotFetched(f"{type(failure).__name__}: {failure}; {missing}") from failure


def fetch_file(repo_id: str, filename: str, revision: str | None = None, **options: Any) -> Path | None:
    """One file of a Hub model repo, through the same reachability check and deadline as the
    models (from the Hub cache when the Hub cannot be reached); None when it cannot be had.

    Args:
        repo_id: ``"owner/name"``.
        filename: the file's path in the repo.
        revision: branch, tag or commit (:attr:`LoadedModel.commit` for the files of a loaded model).
        **options: ``cache_dir``, ``token``, as for ``hf_hub_download``.
    """
    try:
        return _from_hub_or_cache(
            lambda alive, offline: _get(
                repo_id, filename, revision, alive, local_files_only=offline, **options
            ),
            _offline_reason(False),
            f"downloading {filename} of {repo_id}",
        )
    except _NotFetched:  # no such file, or the Hub failed (then marked unreachable): not there
        return None


def _split_target(target: str, owner: str | None, known: Sequence[str]) -> tuple[str | None, str, bool]:
    """``(repo_id or None, name, whether the embedded copy may stand in)`` for a repo id or a
    name in ``known``. The embedded copy stands in for a name alone and for the repos of the
    default owner, whose models it holds; never for another owner's repo."""
    if "/" in target:
        repo_owner, name = target.rsplit("/", 1)
        return target, name, repo_owner in {HUB_OWNER, hub_owner(), owner}
    if target not in known:
        raise ValueError(
            f"{target!r} is not a folder, a Hub repo id or a model name; known names: {', '.join(known)}"
        )
    owner = hub_owner() if owner is None else owner
    return (f"{owner}/{target}" if owner else None), target, True


def _owner_argument(owner: str | None, hub_namespace: str | None) -> str | None:
    if hub_namespace is None:
        return owner
    warn_renamed("the keyword hub_namespace", "owner", stacklevel=4)
    return hub_namespace if owner is None else owner


def fetch_folder(
    name_or_repo_or_path: str | Path,
    *,
    known: Sequence[str] = tuple(list_models()),
    revision: str | None = None,
    local_files_only: bool = False,
    owner: str | None = None,
    hub_namespace: str | None = None,
    **download: Any,
) -> tuple[Path, str | None]:
    """The model folder a folder path, a Hub repo id or a name in ``known`` stands for, and the
    repo id it was downloaded from (None for a local folder). Every kind of model (classifiers,
    the generator) is found the same way; see :func:`load_model` for the arguments (``download``:
    ``cache_dir``, ``token``, ``force_download``; ``hub_namespace``: the old name of ``owner``)
    and the fallback to ``checkpoints/``.
    """
    owner = _owner_argument(owner, hub_namespace)
    fetched = _fetch(name_or_repo_or_path, known, revision, local_files_only, owner, download)
    return fetched.folder, fetched.repo_id


def _fetch(
    name_or_repo_or_path: str | Path,
    known: Sequence[str],
    revision: str | None,
    local_files_only: bool,
    owner: str | None,
    download: dict[str, Any],
) -> _Fetched:
    """:func:`fetch_folder`, with the commit."""
    if local_files_only and download.get("force_download", False):
        raise ValueError("local_files_only and force_download exclude each other: choose one")
    target = str(name_or_repo_or_path)
    if Path(target).is_dir():
        return _Fetched(Path(target))
    if isinstance(name_or_repo_or_path, Path) or target.startswith((".", "/", "~")) or target.count("/") > 1:
        raise FileNotFoundError(f"no model folder at {target}")
    repo_id, name, ours = _split_target(target, owner, known)
    local = checkpoints_dir() / name
    has_local = (local / CONFIG_FILE).is_file()
    # a pinned revision, or another owner's repo, is never replaced by the embedded copy
    no_stand_in = _no_stand_in(name, has_local, revision, ours)
    if repo_id is not None and not (repo_id in _fell_back and no_stand_in is None):
        options = {"cache_dir": None, "token": None, "force_download": False, **download}
        fetched = _download_or_explain(repo_id, revision, local_files_only, no_stand_in, options)
        if fetched is not None:
            return fetched
    elif not has_local:
        raise ValueError(
            f"no pretrained weights for {name!r} in {checkpoints_dir()} (available: {_available()}); "
            "train one with `python -m bcop.train NAME` or pass a Hub repo id"
        )
    return _Fetched(local)


def load_model(
    name_or_repo_or_path: str | Path,
    *,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    token: str | bool | None = None,
    local_files_only: bool = False,
    force_download: bool = False,
    owner: str | None = None,
    hub_namespace: str | None = None,
) -> LoadedModel:
    """Load a pretrained model from a local folder, the Hub, or the embedded checkpoints.

    A registry name or a repo id whose last part is a registry name must hold that model (its
    config and weights say so); a folder path is loaded as it is. A registry name, or a repo of
    the default owner, that cannot be downloaded (unreachable Hub, missing repo) is replaced by
    ``checkpoints/NAME`` when there is one and no ``revision`` was asked for; another owner's
    repo never is. Every Hub call has a deadline (Note [A deadline on every Hub call]).

    Args:
        name_or_repo_or_path: a folder path, a Hub repo id ``"owner/name"``, or a registry name
            such as ``"bcop-large-mnist"`` (looked up as ``hub_owner()/name``).
        revision: Hub branch, tag or commit; resolved to one commit for all the files.
        cache_dir: Hub cache folder (default ``$HF_HUB_CACHE``).
        token: Hub token, as for ``hf_hub_download``.
        local_files_only: use the Hub cache only, never the network.
        force_download: download again even when cached.
        owner: Hub owner for registry names (default :func:`hub_owner`; "" means the embedded
            checkpoints only).
        hub_namespace: deprecated name of ``owner``.

    Raises:
        ValueError: unknown name, invalid files (the message names the file), or both
            ``local_files_only`` and ``force_download``.
        FileNotFoundError: a path (not of the form ``owner/name``) that is not a folder.
        RuntimeError: the Hub repo could not be downloaded and no local copy stands in; the
            message names the repo, the cause and what was tried.
    """
    download = {"cache_dir": cache_dir, "token": token, "force_download": force_download}
    owner = _owner_argument(owner, hub_namespace)
    fetched = _fetch(name_or_repo_or_path, list_models(), revision, local_files_only, owner, download)
    name = str(name_or_repo_or_path).rsplit("/", 1)[-1]
    asked_by_name = not Path(str(name_or_repo_or_path)).is_dir() and name in list_models()
    try:
        model, card = load_folder(fetched.folder, name if asked_by_name else None)
    except ValueError as err:
        if fetched.repo_id is None:
            raise
        raise ValueError(f"the model downloaded from {fetched.repo_id} does not load: {err}") from err
    source = "local" if fetched.repo_id is None else "hub"
    return LoadedModel(model, source, fetched.folder, fetched.repo_id, card, fetched.commit)


def _available() -> str:
    return ", ".join(local_checkpoints()) or "none"


def _no_stand_in(name: str, has_local: bool, revision: str | None, ours: bool) -> str | None:
    """Why the embedded copy of ``name`` may not replace a Hub repo, or None when it may."""
    if not has_local:
        return f"there is no local copy in {checkpoints_dir()} (available: {_available()})"
    if revision is not None:
        return f"the embedded copy does not stand in for the revision {revision!r} asked for"
    if not ours:
        return (
            f"the embedded copy stands in only for {hub_owner() or HUB_OWNER}'s repos and the name alone "
            f"(load {name!r} for it)"
        )
    return None


def _download_or_explain(
    repo_id: str,
    revision: str | None,
    local_files_only: bool,
    no_stand_in: str | None,
    options: dict[str, Any],
) -> _Fetched | None:
    """The downloaded files, or None when the local copy is to be used instead.

    A download that fails without an answer from the Hub marks it unreachable; the Hub cache
    is tried next.

    Raises:
        CorruptDownloadError: the weights were damaged in transit.
        RuntimeError: the download failed and no local copy stands in (``no_stand_in`` says why).
    """
    reason = _offline_reason(local_files_only)

    def download(alive: _Liveness, offline: bool) -> _Fetched:
        cache_only = {"local_files_only": True, "force_download": False}  # the cache is all there is
        return _download(repo_id, revision, alive, **{**options, **(cache_only if offline else {})})

    try:
        return _from_hub_or_cache(download, reason, f"downloading {repo_id}")
    except _NotFetched as err:
        if no_stand_in is not None:
            raise RuntimeError(
                f"could not download the model {repo_id} from the Hub ({err}), and {no_stand_in}"
            ) from err.__cause__
        if reason is None and hub_reachable():  # the Hub answers but not with this repo: say so once
            _fell_back.add(repo_id)
            warnings.warn(
                f"could not download {repo_id} from the Hub ({err}); using the embedded copy in "
                f"{checkpoints_dir()} (and will for the rest of this process)",
                stacklevel=4,
            )
        return None


_PRETRAINED = tuple(list_models(pretrained=True))
__getattr__ = deprecated_names(
    __name__, {"PRETRAINED_MODELS": ("bcop.list_models(pretrained=True)", _PRETRAINED)}
)

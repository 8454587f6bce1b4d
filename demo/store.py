"""The models the demo serves: loaded once, from the Hub when it answers, else from the embedded
checkpoints, each with its Lipschitz bound, spectra and evaluation record computed once.

No lock is held across a network call: a model that is loading keeps only the requests for
that model waiting, and every Hub call has a deadline (:mod:`bcop.hub`)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from bcop.certify import lipschitz_bound
from bcop.hub import (
    EVAL_RESULTS_FILE,
    LoadedModel,
    checkpoints_dir,
    fetch_file,
    hub_owner,
    hub_reachable,
    load_model,
    local_checkpoints,
)
from bcop.models import SUCCESSORS, list_models, parse_model_name
from bcop.results import read_results
from bcop.spectra import LayerSpectrum, conv_spectra

log = logging.getLogger("bcop.app")

DEFAULT_MODELS = ("bcop-large-mnist", "rko-large-mnist", "plain-large-mnist")
PAPER_GROUP, LATER_GROUP = "the paper's models", "later families"


def model_group(name: str) -> str:
    """:data:`LATER_GROUP` for a network of one of BCOP's successors (``bcop.models.SUCCESSORS``:
    Cayley, SOC, AOL, SLL, AOC), :data:`PAPER_GROUP` for the paper's own and its baselines."""
    return LATER_GROUP if parse_model_name(name).conv in SUCCESSORS else PAPER_GROUP


def hub_url(repo_id: str) -> str:
    """The web page of a Hub model repo."""
    from huggingface_hub import constants

    return f"{constants.ENDPOINT}/{repo_id}"


def display_path(path: str | Path) -> str:
    """``path`` relative to the working directory when inside it (what the page shows)."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


@dataclass
class ServedModel:
    """A loaded network with the things that are constant for its weights, computed once."""

    name: str
    loaded: LoadedModel
    lipschitz: float
    _spectra: list[LayerSpectrum] | None = field(default=None, repr=False)

    @property
    def model(self) -> torch.nn.Module:
        return self.loaded.model

    def spectra(self) -> list[LayerSpectrum]:
        """Singular values of every convolution."""
        if self._spectra is None:
            self._spectra = conv_spectra(self.model)
        return self._spectra

    def results(self) -> dict[str, Any] | None:
        """The evaluation record (accuracies in percent), or None when not evaluated. For a Hub
        model, the record of the commit its weights came from."""
        folder = Path(self.loaded.location)
        if not (folder / EVAL_RESULTS_FILE).is_file() and self.loaded.repo_id is not None:
            path = fetch_file(self.loaded.repo_id, EVAL_RESULTS_FILE, revision=self.loaded.commit)
            if path is None:  # no such file in the repo, or the Hub went away: not evaluated
                return None
            folder = path.parent
        return read_results(folder)


class ModelStore:
    """Loads the MNIST classifiers lazily and keeps them.

    Args:
        owner: Hub owner of the models (default :func:`bcop.hub.hub_owner`); "" serves the
            embedded checkpoints only. The Hub is used only when :func:`bcop.hub.hub_reachable`.
    """

    def __init__(self, owner: str | None = None) -> None:
        self.owner = hub_owner() if owner is None else owner
        self.use_hub = bool(self.owner) and hub_reachable()
        self.names = self._available()
        self._loads: dict[str, Future[ServedModel]] = {}  # name -> its load, done or under way
        self._lock = threading.Lock()  # guards _loads only, never held across a load

    def _available(self) -> list[str]:
        pretrained = list_models(pretrained=True)
        found = set(local_checkpoints()) | (set(pretrained) if self.use_hub else set())
        mnist = {n for n in found if n in list_models() and parse_model_name(n).dataset == "mnist"}
        ordered = [n for n in pretrained if n in mnist] + sorted(mnist - set(pretrained))
        return sorted(ordered, key=lambda n: model_group(n) == LATER_GROUP)  # stable: the paper's first

    def choices(self) -> list[tuple[str, str]]:
        """(label, name) of every model, the paper's first, then later families, labelled as such."""
        return [(n if model_group(n) == PAPER_GROUP else f"{n} (later family)", n) for n in self.names]

    def defaults(self) -> list[str]:
        chosen = [n for n in DEFAULT_MODELS if n in self.names]
        return chosen or self.names[:3]

    def check(self, names: Sequence[str] | str | None) -> list[str]:
        """A selection of model names, validated, in display order; raises ValueError naming
        the problem."""
        chosen = {names} if isinstance(names, str) else set(names or [])
        if not self.names:
            raise ValueError(f"no MNIST models found in {checkpoints_dir()}: train or download some first")
        if not chosen:
            raise ValueError("choose at least one model")
        unknown = sorted(chosen - set(self.names))
        if unknown:
            raise ValueError(
                f"unknown model {', '.join(map(repr, unknown))}; available: {', '.join(self.names)}"
            )
        return [n for n in self.names if n in chosen]

    def get(self, name: str) -> ServedModel:
        """The served model ``name``, loaded on first use; a concurrent request for the same
        model waits for that load, one for another model does not. A failed load is tried
        again by the next request."""
        self.check([name])
        with self._lock:
            load = self._loads.get(name)
            mine = load is None
            if mine:
                load = self._loads[name] = Future()
        if mine:
            try:
                load.set_result(self._load(name))
            except Exception as err:
                with self._lock:
                    del self._loads[name]
                load.set_exception(err)
        return load.result()

    def _load(self, name: str) -> ServedModel:
        loaded = load_model(name, owner=self.owner) if self.use_hub else load_model(checkpoints_dir() / name)
        loaded.model.requires_grad_(False)  # inference only: attacks differentiate the input
        return ServedModel(name, loaded, lipschitz_bound(loaded.model))

    def where(self) -> str:
        """Where the models come from, in a sentence (markdown)."""
        local = f"the embedded checkpoints in `{display_path(checkpoints_dir())}`"
        if self.use_hub:
            return f"Models load from the Hugging Face Hub (`{self.owner}`), else from {local}."
        if self.owner:
            return f"The Hugging Face Hub could not be reached, so models load from {local}."
        return f"Models load from {local}."

    def source(self, served: ServedModel) -> str:
        """Where one model was loaded from, in words (markdown)."""
        loaded = served.loaded
        if loaded.source == "hub":
            return f"Hub: [{loaded.repo_id}]({hub_url(loaded.repo_id)})"
        where = f"`{display_path(loaded.location)}`"
        if self.use_hub and hub_reachable():  # answered once; not asked again
            return f"{where} (could not download {self.owner}/{served.name} from the Hub)"
        if self.owner:
            return f"{where} (the Hub could not be reached)"
        return where

    def warm(self) -> None:
        """Load every available model now (run in a background thread at start-up)."""
        for name in self.names:
            try:
                self.get(name)
            except Exception as err:  # reported again, to the user, when the model is chosen
                log.warning("could not load %s: %s", name, err)

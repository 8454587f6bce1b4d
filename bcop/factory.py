"""The one way to get a classifier: :func:`create_model` and :func:`list_models`.

It sits above the networks (:mod:`bcop.models`, which holds the registry) and the Hub code
(:mod:`bcop.hub`), as timm's ``_factory.py`` sits above its registry and hub helpers::

    bcop.list_models()                      # every registry name
    bcop.list_models(pretrained=True)       # the names that also come trained
    bcop.create_model("bcop-large-mnist")   # fresh, e.g. to train
    bcop.create_model("bcop-large-mnist", pretrained=True)            # trained, from the Hub or checkpoints/
    bcop.create_model("owner/bcop-large-mnist", pretrained=True, revision="v1")  # a Hub repo
    bcop.create_model("runs/bcop-large-mnist/best", pretrained=True)  # a folder in Hub layout

The lower-level pieces stay public: :func:`bcop.hub.load_model` also says where a model came
from (:class:`~bcop.hub.LoadedModel`), :func:`bcop.hub.load_folder` reads one folder without
the Hub, and ``LipschitzNet(config)`` builds a network from a :class:`~bcop.models.ModelConfig`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from bcop.hub import load_model
from bcop.models import LipschitzNet, ModelConfig, list_models, parse_model_name

__all__ = ["create_model", "list_models"]


def create_model(
    name_or_repo_or_path: str | Path,
    *,
    pretrained: bool = False,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    token: str | bool | None = None,
    local_files_only: bool = False,
    force_download: bool = False,
    **overrides: Any,
) -> LipschitzNet:
    """A network by registry name, freshly initialised or trained; or the trained network of a
    Hub repo or a folder.

    Args:
        name_or_repo_or_path: a registry name such as ``"bcop-large-mnist"`` (see
            :func:`list_models`); with ``pretrained=True`` also a Hub repo id ``"owner/name"`` or
            a folder in Hub layout.
        pretrained: the trained model (eval mode), through :func:`bcop.hub.load_model`: from the
            Hub when it is reachable, else from ``checkpoints/``, else a clear error.
        revision, cache_dir, token, local_files_only, force_download: how the trained model is
            fetched from the Hub, as ``hf_hub_download`` takes them (``pretrained=True`` only).
        **overrides: config fields to change in a fresh model, e.g.
            ``ortho=OrthoParams("bjorck", 20)``; a trained model keeps its own.

    Raises:
        ValueError: unknown name; a repo id or folder without ``pretrained=True``; Hub options
            without ``pretrained=True`` or overrides with it; invalid or missing weights.
        TypeError: an override that is not a :class:`~bcop.models.ModelConfig` field.
        RuntimeError: the Hub repo could not be downloaded and there is no local copy.
    """
    hub_options = {
        "revision": revision,
        "cache_dir": cache_dir,
        "token": token,
        "local_files_only": local_files_only,
        "force_download": force_download,
    }
    target = str(name_or_repo_or_path)
    if pretrained:
        if overrides:
            raise ValueError(
                "a pretrained model keeps the config it was trained with; drop "
                f"{', '.join(sorted(overrides))} or pass pretrained=False"
            )
        if not (target and Path(target).is_dir()) and "/" not in target:
            parse_model_name(target)  # an unknown name fails here, listing the known ones
        return load_model(name_or_repo_or_path, **hub_options).model
    given = sorted(key for key, value in hub_options.items() if value not in (None, False))
    if given:
        raise ValueError(f"{', '.join(given)} only apply to trained weights: pass pretrained=True")
    if isinstance(name_or_repo_or_path, Path) or "/" in target:
        raise ValueError(
            f"{target!r} is a Hub repo id or a folder, which holds a trained model: pass pretrained=True "
            "(fresh networks are made from registry names, see bcop.list_models())"
        )
    return _fresh(target, overrides)


def _fresh(name: str, overrides: dict[str, Any]) -> LipschitzNet:
    """A freshly initialised registry network with ``overrides`` applied to its config."""
    config = parse_model_name(name)
    fields = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise TypeError(f"create_model() got unknown config fields {unknown}; fields: {sorted(fields)}")
    return LipschitzNet(dataclasses.replace(config, **overrides))

"""Resumable training state: weights, optimiser moments and the random generator, written so a
stopped run continues exactly, and the check that a resumed run keeps its recipe.

A state folder holds ``state.safetensors`` (tensors; nothing is unpickled) and ``state.json``
(the caller's ``info`` and the optimiser's parameter groups). Both are written to temporary
names and renamed, so a run killed while saving leaves the previous state whole.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

__all__ = ["save_state", "load_state", "changed_options", "check_resumable"]


def save_state(
    folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer, info: dict[str, Any]
) -> None:
    """Write weights, optimiser moments and RNG state (safetensors) plus ``info`` (JSON)."""
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {f"model.{k}": v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    opt = optimizer.state_dict()
    for idx, state in opt["state"].items():
        for key, value in state.items():
            tensors[f"optim.{idx}.{key}"] = torch.as_tensor(value).contiguous().cpu()
    tensors["rng.torch"] = torch.get_rng_state()
    tmp = folder / "state.safetensors.tmp"
    save_file(tensors, str(tmp))
    meta = {**info, "param_groups": opt["param_groups"]}
    (folder / "state.json.tmp").write_text(json.dumps(meta, indent=2))
    tmp.replace(folder / "state.safetensors")
    (folder / "state.json.tmp").replace(folder / "state.json")


def load_state(folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Restore what :func:`save_state` wrote into ``model``, ``optimizer`` and torch's RNG; returns
    the ``info`` saved with it."""
    tensors = load_file(str(folder / "state.safetensors"))
    meta = json.loads((folder / "state.json").read_text())
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta.pop("param_groups")})
    torch.set_rng_state(tensors["rng.torch"])
    return meta


def changed_options(
    previous: dict[str, Any], current: dict[str, Any], may_change: Collection[str]
) -> list[str]:
    """The options a resumed run would change, ``"--name old (was) != new (now)"`` each: every
    setting but ``may_change`` fixes what the steps so far were trained with."""
    return [
        f"--{name.replace('_', '-')} {previous[name]} (was) != {current[name]} (now)"
        for name in current
        if name not in may_change and name in previous and previous[name] != current[name]
    ]


def check_resumable(folder: Path, current: dict[str, Any], may_change: Collection[str]) -> None:
    """Refuse to continue the run saved in ``folder`` (its ``state.json`` holds the options as
    ``"config"``) with options other than ``may_change`` changed.

    Raises:
        ValueError: naming each changed option and what to do instead.
    """
    previous = json.loads((folder / "state.json").read_text())["config"]
    changed = changed_options(previous, current, may_change)
    if changed:
        allowed = ", ".join(f"--{name.replace('_', '-')}" for name in sorted(may_change))
        raise ValueError(
            f"{folder} was trained with other options: {'; '.join(changed)}. Continue it with the "
            f"original options (only {allowed} may change) or start a new run with another --out."
        )

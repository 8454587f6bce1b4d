"""Every name deprecated in this release still works and warns, naming its replacement.

Each renaming adds a row to ``RENAMED``: (module, old name, new name as the warning states it).
"""

from __future__ import annotations

import importlib
import re

import pytest

from bcop.deprecation import deprecated_names

RENAMED: list[tuple[str, str, str]] = [
    ("bcop", "MODEL_NAMES", "bcop.list_models()"),
    ("bcop", "build_model", "bcop.models.LipschitzNet(ModelConfig.from_dict(config))"),
    ("bcop", "certified_accuracy", "bcop.certified_accuracy_percent"),
    ("bcop.models", "MODEL_NAMES", "bcop.list_models()"),
    ("bcop.models", "build_model", "bcop.models.LipschitzNet(ModelConfig.from_dict(config))"),
    ("bcop.models", "create_model", "bcop.create_model"),
    ("bcop.hub", "PRETRAINED_MODELS", "bcop.list_models(pretrained=True)"),
    ("bcop.certify", "certified_accuracy", "bcop.certify.certified_accuracy_percent"),
    ("bcop.attacks", "LOSSES", "bcop.attacks.ATTACK_LOSSES"),
    ("bcop.train", "LOSSES", "bcop.losses.TRAINING_LOSSES"),
    ("bcop.train", "multiclass_hinge", "bcop.losses.multiclass_hinge"),
    ("bcop.train", "make_loss", "bcop.losses.make_loss"),
    ("bcop.train", "save_state", "bcop.checkpoint.save_state"),
    ("bcop.train", "load_state", "bcop.checkpoint.load_state"),
    ("bcop.train", "changed_options", "bcop.checkpoint.changed_options"),
    ("bcop.train", "describe_hardware", "bcop.hardware.describe_hardware"),
    ("bcop.train", "is_cpu_hardware", "bcop.hardware.is_cpu_hardware"),
    ("bcop.live", "train_side_by_side", "bcop.live.train_classifiers_side_by_side"),
    ("bcop.wasserstein", "train_side_by_side", "bcop.wasserstein.train_critics_side_by_side"),
    ("bcop.data", "to_mnist_format", "bcop.preprocess.to_mnist_format"),
    ("bcop.data", "BLANK_MESSAGE", "bcop.preprocess.BLANK_MESSAGE"),
    ("bcop.data", "MAX_SIDE", "bcop.preprocess.MAX_SIDE"),
    ("bcop.data", "MNIST_BOX", "bcop.preprocess.MNIST_BOX"),
    ("bcop.data", "INK_THRESHOLD", "bcop.preprocess.INK_THRESHOLD"),
    ("bcop.data", "MIN_CONTRAST", "bcop.preprocess.MIN_CONTRAST"),
    ("bcop.layers", "BjorckLinear", "bcop.layers.OrthogonalLinear"),
    ("bcop.layers.linear", "BjorckLinear", "bcop.layers.OrthogonalLinear"),
    ("bcop.layers.conv", "OrthonormalisedConv2d", "bcop.layers.conv.OrthonormalizedConv2d"),
]


@pytest.mark.parametrize(("module", "old", "new"), RENAMED)
def test_a_deprecated_name_still_works_and_warns(module: str, old: str, new: str) -> None:
    mod = importlib.import_module(module)
    with pytest.warns(DeprecationWarning, match=re.escape(new)):
        value = getattr(mod, old)
    assert value is not None


def test_the_deprecation_helper_warns_and_refuses_unknown_names() -> None:
    getter = deprecated_names("pkg.mod", {"OLD": ("pkg.mod.NEW", 42)})
    with pytest.warns(DeprecationWarning, match=r"pkg\.mod\.OLD is deprecated .* use pkg\.mod\.NEW"):
        assert getter("OLD") == 42
    with pytest.raises(AttributeError, match="no attribute 'missing'"):
        getter("missing")


# --- the Hub owner's old names: an environment variable, a keyword and a flag, not attributes ---


def test_the_old_owner_variable_bcop_hub_repo_still_works_and_warns(monkeypatch: pytest.MonkeyPatch) -> None:
    from bcop.hub import hub_owner

    monkeypatch.delenv("BCOP_HUB_OWNER", raising=False)
    monkeypatch.setenv("BCOP_HUB_REPO", "someone")
    with pytest.warns(DeprecationWarning, match=r"\$BCOP_HUB_REPO is deprecated .* use \$BCOP_HUB_OWNER"):
        assert hub_owner() == "someone"
    monkeypatch.setenv("BCOP_HUB_OWNER", "other")  # the new name wins, without a warning
    assert hub_owner() == "other"


def test_the_old_keyword_hub_namespace_still_works_and_warns() -> None:
    from bcop.hub import checkpoints_dir, load_model

    with pytest.warns(DeprecationWarning, match="the keyword hub_namespace is deprecated .* use owner"):
        loaded = load_model("bcop-small-mnist", hub_namespace="")
    assert (loaded.source, loaded.location) == ("local", checkpoints_dir() / "bcop-small-mnist")


def test_the_old_app_flag_hub_repo_still_works_and_warns() -> None:
    import app

    with pytest.warns(DeprecationWarning, match="app.py --hub-repo is deprecated .* use --hub-owner"):
        assert app.parse_args(["--hub-repo", "someone"]).hub_owner == "someone"
    assert app.parse_args(["--hub-owner", ""]).hub_owner == ""

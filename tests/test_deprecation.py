"""Every name deprecated in this release still works and warns, naming its replacement.

Each renaming adds a row to ``RENAMED``: (module, old name, new name as the warning states it).
"""

from __future__ import annotations

import importlib

import pytest

from bcop.deprecation import deprecated_names

RENAMED: list[tuple[str, str, str]] = []


@pytest.mark.parametrize(("module", "old", "new"), RENAMED)
def test_a_deprecated_name_still_works_and_warns(module: str, old: str, new: str) -> None:
    mod = importlib.import_module(module)
    with pytest.warns(DeprecationWarning, match=new.replace(".", r"\.")):
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

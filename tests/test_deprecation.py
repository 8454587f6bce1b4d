"""Every name deprecated in this release still works and warns, naming its replacement.

Each renaming adds a row to ``RENAMED``: (module, old name, new name as the warning states it).
"""

from __future__ import annotations

import importlib
import re

import pytest

from bcop.deprecation import deprecated_names

RENAMED: list[tuple[str, str, str]] = []


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

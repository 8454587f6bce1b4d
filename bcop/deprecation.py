"""Old public names kept for one release: they still work and warn, naming the new one.

A module that renamed ``old`` to ``new`` keeps the old name importable by ending with::

    __getattr__ = deprecated_names(__name__, {"old": ("new", new)})

(for a constant or class) and, for a renamed function that must also stay callable with the
old name as an attribute, the same entry pointing at the new function. Every name listed here
is in the CHANGELOG under the release that deprecated it, and ``tests/test_deprecation.py``
checks that each still works and warns.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["deprecated_names", "warn_renamed"]


def warn_renamed(old: str, new: str, stacklevel: int = 3) -> None:
    """Warn (``DeprecationWarning``) that ``old`` is now ``new`` and goes in the next release."""
    warnings.warn(
        f"{old} is deprecated and will be removed in the next release: use {new}",
        DeprecationWarning,
        stacklevel=stacklevel,
    )


def deprecated_names(module: str, renamed: Mapping[str, tuple[str, Any]]) -> Callable[[str], Any]:
    """A module ``__getattr__`` that serves each old name with a warning.

    Args:
        module: the module's ``__name__`` (for the error on unknown names).
        renamed: old name -> (new name as users should write it, the object it now is).

    Returns:
        The function to assign to the module's ``__getattr__``.
    """

    def __getattr__(name: str) -> Any:
        if name in renamed:
            new, value = renamed[name]
            warn_renamed(f"{module}.{name}", new)
            return value
        raise AttributeError(f"module {module!r} has no attribute {name!r}")

    return __getattr__

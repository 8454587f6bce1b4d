"""User errors: a readable message on the page and one line in the server log, no traceback."""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import gradio as gr

log = logging.getLogger("bcop.app")
C = TypeVar("C", bound=gr.components.Component)

# What a visitor's input can cause (a bad image, a bad choice): shown as it is, logged in one line.
USER_ERRORS = (ValueError, TypeError, OSError, RuntimeError)


def refuse(message: str, where: str) -> gr.Error:
    """The error shown for an ordinary mistake of the user's, logged as one line."""
    log.info("%s refused: %s", where, message)
    return gr.Error(message, print_exception=False)


def _page_error(err: Exception, where: str) -> gr.Error:
    if isinstance(err, gr.Error):
        return refuse(str(err.message), where)
    if isinstance(err, USER_ERRORS):
        return refuse(str(err), where)
    log.exception("unexpected error in %s", where)
    return gr.Error(f"internal error ({type(err).__name__}: {err}); please report it", print_exception=False)


def friendly(fn: Callable) -> Callable:
    """Turn any exception of ``fn`` into a gr.Error with a readable message (no traceback)."""
    where = fn.__name__
    if inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)
        def generator(*args: Any, **kwargs: Any) -> Iterator[Any]:
            try:
                yield from fn(*args, **kwargs)
            except Exception as err:
                raise _page_error(err, where) from err

        return generator

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as err:
            raise _page_error(err, where) from err

    return wrapper


def validated(component: C) -> C:
    """Make Gradio's own check of an input's value (a choice not offered, a number out of range,
    which only API clients can send) a one-line refusal like ours: the stock error has its
    traceback printed. Wraps the instance's ``preprocess``, as :func:`demo.inputs.readable_upload`."""
    preprocess = component.preprocess
    where = f"{type(component).__name__} input"

    @functools.wraps(preprocess)
    def checked(payload: Any) -> Any:
        try:
            return preprocess(payload)
        except gr.Error as err:
            raise refuse(str(err.message), where) from err

    component.preprocess = checked  # type: ignore[method-assign]
    return component

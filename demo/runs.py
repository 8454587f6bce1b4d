"""Long runs that take turns (the live training, the Wasserstein critics: one run at a time):
each visitor's Stop, and what a visitor waiting for their turn is told."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

STOPPED = " · stopped (you pressed Stop)"


@dataclass
class _Run:
    session: str
    started: float  # time.monotonic()
    budget_s: float


class TakingTurns:
    """The run in progress of an event with ``concurrency_limit=1`` (whose, since when, within
    what time budget), and a Stop per visitor's session.

    A Stop pressed while the visitor's run still waits for its turn counts when the run starts;
    pressing the run's button again forgets it (:meth:`waiting_note`).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._run: _Run | None = None
        self._stops: dict[str, threading.Event] = {}

    @contextmanager
    def running(self, session: str, budget_s: float) -> Iterator[threading.Event]:
        """Hold the turn of ``session`` for a run of at most ``budget_s`` seconds; yields the event
        that its Stop sets."""
        with self._lock:
            stop = self._stops.setdefault(session, threading.Event())
            self._run = _Run(session, time.monotonic(), budget_s)
        try:
            yield stop
        finally:
            with self._lock:
                self._run = None
                self._stops.pop(session, None)

    def stop(self, session: str) -> None:
        """Ask the run of ``session`` to stop at its next report (or as soon as it starts)."""
        with self._lock:
            self._stops.setdefault(session, threading.Event()).set()

    def seconds_left(self) -> float | None:
        """The most seconds the run in progress has left (what remains of its time budget); None
        when no run is in progress."""
        with self._lock:
            run = self._run
            return None if run is None else max(0.0, run.budget_s - (time.monotonic() - run.started))

    def waiting_note(self, session: str) -> str:
        """Shown when ``session`` asks for a run: its status until the run starts, saying whether
        another visitor's run holds the turn and about how long it has left. Forgets an earlier
        Stop of ``session``."""
        with self._lock:
            self._stops.pop(session, None)
            busy = self._run is not None and self._run.session != session
        left = self.seconds_left() if busy else None
        if left is None:
            return "Starting…"
        return (
            f"Another visitor's run is in progress, at most {left:.0f} s left: yours starts when "
            "it ends (one run at a time, each within its time budget)."
        )

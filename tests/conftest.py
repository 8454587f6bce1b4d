"""Fixtures shared by the test modules."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

TEST_HUB_TIMEOUT_S = 2.0  # the deadline of a Hub call in tests (a test of the default sets its own)


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """Tiny tensors: one intra-op thread avoids oversubscribing the 2 cores (10x faster when
    other processes are busy); the previous setting is restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def embedded_checkpoints_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Registry names load from ``checkpoints/`` unless a test asks for the Hub (the tests of
    Hub loading point the client at a fake Hub on 127.0.0.1 and set ``BCOP_HUB_OWNER`` themselves),
    so no test depends on, or waits for, huggingface.co; Hub calls get a short deadline."""
    monkeypatch.setenv("BCOP_HUB_OWNER", "")
    monkeypatch.delenv("BCOP_HUB_REPO", raising=False)  # the deprecated name of BCOP_HUB_OWNER
    monkeypatch.setenv("BCOP_HUB_TIMEOUT", str(TEST_HUB_TIMEOUT_S))

"""End to end in a real headless Chromium: load the page, pick an example digit, certify it.

Needs Debian's ``chromium`` at /usr/bin/chromium (skipped without it, except under CI, where
``.ci/run`` installs it and its absence is a failure). The app runs in this process on 127.0.0.1
with fresh Small models.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from playwright import sync_api

import app
from bcop.hub import save_model
from bcop.models import create_model

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
MODELS = ["bcop-small-mnist", "plain-small-mnist"]
TIMEOUT_MS = 60_000

pytestmark = pytest.mark.skipif(
    not os.environ.get("CI") and not CHROMIUM.is_file(),
    reason="needs /usr/bin/chromium (apt-get install chromium)",
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("checkpoints")
    for i, name in enumerate(MODELS):
        torch.manual_seed(i)
        save_model(create_model(name), root / name, card=f"# {name}\n")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BCOP_CHECKPOINTS", str(root))
        mp.delenv("BCOP_HUB_REPO", raising=False)
        torch.set_num_threads(1)
        demo = app.launch(host="127.0.0.1", port=free_port(), warm=False)
        try:
            yield demo.local_url
        finally:
            demo.close()


def test_pick_an_example_digit_and_certify_it_in_chromium(url: str, tmp_path: Path) -> None:
    screenshot = tmp_path / "certified.png"
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(TIMEOUT_MS)
            page.goto(url)
            page.get_by_text("Or pick an MNIST test digit").wait_for()
            page.locator("img[src*='digit_7_0']").first.click()
            # the example becomes the input: the 28x28 preview appears
            page.locator("#model-input img").wait_for()
            page.get_by_role("button", name="Certify", exact=True).click()
            summary = page.locator("#certify-summary")
            summary.get_by_text("certified radius").first.wait_for()
            page.locator(".js-plotly-plot").first.wait_for()  # the probabilities chart is drawn
            text = summary.inner_text()
            page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    radii = [float(r) for r in re.findall(r"certified radius (\d+\.\d+)", text)]
    assert len(radii) == len(MODELS) and all(r >= 0 for r in radii), f"{text!r}; screenshot: {screenshot}"
    assert all(name in text for name in MODELS), f"{text!r}; screenshot: {screenshot}"

"""End to end in a real headless Chromium: what a visitor sees and does.

The landing state (a worked example, certified and charted, without a click), results that
follow every change of the input (an example, a stroke drawn with the brush selected by
default, Clear: a prompt and no empty frames) and of the chosen models, a white digit on a
transparent PNG, the model card rendered without its YAML, the attack button, and the live
training's Stop.

Needs Debian's ``chromium`` at /usr/bin/chromium (skipped without it, except under CI, where
``.ci/run`` installs it and its absence is a failure). The app runs in this process on 127.0.0.1
with fresh Small models.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from app_helpers import MODELS, make_checkpoints, served, white_on_transparent
from playwright import sync_api

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
TIMEOUT_MS = 60_000

pytestmark = pytest.mark.skipif(
    not os.environ.get("CI") and not CHROMIUM.is_file(),
    reason="needs /usr/bin/chromium (apt-get install chromium)",
)


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with served(make_checkpoints(tmp_path_factory.mktemp("checkpoints"), MODELS)) as app:
        yield app.local_url


@pytest.fixture(scope="module")
def browser() -> Iterator[sync_api.Browser]:
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def page(browser: sync_api.Browser, url: str, tmp_path: Path) -> Iterator[sync_api.Page]:
    """A fresh page on the app, opened and showing its landing example; a screenshot is left in
    ``tmp_path`` when a test fails."""
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(url)
    page.locator("#certify-summary").get_by_text("certified radius").first.wait_for()
    try:
        yield page
    except BaseException:
        page.screenshot(path=str(tmp_path / "failure.png"), full_page=True)
        raise
    finally:
        page.close()


SUMMARY = "#certify-summary [data-testid=markdown]"  # the text, not the progress shown over it


def summary(page: sync_api.Page) -> str:
    return page.locator(SUMMARY).inner_text()


def wait_for_new_summary(page: sync_api.Page, old: str) -> str:
    page.wait_for_function(
        f"old => document.querySelector('{SUMMARY}').innerText !== old", arg=old, timeout=TIMEOUT_MS
    )
    return summary(page)


def draw_stroke(page: sync_api.Page) -> None:
    box = page.locator("#sketch-input canvas").first.bounding_box()
    x, y = box["x"] + 0.4 * box["width"], box["y"] + 0.2 * box["height"]
    page.mouse.move(x, y)
    page.mouse.down()
    for i in range(20):
        page.mouse.move(x + 3 * i, y + 10 * i)
    page.mouse.up()


def test_the_page_opens_on_a_certified_example_with_its_chart(page: sync_api.Page) -> None:
    text = summary(page)
    radii = [float(r) for r in re.findall(r"certified radius (\d+\.\d+)", text)]
    assert len(radii) == len(MODELS) and all(r >= 0 for r in radii), text
    assert all(name in text for name in MODELS), text
    page.locator("#model-input img").wait_for()
    page.locator(".js-plotly-plot").first.wait_for()  # the probabilities chart is drawn
    assert "only" in page.locator("#digits-only").inner_text(), "the page says the models only know digits"


def test_results_follow_the_input_an_example_a_drawing_and_the_models(page: sync_api.Page) -> None:
    preview = page.locator("#model-input img").get_attribute("src")
    landing = summary(page)
    page.locator("img[src*='digit_2_0']").first.click()
    after_example = wait_for_new_summary(page, landing)
    page.wait_for_function("old => document.querySelector('#model-input img').src !== old", arg=preview)
    assert after_example.count("certified radius") == len(MODELS)
    page.get_by_role("tab", name="Draw").click()
    draw_stroke(page)  # works without picking the brush first
    after_drawing = wait_for_new_summary(page, after_example)
    assert after_drawing.count("certified radius") == len(MODELS)
    page.locator("#sketch-input button[aria-label='Clear canvas']").click()
    page.locator(SUMMARY).get_by_text("No image yet").wait_for()
    assert not page.get_by_text("Certificates", exact=True).is_visible(), "no empty table under the prompt"
    draw_stroke(page)  # the brush is still selected after Clear
    after_clear = wait_for_new_summary(page, summary(page))
    assert after_clear.count("certified radius") == len(MODELS)
    page.get_by_label(MODELS[-1], exact=True).uncheck()  # and the results follow the chosen models
    page.wait_for_function(
        f"name => !document.querySelector('{SUMMARY}').innerText.includes(name)", arg=MODELS[-1]
    )
    assert summary(page).count("certified radius") == len(MODELS) - 1


def test_a_white_digit_on_a_transparent_png_is_certified(page: sync_api.Page, tmp_path: Path) -> None:
    landing = summary(page)
    page.locator("#upload-input input[type=file]").set_input_files(white_on_transparent(tmp_path, 280))
    assert wait_for_new_summary(page, landing).count("certified radius") == len(MODELS)
    assert page.get_by_text("blank").count() == 0


def test_the_model_card_is_rendered_without_its_yaml(page: sync_api.Page) -> None:
    page.get_by_role("tab", name="Models").click()
    card = page.locator("#model-card")
    card.get_by_text("A freshly initialised test model.").wait_for()
    assert card.locator("h1").inner_text().strip() == MODELS[0]
    assert "library_name" not in card.inner_text() and "license" not in card.inner_text()
    assert "README.md" not in page.locator("#models-table").inner_text()


def test_stop_ends_the_live_training_and_says_so(page: sync_api.Page) -> None:
    page.get_by_role("tab", name="Gradient norms").click()
    page.get_by_role("button", name="Train", exact=True).click()
    status = page.locator("#train-status")
    status.get_by_text(re.compile(r"step \d+/200")).wait_for()
    page.get_by_role("button", name="Stop", exact=True).click()
    status.get_by_text("stopped (you pressed Stop)").wait_for()


def test_the_attack_button_waits_while_it_runs_and_the_progress_shows_under_it(page: sync_api.Page) -> None:
    button = page.locator("#attack-button")
    assert not page.locator("#attack-summary").is_visible(), "no empty attack charts before an attack"
    page.evaluate(
        """() => new MutationObserver(() => {
            window.attackButtonWasDisabled ||= document.querySelector('#attack-button').disabled;
        }).observe(document.body, {subtree: true, attributes: true, childList: true})"""
    )
    button.click()
    page.locator("#attack-status").get_by_text("Done").wait_for()
    assert page.evaluate("() => window.attackButtonWasDisabled"), "disabled while the attack ran"
    assert button.is_enabled()
    text = page.locator("#attack-summary").inner_text()
    assert all(f"{name}: PGD at ε = 1.58" in text for name in MODELS), text

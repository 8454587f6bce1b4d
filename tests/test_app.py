"""The Gradio app: its endpoints driven over HTTP with gradio_client (good and bad input), and its
handlers called directly for what the page does on its own (results following the input).

The app runs in this process on 127.0.0.1 (a free port) with a temporary checkpoints folder of
freshly initialised Small models, so nothing here depends on training progress.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import huggingface_hub.constants
import numpy as np
import pytest
import torch
from app_helpers import (
    EXAMPLES,
    MODELS,
    digit_strokes,
    huge_png_header,
    make_checkpoints,
    png,
    served,
    white_on_transparent,
)
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

import bcop.hub
import demo.store
from bcop.gradnorm import layer_gradient_norms
from bcop.preprocess import to_mnist_format
from bcop.report import ImageCertificate
from bcop.spectra import jacobian_spectra
from bcop.wasserstein import Estimate, EstimateSnapshot
from demo import certify_tab, gradients_tab, models_tab, runs
from demo.errors import validated
from demo.inputs import NO_IMAGE_MESSAGE, UnreadableUpload
from demo.store import ModelStore
from tests.fakehub import FakeHub, point_client_at

EXAMPLE = EXAMPLES / "digit_7_0.png"
OTHER_EXAMPLE = EXAMPLES / "digit_2_0.png"


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_checkpoints(tmp_path_factory.mktemp("checkpoints"), MODELS)


@pytest.fixture(scope="module")
def client(checkpoints: Path) -> Iterator[Client]:
    with served(checkpoints) as app:
        yield Client(app.local_url, verbose=False)


@pytest.fixture
def store(checkpoints: Path, monkeypatch: pytest.MonkeyPatch) -> ModelStore:
    monkeypatch.setenv("BCOP_CHECKPOINTS", str(checkpoints))
    return ModelStore("")


def table(result: dict) -> list[dict]:
    return [dict(zip(result["headers"], row, strict=True)) for row in result["data"]]


def plot(result: dict) -> dict:
    assert result["type"] == "plotly"
    return json.loads(result["plot"])


def certify(
    client: Client, upload: str | None, sketch: dict | None = None, models: list[str] = MODELS
) -> tuple:
    return client.predict(sketch, handle_file(upload) if upload else None, models, api_name="/certify")


def test_certify_gives_each_model_a_prediction_and_a_consistent_radius(client: Client) -> None:
    preview, certificates, probabilities, summary = certify(client, str(EXAMPLE))
    rows = table(certificates)
    assert [r["model"] for r in rows] == MODELS
    for row in rows:
        assert 0 <= row["prediction"] <= 9
        # radius = margin / (sqrt(2) L), to the 4 decimals the table shows
        expected = row["margin"] / (math.sqrt(2) * row["Lipschitz bound"])
        assert row["certified radius"] == pytest.approx(expected, abs=2e-4)
        assert "checkpoints" in row["loaded from"]
    bcop = rows[0]
    assert bcop["Lipschitz bound"] == pytest.approx(1.0, abs=1e-3), "BCOP + Björck layers are 1-Lipschitz"
    assert "certified radius" in summary
    assert len(plot(probabilities)["data"]) == len(MODELS)
    assert np.asarray(Image.open(preview)).shape == (28, 28)


def test_rows_and_colours_follow_the_display_order_and_every_model_has_its_own(client: Client) -> None:
    _, certificates, probabilities, _ = certify(client, str(EXAMPLE), models=MODELS[::-1])
    assert [r["model"] for r in table(certificates)] == MODELS
    colours = [trace["marker"]["color"] for trace in plot(probabilities)["data"]]
    assert len(set(colours)) == len(MODELS)
    from demo.figures import MODEL_COLORS

    assert MODEL_COLORS["bcop-large-mnist"] != MODEL_COLORS["bcop-small-mnist"]
    assert len(set(MODEL_COLORS.values())) == len(MODEL_COLORS)


def test_a_useless_certificate_says_why() -> None:
    probabilities = torch.full((10,), 0.1)
    plain = ImageCertificate("plain-large-mnist", 7, probabilities, 12.4, 6600.6, 0.0013)
    line = certify_tab._certificate_line(plain)
    assert "useless certificate" in line and "L = 6,601" in line and "product of their norms" in line
    bcop = ImageCertificate("bcop-large-mnist", 7, probabilities, 3.1, 1.0, 2.197)
    line = certify_tab._certificate_line(bcop)
    assert "no perturbation with ‖δ‖₂ < 2.197 can change this prediction" in line


def test_preprocess_returns_the_lossless_28x28_model_input(client: Client) -> None:
    path = client.predict(None, handle_file(str(EXAMPLE)), api_name="/preprocess")
    image = Image.open(path)
    assert image.format == "PNG" and image.size == (28, 28)
    assert np.asarray(image).max() == 255, "ink is stretched to full brightness"


def test_a_drawing_is_certified_like_an_upload(client: Client, tmp_path: Path) -> None:
    stroke = np.zeros((336, 336, 4), dtype=np.uint8)  # transparent canvas, black ink
    stroke[..., 3] = 255 - digit_strokes(336)
    path = handle_file(png(tmp_path, "sketch.png", stroke))
    sketch = {"background": None, "layers": [path], "composite": path, "id": None}
    _, certificates, _, _ = certify(client, None, sketch)
    assert len(table(certificates)) == len(MODELS)


def test_a_white_digit_on_a_transparent_background_is_read_like_a_black_one(
    client: Client, tmp_path: Path
) -> None:
    white = white_on_transparent(tmp_path)
    black = png(tmp_path, "black_on_white.png", digit_strokes(64))
    torch.testing.assert_close(to_mnist_format(white), to_mnist_format(black), atol=1e-6, rtol=0)
    preview = client.predict(None, handle_file(white), api_name="/preprocess")
    assert np.asarray(Image.open(preview)).max() == 255


def test_attack_finds_nothing_inside_the_certified_radius_and_says_what_it_measured(client: Client) -> None:
    models = ["bcop-small-mnist", "plain-small-mnist"]
    grid, attacks, bounds, summary = client.predict(
        None, handle_file(str(EXAMPLE)), models, 1.0, api_name="/attack"
    )
    for row in table(attacks):
        assert row["PGD ‖δ‖"] <= 1.0 + 1e-3
        if row["PGD fooled it"]:
            assert row["PGD ‖δ‖"] >= row["certified radius (lower bound)"] - 1e-3
        smallest = row["smallest adversarial ‖δ‖ (upper bound)"]
        if smallest is not None:
            assert smallest >= row["certified radius (lower bound)"] - 1e-3, "the certificate is a proof"
    assert len(plot(grid)["data"]) == 4 * len(models)  # image and perturbation, PGD and smallest
    assert {t.get("name") for t in plot(bounds)["data"]} >= {
        "certified radius (proven lower bound)",
        "smallest adversarial found (upper bound)",
    }
    assert "certified" in summary and ("the certified radius" in summary or "found none" in summary)


def test_gradient_norms_draw_one_gradient_and_the_jacobian_band_per_model(client: Client) -> None:
    figure = plot(client.predict(None, handle_file(str(EXAMPLE)), MODELS[:2], api_name="/gradient_norms"))
    curves = [t for t in figure["data"] if t.get("showlegend") is not False]
    assert [t["name"] for t in curves] == MODELS[:2]
    for trace in figure["data"]:
        assert [label.split("<br>")[0] for label in trace["x"]] == [
            "conv1",
            "conv2",
            "dense1",
            "logits",
            "output",
        ]
        assert all(v > 0 for v in trace["y"])
    assert figure["layout"]["yaxis"]["type"] == "log"
    assert any("adds" in label for label in figure["data"][0]["x"]), "channel-expanding layers are marked"
    assert all(figure["layout"][axis]["title"]["text"] for axis in ("xaxis", "xaxis2", "yaxis", "yaxis2"))


def test_log_axes_label_values_below_one_as_decimals() -> None:
    from demo.figures import log_axis

    axis = log_axis([0.07, 0.3, 1.0, 12.0])
    labels = dict(zip(axis["ticktext"], axis["tickvals"], strict=True))
    assert {"0.05", "0.1", "0.2", "0.5", "1", "2", "5", "10", "20"} <= set(labels)
    assert labels["0.2"] == pytest.approx(0.2) and labels["5"] == pytest.approx(5), "0.2 reads 0.2, not 2"
    assert log_axis([1.0, 1.4]) == {"type": "log"}, "a narrow range keeps plotly's finer ticks"


def test_bcop_singular_values_are_all_one_and_plain_ones_are_not(client: Client) -> None:
    spectra, summary = client.predict(["bcop-small-mnist", "plain-small-mnist"], api_name="/singular_values")
    rows = table(summary)
    bcop = [r for r in rows if r["model"] == "bcop-small-mnist"]
    plain = [r for r in rows if r["model"] == "plain-small-mnist"]
    assert [r["layer"] for r in bcop] == ["conv1", "conv2"]
    for row in bcop:
        assert row["min σ"] == pytest.approx(1.0, abs=1e-4) and row["max σ"] == pytest.approx(1.0, abs=1e-4)
    assert any(abs(r["max σ"] - r["min σ"]) > 0.1 for r in plain)
    markers = [t for t in plot(spectra)["data"] if t["type"] == "scatter"]
    assert len(markers) == 2, "the smallest and largest values are drawn as markers, above the σ = 1 line"


def test_models_table_shows_percentages_and_links_no_raw_card(client: Client) -> None:
    overview = client.predict(api_name="/models")
    lines = {line.split("|")[1].strip(): line for line in overview.splitlines() if line.startswith("| ")}
    bcop = lines["bcop-small-mnist"]
    for value in ("97.5%", "45.6%", "78.9%", "81.2%", "97.5% / 45.6% / 75.0%"):
        assert value in bcop
    assert "README.md" not in overview and "/gradio_api/file=" not in overview
    assert "not evaluated yet" in lines["plain-small-mnist"]


def test_model_card_is_rendered_without_its_yaml_front_matter(client: Client) -> None:
    card = client.predict("bcop-small-mnist", api_name="/model_card")
    assert card.startswith("# bcop-small-mnist") and "freshly initialised" in card
    assert "library_name" not in card and "---" not in card
    assert models_tab.card_body("# no front matter\n---\ntext") == "# no front matter\n---\ntext"


def test_certified_accuracy_chart_has_one_line_per_evaluated_model_in_percent(store: ModelStore) -> None:
    figure = models_tab.Actions(store).accuracy_chart()
    (line,) = figure.data
    assert line.name == "bcop-small-mnist"
    assert list(line.x) == [0, 1, 1.58, 2] and list(line.y) == pytest.approx([97.5, 70, 45.6, 20])


def test_live_training_streams_updates_until_done(client: Client) -> None:
    job = client.submit(["bcop-small-mnist", "plain-small-mnist"], 10, 16, "hinge", api_name="/train_live")
    updates = list(job)
    assert len(updates) >= 3, "a snapshot at the start, every few steps and at the end"
    figure, status = updates[-1]
    assert "step 10/10" in status and "done" in status
    names = {t["name"] for t in plot(figure)["data"] if t.get("showlegend") is not False}
    assert names == {"bcop-small-mnist", "plain-small-mnist"}


def test_stop_ends_the_training_with_a_status_that_says_it_stopped(store: ModelStore) -> None:
    actions, request = gradients_tab.Actions(store), SimpleNamespace(session_hash="visitor")
    other = SimpleNamespace(session_hash="someone else")
    run = actions.train_live(["bcop-small-mnist"], 100, 8, "hinge", request)
    _, status = next(run)
    assert status.startswith("step 0/100")
    actions.stop(other)  # another visitor's Stop does not stop this run
    assert "stopped" not in next(run)[1]
    actions.stop(request)
    _, status = next(run)
    assert status.endswith(runs.STOPPED) and "step 10/100" in status
    assert next(run, None) is None


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # 10^8 pixels, on purpose
def test_odd_but_valid_images_are_accepted(client: Client, tmp_path: Path) -> None:
    huge = png(tmp_path, "huge.png", digit_strokes(10_000), compress_level=1)
    rgba = np.zeros((64, 64, 4), dtype=np.uint8)
    rgba[..., 3] = 255 - digit_strokes(64)
    frames = [Image.fromarray(digit_strokes(60)), Image.fromarray(np.full((60, 60), 255, np.uint8))]
    gif = tmp_path / "animated.gif"
    frames[0].save(gif, save_all=True, append_images=frames[1:], duration=100, loop=0)
    sixteen = tmp_path / "deep.png"
    Image.fromarray(digit_strokes(64, np.uint16, 65535)).save(sixteen)
    assert Image.open(sixteen).mode.startswith("I")
    for path in [huge, png(tmp_path, "rgba.png", rgba), str(gif), str(sixteen)]:
        _, certificates, _, _ = certify(client, path, models=MODELS[:1])
        assert len(table(certificates)) == 1, path


def bad_inputs(tmp: Path) -> list[tuple[str, tuple, str, str]]:
    """(name, predict args, api name, expected words in the error)."""
    text = tmp / "notes.txt"
    text.write_text("not an image")
    truncated = tmp / "truncated.png"
    truncated.write_bytes(EXAMPLE.read_bytes()[:60])
    svg = tmp / "digit.svg"
    svg.write_text(
        '<svg xmlns="http://www.w3.org/2000/svg" width="28" height="28"><text y="20">7</text></svg>'
    )
    blank = png(tmp, "blank.png", np.full((50, 50), 255, np.uint8))
    empty = handle_file(png(tmp, "empty_sketch.png", np.zeros((336, 336, 4), dtype=np.uint8)))
    sketch = {"background": None, "layers": [], "composite": empty, "id": None}
    digit = handle_file(str(EXAMPLE))
    return [
        ("nothing", (None, None, MODELS), "/certify", NO_IMAGE_MESSAGE),
        ("empty sketch", (sketch, None, MODELS), "/certify", NO_IMAGE_MESSAGE),
        ("blank image", (None, handle_file(blank), MODELS), "/certify", "blank"),
        ("text file", (None, handle_file(str(text)), MODELS), "/certify", "as an image"),
        (
            "truncated png",
            (None, handle_file(str(truncated)), MODELS),
            "/certify",
            "truncated.png is damaged",
        ),
        ("svg", (None, handle_file(str(svg)), MODELS), "/certify", "digit.svg is a vector (SVG) image"),
        ("huge png", (None, handle_file(huge_png_header(tmp)), MODELS), "/certify", "huge.png is too large"),
        ("unknown model", (None, digit, ["resnet-50"]), "/certify", "not in the list of choices"),
        ("no model", (None, digit, []), "/certify", "choose at least one model"),
        ("epsilon too big", (None, digit, MODELS[:1], 7.0), "/attack", "maximum"),
        ("epsilon negative", (None, digit, MODELS[:1], -1.0), "/attack", "minimum"),
        ("nothing to attack", (None, None, MODELS[:1], 1.0), "/attack", NO_IMAGE_MESSAGE),
        ("gradients of nothing", (None, None, MODELS[:1]), "/gradient_norms", NO_IMAGE_MESSAGE),
        ("too many steps", (["bcop-small-mnist"], 10_000, 16, "hinge"), "/train_live", "maximum"),
        ("no network", ([], 10, 16, "hinge"), "/train_live", "choose one or more"),
        ("unknown card", ("resnet-50",), "/model_card", "not in the list of choices"),
        ("no spectra", ([],), "/singular_values", "choose at least one model"),
    ]


def test_bad_input_gets_a_clear_message_and_the_server_keeps_serving(client: Client, tmp_path: Path) -> None:
    for name, args, api_name, words in bad_inputs(tmp_path):
        with pytest.raises(AppError) as caught:
            client.predict(*args, api_name=api_name)
        message = str(caught.value)
        assert words in message, f"{name}: {message!r}"
        assert "Traceback" not in message and "upstream Gradio app has raised" not in message, name
        assert "decompression bomb" not in message and "Error" not in message, f"{name}: {message!r}"
        assert str(tmp_path) not in message and "/tmp/" not in message, f"{name} shows a server path"
    _, certificates, _, _ = certify(client, str(EXAMPLE))
    assert len(table(certificates)) == len(MODELS)


def test_a_user_error_is_logged_in_one_line_without_traceback(
    store: ModelStore, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="bcop.app"), pytest.raises(gr.Error):
        certify_tab.Actions(store).certify(None, None, MODELS)
    (record,) = [r for r in caplog.records if r.name == "bcop.app"]
    assert record.getMessage() == f"certify refused: {NO_IMAGE_MESSAGE}" and record.exc_info is None


def test_gradios_own_refusals_are_logged_in_one_line_too(caplog: pytest.LogCaptureFixture) -> None:
    choice = validated(gr.CheckboxGroup(["bcop-small-mnist"]))
    with caplog.at_level(logging.INFO, logger="bcop.app"), pytest.raises(gr.Error) as caught:
        choice.preprocess(["resnet-50"])
    assert caught.value.print_exception is False and "not in the list of choices" in str(caught.value)
    (record,) = [r for r in caplog.records if r.name == "bcop.app"]
    assert record.getMessage().startswith("CheckboxGroup input refused:") and record.exc_info is None


def test_results_follow_the_input_and_clearing_it_clears_them(store: ModelStore, tmp_path: Path) -> None:
    actions = certify_tab.Actions(store)
    sketch_out, upload_out, preview, certificates, _, summary, *attack = actions.from_upload(
        str(OTHER_EXAMPLE), MODELS
    )
    assert sketch_out is None and upload_out == gr.skip(), "an upload replaces the drawing and stays"
    expected = to_mnist_format(OTHER_EXAMPLE)[0].numpy()
    assert np.array_equal(np.asarray(Image.open(preview)), np.round(expected * 255).astype(np.uint8))
    assert list(certificates["model"]) == MODELS and "certified radius" in summary
    assert attack[0] is None and attack[1].empty and attack[3] == "", "the old attack results are gone"
    empty = {"background": None, "layers": [], "composite": np.zeros((336, 336, 4), np.uint8)}
    upload_out, preview, certificates, chart, summary, *_, attack_button, _, _, certify_box = (
        actions.from_sketch(empty, MODELS)
    )
    assert preview is None and certificates.empty and chart is None and not certify_box.visible
    assert summary == certify_tab.NO_IMAGE_SUMMARY and "draw a digit" in summary, "the page says what to do"
    assert not attack_button.interactive, "nothing to attack"
    skipped = actions.from_sketch(empty, MODELS, source="upload")
    assert all(value == gr.skip() for value in skipped), (
        "a stroke's late event, after the visitor moved to an upload or example, changes nothing"
    )


def test_an_update_overtaken_by_a_newer_one_changes_nothing_and_uses_the_newest_models() -> None:
    """Note [the last input wins]: an update certifies with the models last chosen, not those
    its event carried, and one that a newer update began during changes nothing."""
    latest = certify_tab._Latest(["a", "b"])
    seen: list[list[str]] = []

    def certify(image: str, models: list[str]) -> tuple[str, ...]:
        seen.append(models)
        if image == "first":  # a newer choice and its update arrive while this one runs
            certify_tab._remember(["a"], latest)
            assert from_models("second", ["a"], latest) == ("second", "a")
        return image, ",".join(models)

    from_sketch = certify_tab._newest(certify, 1, 2)
    from_models = certify_tab._newest(certify, 1, 2, chooses=True)
    assert from_sketch("first", ["a", "b"], latest) == (gr.skip(), gr.skip()), "overtaken: no change"
    assert from_sketch("third", ["a", "b"], latest) == ("third", "a"), "the old choice it carried is ignored"
    assert seen == [["a", "b"], ["a"], ["a"]]


def test_an_example_arrives_with_its_own_results(store: ModelStore) -> None:
    actions = certify_tab.Actions(store)
    index = certify_tab.EXAMPLES.index(OTHER_EXAMPLE)
    sketch_out, upload_out, preview, certificates, _, summary, *_ = actions.from_example(index, MODELS)
    assert sketch_out is None and upload_out == str(OTHER_EXAMPLE), "the example replaces the drawing"
    expected = to_mnist_format(OTHER_EXAMPLE)[0].numpy()
    assert np.array_equal(np.asarray(Image.open(preview)), np.round(expected * 255).astype(np.uint8))
    assert list(certificates["model"]) == MODELS and summary.count("certified radius") == len(MODELS)
    with pytest.raises(gr.Error, match="choose an example between 0 and"):
        actions.from_example(len(certify_tab.EXAMPLES), MODELS)


def test_results_follow_the_chosen_models(store: ModelStore, tmp_path: Path) -> None:
    actions = certify_tab.Actions(store)
    _, certificates, chart, summary, *attack, certify_box = actions.from_models(
        None, str(EXAMPLE), MODELS[1:]
    )
    assert list(certificates["model"]) == MODELS[1:] and [t.name for t in chart.data] == MODELS[1:]
    assert summary.count("certified radius") == 2 and certify_box.visible
    assert attack[0] is None and attack[1].empty, "attacks on the old choice of models are gone"
    preview, certificates, chart, summary, *_, certify_box = actions.from_models(None, str(EXAMPLE), [])
    assert preview is not None and certificates.empty and chart is None and not certify_box.visible
    assert "Choose at least one model" in summary
    blank = png(tmp_path, "blank.png", np.full((50, 50), 255, np.uint8))
    assert all(v == gr.skip() for v in actions.from_models(None, blank, MODELS)), "its message stays"


def test_a_failed_or_cancelled_attack_leaves_the_button_ready_only_with_an_image(
    store: ModelStore, tmp_path: Path
) -> None:
    actions = certify_tab.Actions(store)
    button, prompt, box = actions.attack_stopped(None, str(EXAMPLE), MODELS)
    assert button.interactive and prompt == certify_tab.ATTACK_PROMPT and not box.visible
    blank = png(tmp_path, "blank.png", np.full((50, 50), 255, np.uint8))
    for nothing in [(None, None, MODELS), (None, blank, MODELS), (None, str(EXAMPLE), [])]:
        button, prompt, box = actions.attack_stopped(*nothing)
        assert not button.interactive and prompt == "" and not box.visible


@pytest.mark.filterwarnings("ignore::UserWarning")  # gr.Warning outside a request
def test_an_unusable_new_image_clears_the_old_results_and_says_why(store: ModelStore, tmp_path: Path) -> None:
    actions = certify_tab.Actions(store)
    blank = png(tmp_path, "blank.png", np.full((50, 50), 255, np.uint8))
    for upload, words in [(blank, "the image is blank"), (UnreadableUpload("x.svg is a vector"), "x.svg")]:
        _, upload_out, preview, certificates, chart, summary, *_, box = actions.from_upload(upload, MODELS)
        assert upload_out is None, "the unusable file is removed: no broken image stays on show"
        assert preview is None and certificates.empty and chart is None and words in summary
        assert not box.visible, "no empty frames under the message"


def test_the_page_opens_on_a_worked_example_computed_once(store: ModelStore) -> None:
    start = certify_tab.landing(store)
    assert start["upload"] == str(certify_tab.LANDING_EXAMPLE)
    assert start["summary"].count("certified radius") == len(store.defaults())
    assert len(start["chart"].data) == len(store.defaults())


def test_models_come_from_the_hub_when_reachable_and_say_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    local = make_checkpoints(tmp_path / "checkpoints", ["bcop-small-mnist", "plain-small-mnist"])
    snapshot = make_checkpoints(tmp_path / "hub", ["bcop-small-mnist"]) / "bcop-small-mnist"
    server = FakeHub()  # holds someone/bcop-small-mnist only
    server.repos["someone/bcop-small-mnist"] = {p.name: p.read_bytes() for p in snapshot.iterdir()}
    try:
        point_client_at(monkeypatch, server.endpoint)
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
        monkeypatch.setattr(bcop.hub, "_reachable", {})
        monkeypatch.setattr(bcop.hub, "_fell_back", set())
        monkeypatch.setenv("BCOP_CHECKPOINTS", str(local))
        store = ModelStore("someone")
        offered = set(store.names)
        assert set(bcop.list_models(pretrained=True)) <= offered, "a reachable Hub offers every shipped model"
        from_hub = store.get("bcop-small-mnist")
        with pytest.warns(UserWarning, match="could not download someone/plain-small-mnist"):
            fallback = store.get("plain-small-mnist")
        assert from_hub.loaded.source == "hub"
        assert "Hub: [someone/bcop-small-mnist](" in store.source(from_hub)
        assert "could not download someone/plain-small-mnist" in store.source(fallback)
        row = models_tab.Actions(store).overview_row("bcop-small-mnist")
        assert "97.5%" in row and "/someone/bcop-small-mnist)" in row
    finally:
        server.close()


def test_an_unreachable_hub_means_the_embedded_checkpoints_without_waiting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BCOP_CHECKPOINTS", str(make_checkpoints(tmp_path, ["bcop-small-mnist"])))
    monkeypatch.setattr(demo.store, "hub_reachable", lambda: False)
    monkeypatch.setattr(bcop.hub, "_download", lambda *args: pytest.fail("the Hub was contacted"))
    store = ModelStore("someone")
    assert store.names == ["bcop-small-mnist"]
    served_model = store.get("bcop-small-mnist")
    assert served_model.loaded.source == "local" and "could not be reached" in store.source(served_model)


def test_opening_a_tab_draws_its_chart_only_when_there_is_something_to_draw(
    store: ModelStore, tmp_path: Path
) -> None:
    from demo import orthogonality_tab

    grads, spectra = gradients_tab.Actions(store), orthogonality_tab.Actions(store)
    blank = png(tmp_path, "blank.png", np.full((50, 50), 255, np.uint8))
    for args, note in [
        ((None, None, MODELS[:2]), gradients_tab.NO_IMAGE_NOTE),
        ((None, blank, MODELS[:2]), gradients_tab.UNUSABLE_NOTE),
        ((None, str(EXAMPLE), []), gradients_tab.NO_MODEL_NOTE),
    ]:
        chart, shown_note, box = grads.when_shown(*args)
        assert chart is None and shown_note == note and not box.visible, "a note instead of an empty frame"
    chart, _, shown_note, box = spectra.when_shown([])
    assert chart is None and "Choose at least one model" in shown_note and not box.visible
    figure, shown_note, box = grads.when_shown(None, str(EXAMPLE), MODELS[:2])
    assert {trace.name for trace in figure.data} >= set(MODELS[:2]) and shown_note == "" and box.visible
    chart, summary, shown_note, box = spectra.when_shown(MODELS[:1])
    assert len(chart.data) > 0 and set(summary["model"]) == {MODELS[0]} and box.visible


def test_the_bounds_markers_have_colours_no_model_has() -> None:
    from demo.figures import ATTACK_COLOR, CERTIFIED_COLOR, MODEL_COLORS

    assert {CERTIFIED_COLOR, ATTACK_COLOR}.isdisjoint(MODEL_COLORS.values())


# --- names, captions and long runs --------------------------------------------------------------


def test_every_api_input_and_output_has_a_name(client: Client) -> None:
    api = client.view_api(return_format="dict", print_info=False)
    for name, endpoint in api["named_endpoints"].items():
        labels = [p["label"] for p in endpoint["parameters"]] + [r["label"] for r in endpoint["returns"]]
        unnamed = [label for label in labels if not label or re.fullmatch(r"value_\d+", label)]
        assert unnamed == [], f"{name}: {labels}"
    assert api["unnamed_endpoints"] == {}


def test_the_gradient_chart_shows_the_fraction_kept_and_it_lies_in_the_band_as_its_caption_says(
    store: ModelStore,
) -> None:
    figure = gradients_tab.Actions(store).gradient_norms(None, str(EXAMPLE), MODELS)
    left = {t.name: list(t.y) for t in figure.data if t.xaxis == "x"}
    x = to_mnist_format(EXAMPLE).unsqueeze(0)
    for name in MODELS:
        model = store.get(name).model
        norms, layers = layer_gradient_norms(model, x), jacobian_spectra(model, x)
        assert norms[-1].mean == pytest.approx(math.sqrt(2), rel=1e-5), "the margin's own norm is √2"
        kept = [n.mean / norms[-1].mean for n in norms]
        assert left[name] == pytest.approx(kept, rel=1e-6), name
        for fraction, layer in zip(kept, layers, strict=True):
            low, high = float(layer.singular_values.min()), float(layer.singular_values.max())
            assert low - 1e-4 <= fraction <= high + 1e-4, f"{name} {layer.name}: {fraction} not in the band"
        if name.startswith("bcop"):  # norm-preserving from the logits back to the last layer adding channels
            last_adding = max(i for i, layer in enumerate(layers) if layer.adds_channels)
            for layer in layers[last_adding + 1 :]:
                assert torch.allclose(layer.singular_values, torch.ones(()), atol=1e-3), layer.name
    for claim in (
        "as a fraction of its norm at the logits (√2",
        "lies in its band",
        "keeps every value at 1",
    ):
        assert claim in gradients_tab.INTRO


def test_the_orthogonality_caption_matches_the_shipped_checkpoints(monkeypatch: pytest.MonkeyPatch) -> None:
    from demo import orthogonality_tab

    monkeypatch.delenv("BCOP_CHECKPOINTS", raising=False)
    shipped = ModelStore("")
    large = [n for n in shipped.names if n.endswith("-large-mnist")]
    assert {n.split("-")[0] for n in large} >= {"bcop", "rko", "ossn", "svcm", "plain"}, shipped.names
    for name in large:
        spectra = [s.singular_values for s in shipped.get(name).spectra()]
        family = name.split("-")[0]
        if family in ("bcop", "cayley", "soc", "aoc"):  # "all 1"
            assert all(torch.allclose(v, torch.ones(()), atol=1e-3) for v in spectra), name
        elif family == "plain":  # "largest values well above 1, while its medians can lie below 1"
            assert all(float(v.max()) > 1.5 for v in spectra), name
            assert any(float(v.median()) < 1 for v in spectra), name
        elif family == "sll":  # "not linear: they have no singular values to show"
            assert spectra == [], name
        else:  # RKO, OSSN, SVCM, AOL: "largest value is 1 (OSSN's up to 1% above), the rest below it"
            assert all(0.99 <= float(v.max()) <= 1.01 for v in spectra), name
            assert any(float(v.median()) < 0.99 for v in spectra), name
    for claim in (
        "**BCOP**'s are all 1",
        "**Cayley, SOC, AOC**",
        "the later **AOL**",
        "**SLL**'s layers are not linear",
        "largest values lie well above 1",
    ):
        assert claim in orthogonality_tab.INTRO


def test_the_wasserstein_status_gives_each_estimate_with_its_standard_error() -> None:
    from demo.wasserstein_tab import _status

    estimates = {"bcop-small-mnist": [Estimate(2.0093, 0.0121, 2.0093, 1.0, 500)]}
    status = _status(EstimateSnapshot(300, 300, [300], estimates, 41.2))
    assert "W1 ≥" not in status, "an estimate above the true W1 must not read as a bound"
    assert "W1 estimate ± standard error: bcop-small-mnist 2.009 ± 0.012" in status


def test_wasserstein_stop_ends_only_that_visitors_run_and_says_so() -> None:
    from demo.wasserstein_tab import Actions

    actions, me, other = Actions(), SimpleNamespace(session_hash="me"), SimpleNamespace(session_hash="other")
    run = actions.estimate_wasserstein("gaussians", ["bcop-small-mnist"], 100, 8, 60, me)
    assert next(run)[1].startswith("step 0/100")
    actions.stop(other)
    assert runs.STOPPED not in next(run)[1]
    actions.stop(me)
    _, status = next(run)
    assert status.endswith(runs.STOPPED) and "step 20/100" in status
    assert next(run, None) is None


def test_a_visitor_waiting_for_a_run_is_told_how_long_it_has_left_at_most() -> None:
    turns = runs.TakingTurns()
    assert turns.waiting_note("a") == "Starting…" and turns.seconds_left() is None
    with turns.running("a", budget_s=90) as stop:
        note = turns.waiting_note("b")
        left = int(re.search(r"at most (\d+) s left", note).group(1))
        assert "Another visitor's run is in progress" in note and 85 <= left <= 90
        assert turns.waiting_note("a") == "Starting…", "one's own run is not another visitor's"
        assert not stop.is_set()
    assert turns.seconds_left() is None
    turns.stop("b")  # pressed while b's run still waits for its turn
    with turns.running("b", budget_s=10) as stop:
        assert stop.is_set(), "a Stop pressed while waiting counts when the run starts"
    turns.stop("b")
    turns.waiting_note("b")  # asking again forgets the earlier Stop
    with turns.running("b", budget_s=10) as stop:
        assert not stop.is_set()


def test_the_library_and_the_api_word_an_unreadable_file_the_same_way(client: Client, tmp_path: Path) -> None:
    svg = tmp_path / "digit.svg"
    svg.write_text('<svg xmlns="http://www.w3.org/2000/svg" width="28" height="28"></svg>')
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(EXAMPLE.read_bytes()[:200])
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    for path in [svg, truncated, text, Path(huge_png_header(tmp_path))]:
        with pytest.raises(ValueError) as library:
            to_mnist_format(path)
        with pytest.raises(AppError) as api:
            certify(client, str(path))
        assert str(library.value).replace(str(path), path.name) == str(api.value), path.name
        assert str(api.value).startswith((path.name, f"could not read {path.name}")), "it names the file"

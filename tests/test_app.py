"""The Gradio app, driven over HTTP with gradio_client: every endpoint, good and bad input.

The app runs in this process on 127.0.0.1 (a free port) with a temporary checkpoints folder of
freshly initialised Small models, so nothing here depends on training progress.
"""

from __future__ import annotations

import json
import math
import socket
from collections.abc import Iterator
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
import torch
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

import app
import bcop.hub
from bcop.hub import save_model
from bcop.inspect import EVAL_RESULTS_FILE
from bcop.models import create_model

MODELS = ["bcop-small-mnist", "plain-small-mnist", "rko-small-mnist"]
EXAMPLE = app.EXAMPLES_DIR / "digit_7_0.png"
EVALUATED = {
    "model": "bcop-small-mnist",
    "n_test": 10000,
    "clean": 0.975,
    "certified": {"1.58": 0.456},
    "pgd": {"1.58": 0.789},
    "pgd_paper_attack": {"1.58": 0.812},
    "fgm": {"1.58": 0.8},
    "lipschitz": 1.0,
    "paper": {"clean": 0.9754, "certified": 0.4562, "pgd": 0.7501},
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_checkpoints(root: Path, names: list[str]) -> Path:
    """Fresh (untrained) models in Hub layout; the first gets a card and evaluation results."""
    for i, name in enumerate(names):
        torch.manual_seed(i)
        card = f"# {name}\n\nA freshly initialised test model.\n" if i == 0 else None
        save_model(create_model(name), root / name, card=card)
    (root / names[0] / EVAL_RESULTS_FILE).write_text(json.dumps(EVALUATED))
    return root


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Client]:
    root = make_checkpoints(tmp_path_factory.mktemp("checkpoints"), MODELS)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BCOP_CHECKPOINTS", str(root))
        mp.delenv("BCOP_HUB_REPO", raising=False)
        torch.set_num_threads(1)
        demo = app.launch(host="127.0.0.1", port=free_port(), warm=False)
        try:
            yield Client(demo.local_url, verbose=False)
        finally:
            demo.close()


def png(tmp: Path, name: str, array: np.ndarray, **save: object) -> str:
    path = tmp / name
    Image.fromarray(array).save(path, **save)
    return str(path)


def digit_strokes(size: int, dtype: type = np.uint8, high: int = 255) -> np.ndarray:
    """A dark "7" on a light background, (size, size)."""
    image = np.full((size, size), high, dtype=dtype)
    s = size // 10
    image[2 * s : 3 * s, 2 * s : 8 * s] = 0
    for row in range(3 * s, 9 * s):
        col = 8 * s - (row - 3 * s) // 2
        image[row, col - s // 2 : col + s // 2] = 0
    return image


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


def test_attack_finds_nothing_inside_the_certified_radius(client: Client) -> None:
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
    assert "certified" in summary


def test_gradient_norms_has_one_positive_point_per_weight_layer(client: Client) -> None:
    figure = plot(client.predict(None, handle_file(str(EXAMPLE)), MODELS[:2], api_name="/gradient_norms"))
    assert [t["name"] for t in figure["data"]] == MODELS[:2]
    for trace in figure["data"]:
        assert trace["x"] == ["conv1", "conv2", "dense1", "logits", "output"]
        assert all(v > 0 for v in trace["y"])
    assert figure["layout"]["yaxis"]["type"] == "log"


def test_bcop_singular_values_are_all_one_and_plain_ones_are_not(client: Client) -> None:
    _, summary = client.predict(["bcop-small-mnist", "plain-small-mnist"], api_name="/singular_values")
    rows = table(summary)
    bcop = [r for r in rows if r["model"] == "bcop-small-mnist"]
    plain = [r for r in rows if r["model"] == "plain-small-mnist"]
    assert [r["layer"] for r in bcop] == ["conv1", "conv2"]
    for row in bcop:
        assert row["min σ"] == pytest.approx(1.0, abs=1e-4) and row["max σ"] == pytest.approx(1.0, abs=1e-4)
    assert any(abs(r["max σ"] - r["min σ"]) > 0.1 for r in plain)


def test_models_table_shows_results_and_says_when_not_evaluated(client: Client) -> None:
    overview = client.predict(api_name="/models")
    lines = {line.split("|")[1].strip(): line for line in overview.splitlines() if line.startswith("| ")}
    assert "97.5%" in lines["bcop-small-mnist"] and "45.6%" in lines["bcop-small-mnist"]
    assert "78.9%" in lines["bcop-small-mnist"] and "81.2%" in lines["bcop-small-mnist"]
    assert "README.md](/gradio_api/file=" in lines["bcop-small-mnist"]
    assert "not evaluated yet" in lines["plain-small-mnist"]
    assert "freshly initialised" in client.predict("bcop-small-mnist", api_name="/model_card")


def test_live_training_streams_updates_until_done(client: Client) -> None:
    job = client.submit(["bcop-small-mnist", "plain-small-mnist"], 10, 16, "hinge", api_name="/train_live")
    updates = list(job)
    assert len(updates) >= 3, "a snapshot at the start, every few steps and at the end"
    figure, status = updates[-1]
    assert "step 10/10" in status and "done" in status
    names = {t["name"] for t in plot(figure)["data"] if t.get("showlegend") is not False}
    assert names == {"bcop-small-mnist", "plain-small-mnist"}


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
    blank = png(tmp, "blank.png", np.full((50, 50), 255, np.uint8))
    empty = np.zeros((336, 336, 4), dtype=np.uint8)
    blank_sketch = handle_file(png(tmp, "empty_sketch.png", empty))
    sketch = {"background": None, "layers": [], "composite": blank_sketch, "id": None}
    digit = handle_file(str(EXAMPLE))
    return [
        ("nothing", (None, None, MODELS), "/certify", "no image"),
        ("blank image", (None, handle_file(blank), MODELS), "/certify", "blank"),
        ("empty sketch", (sketch, None, MODELS), "/certify", "blank"),
        ("text file", (None, handle_file(str(text)), MODELS), "/certify", "as an image"),
        ("truncated png", (None, handle_file(str(truncated)), MODELS), "/certify", "image"),
        ("unknown model", (None, digit, ["resnet-50"]), "/certify", "not in the list of choices"),
        ("no model", (None, digit, []), "/certify", "choose at least one model"),
        ("epsilon too big", (None, digit, MODELS[:1], 7.0), "/attack", "maximum"),
        ("epsilon negative", (None, digit, MODELS[:1], -1.0), "/attack", "minimum"),
        ("nothing to attack", (None, None, MODELS[:1], 1.0), "/attack", "no image"),
        ("gradients of nothing", (None, None, MODELS[:1]), "/gradient_norms", "no image"),
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
    _, certificates, _, _ = certify(client, str(EXAMPLE))
    assert len(table(certificates)) == len(MODELS)


def test_models_come_from_the_hub_when_reachable_and_say_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    local = make_checkpoints(tmp_path / "checkpoints", ["bcop-small-mnist", "plain-small-mnist"])
    snapshot = make_checkpoints(tmp_path / "hub", ["bcop-small-mnist"]) / "bcop-small-mnist"
    monkeypatch.setenv("BCOP_CHECKPOINTS", str(local))
    monkeypatch.setattr(app, "hub_reachable", lambda namespace: True)

    def download(repo_id: str, revision: str | None) -> Path:
        if repo_id == "someone/bcop-small-mnist":
            return snapshot
        raise ConnectionError(f"{repo_id} not found")

    monkeypatch.setattr(bcop.hub, "_download", download)
    store = app.ModelStore("someone")
    assert set(app.SHIPPED_MODELS) <= set(store.names), "a reachable Hub offers every shipped model"
    from_hub = store.get("bcop-small-mnist")
    with pytest.warns(UserWarning, match="could not download someone/plain-small-mnist"):
        fallback = store.get("plain-small-mnist")
    assert from_hub.loaded.source == "hub"
    assert "Hub: [someone/bcop-small-mnist](" in store.source(from_hub)
    assert "could not download someone/plain-small-mnist" in store.source(fallback)
    overview = app.Demo(store)._overview_row("bcop-small-mnist")
    assert "97.5%" in overview and "/someone/bcop-small-mnist)" in overview


def test_an_unreachable_hub_means_the_embedded_checkpoints_without_waiting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BCOP_CHECKPOINTS", str(make_checkpoints(tmp_path, ["bcop-small-mnist"])))
    monkeypatch.setattr(app, "hub_reachable", lambda namespace: False)
    monkeypatch.setattr(bcop.hub, "_download", lambda *args: pytest.fail("the Hub was contacted"))
    store = app.ModelStore("someone")
    assert store.names == ["bcop-small-mnist"]
    served = store.get("bcop-small-mnist")
    assert served.loaded.source == "local" and "could not be reached" in store.source(served)


def test_opening_a_tab_draws_its_chart_only_when_there_is_something_to_draw(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BCOP_CHECKPOINTS", str(make_checkpoints(tmp_path, MODELS[:2])))
    monkeypatch.delenv("BCOP_HUB_REPO", raising=False)
    demo = app.Demo(app.ModelStore())
    for nothing in (demo.gradient_norms_when_shown(None, None, MODELS[:2]),
                    demo.gradient_norms_when_shown(None, str(EXAMPLE), []),
                    *demo.singular_values_when_shown([])):  # fmt: skip
        assert nothing == gr.skip()
    figure = demo.gradient_norms_when_shown(None, str(EXAMPLE), MODELS[:2])
    assert {trace.name for trace in figure.data} >= set(MODELS[:2])
    spectra, summary = demo.singular_values_when_shown(MODELS[:1])
    assert len(spectra.data) > 0 and set(summary["model"]) == {MODELS[0]}

"""The demo with a successor's checkpoint (a later family than the paper's): it is offered in
its own group after the paper's models, and every tab that takes models works with it, through
the tabs' handlers (no browser)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest

from bcop.hub import EVAL_RESULTS_FILE
from demo import certify_tab, gradients_tab, models_tab
from demo.store import DEFAULT_MODELS, LATER_GROUP, PAPER_GROUP, ModelStore, model_group
from tests.app_helpers import EVALUATED, EXAMPLES, make_checkpoints

ROOT = Path(__file__).resolve().parent.parent
SUCCESSOR = "aol-small-mnist"
MODELS = ["sll-small-mnist", "bcop-small-mnist", SUCCESSOR, "plain-small-mnist"]
EXAMPLE = EXAMPLES / "digit_7_0.png"


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The four models, untrained; results beside the first (sll) and the successor (aol)."""
    root = make_checkpoints(tmp_path_factory.mktemp("checkpoints"), MODELS)
    evaluated = {**EVALUATED, "model": SUCCESSOR, "certified": {"0": 0.9, "1.58": 0.3}}
    (root / SUCCESSOR / EVAL_RESULTS_FILE).write_text(json.dumps(evaluated))
    return root


@pytest.fixture
def store(checkpoints: Path, monkeypatch: pytest.MonkeyPatch) -> ModelStore:
    monkeypatch.setenv("BCOP_CHECKPOINTS", str(checkpoints))
    return ModelStore("")


def test_successors_come_after_the_paper_models_labelled_as_a_later_family(store: ModelStore) -> None:
    assert store.names == ["bcop-small-mnist", "plain-small-mnist", SUCCESSOR, "sll-small-mnist"]
    assert [model_group(n) for n in store.names] == [PAPER_GROUP] * 2 + [LATER_GROUP] * 2
    labels = dict((name, label) for label, name in store.choices())
    assert labels["bcop-small-mnist"] == "bcop-small-mnist"
    assert labels[SUCCESSOR] == f"{SUCCESSOR} (later family)"


def test_the_default_selection_is_unchanged_when_a_successor_joins_the_shipped_models(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in DEFAULT_MODELS:  # the shipped checkpoints, linked (the store only lists folders)
        (tmp_path / name).symlink_to(ROOT / "checkpoints" / name)
    make_checkpoints(tmp_path, [SUCCESSOR])
    monkeypatch.setenv("BCOP_CHECKPOINTS", str(tmp_path))
    store = ModelStore("")
    assert store.defaults() == list(DEFAULT_MODELS) and store.names[-1] == SUCCESSOR


def test_certifying_with_a_successor_through_the_certify_tabs_handler(store: ModelStore) -> None:
    chosen = [SUCCESSOR, "bcop-small-mnist"]
    _, _, preview, certificates, _, summary, *_ = certify_tab.Actions(store).from_upload(str(EXAMPLE), chosen)
    rows = certificates.to_dict("records")
    assert [r["model"] for r in rows] == ["bcop-small-mnist", SUCCESSOR]  # display order
    for row in rows:  # radius = margin / (sqrt(2) L), to the 4 decimals shown
        radius = row["margin"] / (math.sqrt(2) * row["Lipschitz bound"])
        assert row["certified radius"] == pytest.approx(radius, abs=2e-4)
        assert 0 < row["Lipschitz bound"] <= 1 + 1e-4  # AOL is 1-Lipschitz by its theorem
    assert summary.count("certified radius") == 2


def test_models_tab_and_gradient_tab_take_successors(store: ModelStore) -> None:
    actions = models_tab.Actions(store)
    assert SUCCESSOR in actions.overview() and "sll-small-mnist" in actions.overview()
    assert {line.name for line in actions.accuracy_chart().data} == {"sll-small-mnist", SUCCESSOR}
    figure = gradients_tab.Actions(store).gradient_norms(None, str(EXAMPLE), [SUCCESSOR, "sll-small-mnist"])
    names = {t.name for t in figure.data if t.showlegend is not False}
    assert names == {SUCCESSOR, "sll-small-mnist"}
    assert all(v > 0 for t in figure.data for v in t.y)


def test_the_gradient_chart_names_a_model_whose_band_drops_at_a_layer_that_adds_no_channels(
    store: ModelStore,
) -> None:
    actions = gradients_tab.Actions(store)
    captions = [
        a.text
        for a in actions.gradient_norms(
            None, str(EXAMPLE), [SUCCESSOR, "bcop-small-mnist"]
        ).layout.annotations
    ]
    (caption,) = [c for c in captions if "Gradient attenuation" in c]
    assert f"{SUCCESSOR}: conv2 (" in caption and "bcop-small-mnist:" not in caption
    only_bcop = actions.gradient_norms(None, str(EXAMPLE), ["bcop-small-mnist"]).layout.annotations
    assert not any("Gradient attenuation" in a.text for a in only_bcop)


def test_the_models_table_says_when_pgd_attacked_a_sample_of_the_test_set() -> None:
    results = {
        "clean": 98.58, "certified": {"1.58": 56.61}, "pgd": {"1.58": 81.75},
        "pgd_paper_attack": {"1.58": 86.4}, "lipschitz": 1.0, "pgd_n": 2000, "n_test": 10000,
    }  # fmt: skip
    served = SimpleNamespace(results=lambda: results, lipschitz=1.0)
    sample = models_tab._metrics(served)
    assert sample[2] == "81.8% (*n* = 2,000)" and sample[3] == "86.4% (*n* = 2,000)"
    whole = models_tab._metrics(SimpleNamespace(results=lambda: {**results, "pgd_n": 10000}, lipschitz=1.0))
    assert whole[2] == "81.8%" and whole[1] == "56.6%"

"""The shipped checkpoints still give the results their cards report.

Eval mode builds every orthonormal weight through a float64 Gram matrix, whatever a training
step does (Note [Orthonormal in float32 while training]). These tests compare each shipped model,
in float32 as the app runs it, against the same checkpoint rebuilt entirely in float64, and the
network bound against ``eval_results.json``; the slow one recomputes bcop-large-mnist's clean
and certified accuracy on the whole test set.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from bcop.cards import summary_table
from bcop.certify import certified_accuracy, certified_radius, lipschitz_bound
from bcop.data import load_mnist
from bcop.hub import load_folder
from bcop.results import collect_results, eps_key, percent

pytestmark = pytest.mark.usefixtures("one_thread")

CHECKPOINTS = Path(__file__).resolve().parents[1] / "checkpoints"
CLASSIFIERS = sorted(p.parent.name for p in CHECKPOINTS.glob("*/eval_results.json"))
LOGIT_TOL = 1e-5  # float32 network against its float64 rebuild, logits of size ~10
BOUND_RTOL = 1e-6  # the stored bound was computed on another machine: it agrees to ~3e-7


def _results(name: str) -> dict:
    return json.loads((CHECKPOINTS / name / "eval_results.json").read_text())


def test_every_shipped_classifier_is_checked() -> None:
    assert {"bcop-large-mnist", "rko-large-mnist", "plain-large-mnist"} <= set(CLASSIFIERS)


@pytest.fixture(scope="module")
def test_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """The first 128 MNIST test images and labels."""
    images, labels = load_mnist("test").tensors
    return images[:128], labels[:128]


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_shipped_model_matches_its_float64_rebuild_and_its_stored_bound(
    name: str, test_batch: tuple[torch.Tensor, torch.Tensor]
) -> None:
    """On 128 test images: float32 eval logits within 1e-5 of the float64 rebuild's, the same
    predictions and the same certified examples at every radius of the card; the network's
    bound equals the card's to a relative 1e-6 (a float32 Gram matrix would be off by 1e-4)."""
    x, y = test_batch
    model, _ = load_folder(CHECKPOINTS / name)
    results = _results(name)
    bound = lipschitz_bound(model)
    assert math.isclose(bound, results["lipschitz"], rel_tol=BOUND_RTOL)
    with torch.no_grad():
        logits = model(x)
        reference = model.double()(x.double())
    torch.testing.assert_close(logits.double(), reference, rtol=0, atol=LOGIT_TOL)
    assert torch.equal(logits.argmax(1), reference.argmax(1))
    radius = certified_radius(logits.double(), bound, y)
    radius64 = certified_radius(reference, bound, y)
    for eps in map(float, results["certified"]):
        assert torch.equal(radius >= eps, radius64 >= eps), f"certified set differs at eps={eps}"


@pytest.mark.slow
def test_bcop_large_mnist_reproduces_its_clean_and_certified_accuracy() -> None:
    """All 10,000 test images: clean accuracy and certified accuracy at every radius of the
    card, recomputed with the stored bound, equal the card's percentages exactly."""
    model, _ = load_folder(CHECKPOINTS / "bcop-large-mnist")
    results = _results("bcop-large-mnist")
    test = load_mnist("test")
    batches = zip(test.tensors[0].split(500), test.tensors[1].split(500), strict=True)
    epsilons = [float(key) for key in results["certified"]]
    got = certified_accuracy(model, batches, epsilons, lipschitz=results["lipschitz"])
    assert got["n"] == results["n_test"]
    assert percent(got["clean"]) == results["clean"]
    for eps in epsilons:
        assert percent(got["certified"][eps]) == results["certified"][eps_key(eps)], eps


def test_the_readmes_table_of_the_papers_models_shows_their_results() -> None:
    """Each row of the README's table of the paper's models is the summary table's row of the
    same checkpoint (``python -m bcop.evaluate --summary checkpoints``), cell for cell up to the
    bound: the README states what the shipped results say."""
    summary = {}
    for line in summary_table(collect_results(CHECKPOINTS)).splitlines()[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        summary[cells[0]] = cells[:5]
    lines = (CHECKPOINTS.parent / "README.md").read_text().splitlines()
    header = (
        "| model | ours: clean / certified / PGD | ours: PGD, paper's attack "
        "| paper: clean / certified / PGD | Lipschitz bound |"
    )
    body = lines[lines.index(header) + 2 :]
    body = body[: next(i for i, line in enumerate(body) if not line.startswith("|"))]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in body]
    assert [row[0] for row in rows] == [
        "bcop-large-mnist", "rko-large-mnist", "ossn-large-mnist", "svcm-large-mnist",
        "bcop-small-mnist", "plain-large-mnist",
    ]  # fmt: skip
    for row in rows:
        assert row == summary[row[0]], row[0]

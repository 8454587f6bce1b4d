"""Model cards and results tables, from evaluation results (schema 2, see :mod:`bcop.results`).

A card is a ``huggingface_hub.ModelCard``: metadata the Hub indexes (``pipeline_tag``,
``library_name``, ``license``, ``datasets``, and the metrics as ``model-index`` eval results
with the dataset's Hub id and split) built with ``ModelCardData`` / ``EvalResult``, then a
markdown body: usage, evaluation, training, citation.

``python -m bcop.cards [FOLDER]`` rewrites the card of every classifier under ``FOLDER``
(default: the embedded ``checkpoints/``) and upgrades its ``config.json`` and
``eval_results.json`` to the current schemas; the weights are never touched.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from bcop.hardware import is_cpu_hardware
from bcop.hub import CARD_FILE, CONFIG_FILE, HUB_OWNER, LIBRARY_NAME, SPACE_NAME, checkpoints_dir
from bcop.models import SUCCESSOR_PAPERS, ModelConfig, parse_model_name
from bcop.results import eps_key, read_results, write_results

__all__ = [
    "HUB_DATASETS",
    "eval_results",
    "model_card",
    "results_table",
    "summary_table",
    "training_time_cell",
    "refresh_folder",
    "main",
]

# Our dataset names -> (Hub dataset id, display name).
HUB_DATASETS = {"mnist": ("ylecun/mnist", "MNIST"), "cifar10": ("uoft-cs/cifar10", "CIFAR-10")}
ATTACK_LOSS_NAMES = {"margin": "logit margin", "ce": "cross-entropy"}
PAPER_URL = "https://arxiv.org/abs/1911.00937"
PAPER_CODE_URL = "https://github.com/ColinQiyangLi/LConvNet"
CITATION = "\n".join(
    [
        "@inproceedings{li2019preventing,",
        "  title     = {Preventing Gradient Attenuation in Lipschitz Constrained Convolutional Networks},",
        "  author    = {Li, Qiyang and Haque, Saminul and Anil, Cem and Lucas, James and Grosse, Roger and "
        'Jacobsen, J{\\"o}rn-Henrik},',
        "  booktitle = {Advances in Neural Information Processing Systems},",
        "  year      = {2019}",
        "}",
    ]
)


def _metrics(results: dict[str, Any]) -> list[tuple[str, str, float, dict[str, Any] | None]]:
    """(type, name, value in %, args) of each headline metric; the robust ones at ``eps``."""
    key = eps_key(results["eps"])
    at_eps = {"norm": "L2", "eps": results["eps"]}
    metrics = [
        ("accuracy", "clean accuracy", results["clean"], None),
        ("certified_accuracy", f"certified accuracy (L2, eps={key})", results["certified"][key], at_eps),
        ("pgd_accuracy", f"PGD-L2 robust accuracy (eps={key})", results["pgd"][key], at_eps),
    ]
    if results["pgd_paper_attack"] is not None:
        name = f"PGD-L2 robust accuracy, the paper's attack (eps={key})"
        metrics.append(("pgd_accuracy_paper_attack", name, results["pgd_paper_attack"][key], at_eps))
    metrics.append(("fgm_accuracy", f"FGM-L2 robust accuracy (eps={key})", results["fgm"][key], at_eps))
    return metrics


def eval_results(results: dict[str, Any]) -> list[EvalResult]:
    """The card's ``model-index`` entries: one per headline metric, in percent, on the test split."""
    dataset_id, dataset_name = HUB_DATASETS[results["dataset"]]
    return [
        EvalResult(
            task_type="image-classification",
            task_name="Image Classification",
            dataset_type=dataset_id,
            dataset_name=dataset_name,
            dataset_split="test",
            metric_type=mtype,
            metric_name=mname,
            metric_value=value,
            metric_args=args,
        )
        for mtype, mname, value, args in _metrics(results)
    ]


def _card_data(results: dict[str, Any]) -> ModelCardData:
    name = results["model"]
    return ModelCardData(
        model_name=name,
        pipeline_tag="image-classification",
        library_name=LIBRARY_NAME,
        license="mit",
        datasets=[HUB_DATASETS[results["dataset"]][0]],
        tags=["lipschitz", "certified-robustness", parse_model_name(name).conv],
        eval_results=eval_results(results),
    )


def _usage(name: str, owner: str) -> list[str]:
    shape = ", ".join(map(str, parse_model_name(name).input_shape))
    return [
        "## Usage",
        "",
        "```bash",
        f'pip install "bcop @ git+https://huggingface.co/spaces/{owner}/{SPACE_NAME}"',
        "```",
        "",
        "```python",
        "import torch",
        "from bcop.certify import certify",
        "from bcop.hub import load_model",
        "",
        f'model = load_model("{owner}/{name}").model  # or bcop.create_model("{name}", pretrained=True)',
        f"x = torch.rand(1, {shape})  # images in [0, 1]",
        "cert = certify(model, x)",
        "print(cert.prediction, cert.radius)  # no L2 change smaller than radius changes the prediction",
        "```",
        "",
        f"Code: [the bcop library and demo](https://huggingface.co/spaces/{owner}/{SPACE_NAME}); "
        f"the paper's implementation: [LConvNet]({PAPER_CODE_URL}).",
        "",
    ]


def _pgd_images(results: dict[str, Any]) -> str:
    """Which test images PGD attacked, in words."""
    n, n_test = results["pgd_n"], results["n_test"]
    if n == n_test:
        return f"all {n_test} test images"
    if results["pgd_sample"] == "evenly spaced":
        return f"{n} test images evenly spaced through the {n_test}"
    return f"the first {n} test images"


def _protocol(results: dict[str, Any]) -> str:
    """The paragraph that defines each column of the evaluation table."""
    return (
        "Accuracies in %. Certified: correct and certified radius margin/(sqrt(2) L) >= eps. "
        f"PGD: {results['pgd_steps']} steps of {results['pgd_step_size']}, random start, box [0, 1], "
        f"maximising the {ATTACK_LOSS_NAMES[results['attack_loss']]} "
        "(an example counts as broken if any iterate is misclassified), "
        f"on {_pgd_images(results)} (certified ones counted as robust without attack). "
        "PGD, paper's attack: the same steps from the paper's evaluation code's start (every pixel "
        "moved by a uniform amount in [-eps, eps], which the first step projects onto the ball's "
        "surface in a random direction), maximising the logit margin and counting only the last "
        "iterate; weaker, and the one comparable with the paper's PGD column. "
        "FGM: one step, all test images."
    )


def _evaluation(results: dict[str, Any]) -> list[str]:
    name, curve = results["model"], results["certified"]
    pgd_limit = "" if results["pgd_n"] == results["n_test"] else f" --pgd-limit {results['pgd_n']}"
    where = results["eval_hardware"]
    lines = [
        f"## Evaluation (test set, n = {results['n_test']}, L2 eps = {eps_key(results['eps'])})",
        "",
        _protocol(results),
        "",
        results_table([results]),
        "Certified accuracy over the radius:",
        "",
        "| eps | " + " | ".join(curve) + " |",
        "|---" * (len(curve) + 1) + "|",
        "| certified % | " + " | ".join(f"{v:.2f}" for v in curve.values()) + " |",
        "",
        f"Lipschitz bound (product of the layers' exact bounds): {results['lipschitz']:.7g}.",
        "",
    ]
    if where is not None:
        lines += [f"Evaluated on {where} in {results['eval_seconds'] / 60:.1f} min.", ""]
    lines += [f"Reproduce: `python -m bcop.evaluate {name}{pgd_limit}`.", ""]
    if results["paper"] is None:
        lines += ["The paper reports no row for this model.", ""]
    return lines


def _on_gpu(hardware: str) -> bool:
    return not is_cpu_hardware(hardware)


def _time_sentence(training: dict[str, Any]) -> str:
    """The card's sentence on where and how long the model trained."""
    parts = [
        f"{s['epochs']} epoch{'' if s['epochs'] == 1 else 's'} on {s['hardware']}: "
        f"{s['wall_hours']:.2f} h wall clock"
        + ("" if _on_gpu(s["hardware"]) else f", {s['cpu_hours']:.2f} CPU-hours")
        for s in training["hardware"]
    ]
    return "Time: " + "; ".join(parts) + " (machines possibly shared with other jobs)."


def training_time_cell(training: dict[str, Any]) -> str:
    """The summary table's training-time cell: CPU-hours, or wall-clock hours on a GPU."""
    segments = training["hardware"]
    if not any(_on_gpu(s["hardware"]) for s in segments):
        return f"{training['cpu_hours']:.2f} h, {training['epochs']}"
    parts = [
        f"{s['wall_hours']:.2f} h on {s['hardware']}" if _on_gpu(s["hardware"]) else f"{s['cpu_hours']:.2f} h"
        for s in segments
    ]
    return " + ".join(parts) + f", {training['epochs']}"


def _training(training: dict[str, Any]) -> list[str]:
    return [
        "## Training",
        "",
        f"`{training['command']}`",
        "",
        f"Loss: {training['loss']}; {training['epochs']} epochs; {training['selection']}. "
        + _time_sentence(training),
        "",
    ]


def model_card(results: dict[str, Any], owner: str = HUB_OWNER) -> ModelCard:
    """The Hub model card of an evaluated model.

    Args:
        results: its evaluation results, schema 2 (with ``training`` when known).
        owner: the Hub owner of its repo, for the usage and code links.
    """
    name = results["model"]
    config = parse_model_name(name)
    plain = config.conv == "plain"
    kind = "A conventional (unconstrained) network" if plain else "A Lipschitz-constrained network"
    if config.conv in SUCCESSOR_PAPERS:  # a later family in the paper's architecture
        layer, paper = SUCCESSOR_PAPERS[config.conv]
        kind += f" with {layer} convolutions ({paper}, a later family than BCOP's) in the architecture"
    intro = (
        f"{kind} from [bcop]({PAPER_URL}) (Li et al., NeurIPS 2019): `{name}` in the bcop model "
        f"registry, published as `{owner}/{name}`."
    )
    body = [f"# {name}", "", intro, "", *_usage(name, owner), *_evaluation(results)]
    if results.get("training") is not None:
        body += _training(results["training"])
    body += ["## Citation", "", "```bibtex", CITATION, "```", ""]
    return ModelCard(f"---\n{_card_data(results).to_yaml()}\n---\n\n" + "\n".join(body))


def _headline(r: dict[str, Any]) -> tuple[list[str], list[str]]:
    """Ours and the paper's clean / certified / PGD accuracy at the result's eps, as text."""
    key, paper = eps_key(r["eps"]), r["paper"] or {}
    ours = [_pct(r["clean"]), _pct(r["certified"][key]), _pct(r["pgd"][key])]
    return ours, [_pct(paper.get(k)) for k in ("clean", "certified", "pgd")]


def _pct(value: float | None) -> str:
    """A percentage as the tables show it (two decimals; "–" when not measured)."""
    return "–" if value is None else f"{value:.2f}"


def _pgd_paper_attack(r: dict[str, Any]) -> str:
    return _pct(None if r["pgd_paper_attack"] is None else r["pgd_paper_attack"][eps_key(r["eps"])])


def results_table(results: list[dict[str, Any]]) -> str:
    """Markdown table (schema-2 results): ours (clean / certified / PGD at eps) beside the paper's."""
    lines = [
        "| model | clean | certified | PGD | PGD, paper's attack | FGM | Lipschitz bound "
        "| paper clean | paper certified | paper PGD |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        (clean, certified, pgd), paper = _headline(r)
        fgm = _pct(r["fgm"][eps_key(r["eps"])])
        lines.append(
            f"| {r['model']} | {clean} | {certified} | {pgd} (n={r['pgd_n']}) | {_pgd_paper_attack(r)} "
            f"| {fgm} | {r['lipschitz']:.7g} | {' | '.join(paper)} |"
        )
    return "\n".join(lines) + "\n"


def summary_table(results: list[dict[str, Any]]) -> str:
    """Markdown table of several evaluated models (schema 2), as the README shows them: ours
    beside the paper's (clean / certified / PGD at each result's eps), training time and the
    command that trained it."""
    lines = [
        "| model | ours: clean / certified / PGD | ours: PGD, paper's attack "
        "| paper: clean / certified / PGD | Lipschitz bound | training (CPU-hours, epochs) | reproduce |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        ours, paper = _headline(r)
        paper_text = " / ".join(paper) if r["paper"] else "–"
        training = r.get("training")
        trained = training_time_cell(training) if training else "–"
        command = f"`{training['command']}`" if training else "–"
        lines.append(
            f"| {r['model']} | {' / '.join(ours)} | {_pgd_paper_attack(r)} "
            f"| {paper_text} | {r['lipschitz']:.7g} | {trained} | {command} |"
        )
    return "\n".join(lines) + "\n"


def refresh_folder(folder: str | Path, owner: str = HUB_OWNER) -> bool:
    """Upgrade a classifier folder's ``config.json`` and ``eval_results.json`` to the current
    schemas and rewrite its card; ``model.safetensors`` is not touched.

    Returns:
        Whether it was a classifier folder with results (a card was written).
    """
    folder = Path(folder)
    data = json.loads((folder / CONFIG_FILE).read_text())
    if data.get("kind", "classifier") != "classifier":
        return False
    config = ModelConfig.from_dict(data)
    (folder / CONFIG_FILE).write_text(
        json.dumps({**config.to_dict(), "library_name": LIBRARY_NAME}, indent=2) + "\n"
    )
    results = read_results(folder)
    if results is None:
        return False
    model_card(write_results(folder, results), owner).save(folder / CARD_FILE)
    return True


def main(argv: list[str] | None = None) -> list[Path]:
    """Command-line entry point; returns the folders whose card was rewritten."""
    parser = argparse.ArgumentParser(prog="python -m bcop.cards", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "folder", nargs="?", default=None, help="folder of model folders (default: the embedded checkpoints/)"
    )
    parser.add_argument(
        "--owner", default=HUB_OWNER, help=f"Hub owner named in the cards (default: {HUB_OWNER})"
    )
    args = parser.parse_args(argv)
    root = Path(args.folder) if args.folder else checkpoints_dir()
    folders = sorted(p.parent for p in root.glob(f"*/{CONFIG_FILE}"))
    written = [folder for folder in folders if refresh_folder(folder, args.owner)]
    for folder in written:
        print(f"{folder}: config.json, eval_results.json and {CARD_FILE} up to date")
    return written


if __name__ == "__main__":
    main()

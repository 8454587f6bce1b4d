"""The comparison of Lipschitz critics in ``docs/wasserstein.md``: every critic on every pair of
distributions, a learning rate chosen per critic and pair on held-out samples, then several
seeds reported on samples no choice has seen (Note [Three sets of samples] in
:mod:`bcop.wasserstein`).

``python -m bcop.experiments.wasserstein_table [options]`` runs it, writing a results file
(JSON, continued when a run is stopped and started again) and the Markdown page rendered from it;
the page's discussion section is kept when the page is rewritten.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from bcop.hardware import describe_hardware
from bcop.models import SUCCESSORS, LipschitzNet, parse_model_name
from bcop.wasserstein import PAIRS, CriticTrainer, Pair, estimate, held_out, make_critic, make_pair

__all__ = ["TABLE_CRITICS", "TableConfig", "run_entry", "run_table", "render_markdown", "main"]

TABLE_CRITICS = (
    "bcop-small-mnist",
    "rko-small-mnist",
    "ossn-small-mnist",
    "svcm-small-mnist",
    "bcop-small-mnist-relu",
    # BCOP's successors (bcop.models.SUCCESSORS), each with its family's default activation
    "cayley-small-mnist",
    "soc-small-mnist",
    "aol-small-mnist",
    "sll-small-mnist",
    "aoc-small-mnist",
)


@dataclasses.dataclass(frozen=True)
class TableConfig:
    """Settings of the comparison (``python -m bcop.experiments.wasserstein_table``).

    The learning rate of each critic on each pair is chosen with seed 0 among ``lrs`` by the
    estimate on ``n_select`` ``"select"`` samples; every seed's critic trained with it is then
    reported on ``n_report`` ``"report"`` samples (Note [Three sets of samples]).
    """

    critics: tuple[str, ...] = TABLE_CRITICS
    pairs: tuple[str, ...] = PAIRS
    steps: int = 300
    lrs: tuple[float, ...] = (3e-4, 1e-3)
    seeds: tuple[int, ...] = (0, 1, 2)
    batch_size: int = 64
    n_select: int = 2000
    n_report: int = 10000


def _fit(name: str, pair: Pair, cfg: TableConfig, lr: float, seed: int) -> tuple[LipschitzNet, float]:
    start = time.perf_counter()
    trainer = CriticTrainer(make_critic(name, seed), pair, lr, cfg.batch_size, seed)
    for _ in range(cfg.steps):
        trainer.step()
    return trainer.critic, time.perf_counter() - start


def run_entry(name: str, pair: Pair, cfg: TableConfig) -> dict[str, Any]:
    """Choose a learning rate for one critic on one pair, then estimate with every seed."""
    select = held_out(pair, "select", cfg.n_select, cfg.seeds[0])
    scores, fitted, seconds = {}, {}, 0.0
    for lr in cfg.lrs:
        critic, took = _fit(name, pair, cfg, lr, cfg.seeds[0])
        scores[lr], fitted[lr], seconds = estimate(critic, *select).value, critic, seconds + took
    best = max(scores, key=scores.__getitem__)
    runs = []
    for seed in cfg.seeds:
        critic = fitted[best] if seed == cfg.seeds[0] else None
        if critic is None:
            critic, took = _fit(name, pair, cfg, best, seed)
            seconds += took
        result = estimate(critic, *held_out(pair, "report", cfg.n_report, seed))
        runs.append({"seed": seed, **dataclasses.asdict(result)})
    values = [r["value"] for r in runs]
    return {
        "critic": name,
        "pair": pair.name,
        "pair_label": pair.label,
        "true_w1": pair.true_w1,
        "lr": best,
        "lr_scores": {str(k): v for k, v in scores.items()},
        "runs": runs,
        "mean": sum(values) / len(values),
        "spread": float(torch.tensor(values).std()) if len(values) > 1 else 0.0,
        "train_seconds": seconds,
    }


def _pair_heading(entry: dict[str, Any]) -> str:
    known = entry["true_w1"]
    return entry["pair"] + (f" (W1 = {known:g})" if known is not None else "")


def _cell(entry: dict[str, Any] | None) -> str:
    if entry is None:
        return "not run"
    text = f"{entry['mean']:.3f} ± {entry['spread']:.3f}"
    return text + (f" ({entry['mean'] / entry['true_w1']:.2f} W1)" if entry["true_w1"] else "")


def _findings(entries: dict[tuple[str, str], dict[str, Any]], cfg: TableConfig) -> list[str]:
    """One line per pair: the critics in order of estimate, and the paper's two claims checked."""
    lines = []
    for pair in cfg.pairs:
        row = {c: entries[(c, pair)] for c in cfg.critics if (c, pair) in entries}
        if not row:
            continue
        order = sorted(row, key=lambda c: -row[c]["mean"])
        text = f"- {pair}: " + " > ".join(f"{c} ({row[c]['mean']:.3f})" for c in order)
        # The paper's claim is about its own MaxMin critics; later families are ranked beside them.
        later = [c for c in order if parse_model_name(c).conv in SUCCESSORS]
        maxmin = [c for c in order if not c.endswith("-relu") and c not in later]
        if "bcop-small-mnist" in maxmin:
            which = "the paper's MaxMin critics" if later else "the MaxMin critics"
            text += f"; BCOP highest of {which}: {'yes' if maxmin[0] == 'bcop-small-mnist' else 'no'}"
        if {"bcop-small-mnist", "bcop-small-mnist-relu"} <= row.keys():
            a, b = row["bcop-small-mnist"], row["bcop-small-mnist-relu"]
            diff = a["mean"] - b["mean"]
            text += f"; BCOP MaxMin - ReLU = {diff:+.3f} (spreads {a['spread']:.3f}, {b['spread']:.3f})"
        known = next(iter(row.values()))["true_w1"]
        if known is not None:
            runs = [r for e in row.values() for r in e["runs"]]
            over = [r for r in runs if r["value"] > known + 3 * r["stderr"]]
            text += f"; estimates above W1 + 3 standard errors: {len(over)} of {len(runs)}"
        lines.append(text)
    return lines


def render_markdown(results: dict[str, Any], discussion: str = "") -> str:
    """The results document: method, command, settings, table, findings and ``discussion``."""
    cfg = TableConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in results["config"].items()})
    entries = {(e["critic"], e["pair"]): e for e in results["entries"]}
    pairs = [p for p in cfg.pairs if any(k[1] == p for k in entries)]
    heads = [_pair_heading(next(e for k, e in entries.items() if k[1] == p)) for p in pairs]
    table = ["| critic | " + " | ".join(heads) + " |", "|---" * (len(pairs) + 1) + "|"]
    for critic in cfg.critics:
        table.append(f"| {critic} | " + " | ".join(_cell(entries.get((critic, p))) for p in pairs) + " |")
    chosen = ["| critic | " + " | ".join(heads) + " |", "|---" * (len(pairs) + 1) + "|"]
    for critic in cfg.critics:
        cells = []
        for p in pairs:
            e = entries.get((critic, p))
            bounds = [r["lipschitz"] for r in e["runs"]] if e else []
            cells.append(f"{e['lr']:g} / {sum(bounds) / len(bounds):.3f}" if e else "not run")
        chosen.append(f"| {critic} | " + " | ".join(cells) + " |")
    described = [next(e for k, e in entries.items() if k[1] == p) for p in pairs]
    labels = "\n".join(f"- {e['pair']}: {e['pair_label']}" for e in described)
    hours = sum(e["train_seconds"] for e in results["entries"]) / 3600
    return DOC_TEMPLATE.format(
        command=results["command"],
        steps=cfg.steps,
        batch=cfg.batch_size,
        lrs=", ".join(f"{lr:g}" for lr in cfg.lrs),
        seeds=len(cfg.seeds),
        n_select=cfg.n_select,
        n_report=cfg.n_report,
        hardware=results["hardware"],
        hours=hours,
        done=len(entries),
        planned=len(cfg.critics) * len(cfg.pairs),
        pairs=labels,
        table="\n".join(table),
        chosen="\n".join(chosen),
        findings="\n".join(_findings(entries, cfg)),
        discussion=discussion.strip() or "(none yet)",
    )


DISCUSSION_HEADING = "## Discussion"
DOC_TEMPLATE = """# Wasserstein distance estimation with Lipschitz critics

The paper's second application (its section on Wasserstein distance estimation, Tables 4a/4b):
by Kantorovich-Rubinstein duality W1(P, Q) = sup over 1-Lipschitz f of E_P f - E_Q f, so every
1-Lipschitz critic gives a lower bound, and a more expressive class a tighter one. The paper
(STL-10 and CIFAR-10, DCGAN-style critics) found **BCOP > RKO, OSSN** and **MaxMin > ReLU**.
Here: MNIST, the registry's Small networks with a one-unit head, SVCM added, and every
estimate divided by the critic's exact Lipschitz bound L (so it is a true lower bound up to
sampling error; the paper's code did not divide).

*This file is written by the command below from its results file; the discussion at the end
is kept when it is rewritten.*

```
{command}
```

Each critic: {steps} RMSprop steps of batch {batch} + {batch}, learning rate decayed by
0.1^(1/60) per 60k images of P; the learning rate chosen among {lrs} with seed 0 by the
estimate on {n_select} held-out *select* samples; then {seeds} seeds (seed 0's chosen critic and
fresh ones at the chosen rate) each estimated on {n_report} *report* samples, never used for
any choice (MNIST: train / val / test splits; generated pairs: fresh samples per role). Cells:
mean ± standard deviation over seeds of (E_P f - E_Q f) / L; for known pairs, the share of the
true W1 reached. Training time: {hours:.2f} CPU-hours on {hardware} ({done} of {planned} critic and
pair combinations finished).

{pairs}

{table}

Chosen learning rate / mean Lipschitz bound L of the reported critics (SVCM's projection
leaves L above 1, which the division accounts for):

{chosen}

## Findings (computed from the results)

{findings}

{discussion_heading}

{discussion}
""".replace("{discussion_heading}", DISCUSSION_HEADING)


def run_table(
    cfg: TableConfig,
    results_path: Path,
    doc_path: Path | None,
    command: str,
    pair_options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run every critic on every pair, skipping those already in ``results_path`` (so a stopped
    run continues), rewriting the results file and the document after each one."""
    settings = dataclasses.asdict(cfg)
    hardware = describe_hardware(torch.device("cpu"))
    results = {"config": settings, "command": command, "hardware": hardware, "entries": []}
    if results_path.is_file():
        previous = json.loads(results_path.read_text())
        same = all(
            previous["config"][k] == list(v) if isinstance(v, tuple) else previous["config"][k] == v
            for k, v in settings.items()
            if k not in ("critics", "pairs")
        )
        if not same:
            raise ValueError(f"{results_path} holds a run with other settings: pass another --results")
        results["entries"] = previous["entries"]
    done = {(e["critic"], e["pair"]) for e in results["entries"]}
    for pair_name in cfg.pairs:
        pair = make_pair(pair_name, **(pair_options or {}))
        for critic in cfg.critics:
            if (critic, pair_name) in done:
                continue
            entry = run_entry(critic, pair, cfg)
            results["entries"].append(entry)
            print(
                json.dumps(
                    {k: entry[k] for k in ("critic", "pair", "lr", "mean", "spread", "train_seconds")}
                ),
                flush=True,
            )
            results_path.parent.mkdir(parents=True, exist_ok=True)
            results_path.write_text(json.dumps(results, indent=1) + "\n")
            if doc_path is not None:
                _write_doc(results, doc_path)
    return results


def _write_doc(results: dict[str, Any], doc_path: Path) -> None:
    discussion = ""
    if doc_path.is_file():
        text = doc_path.read_text()
        if DISCUSSION_HEADING in text:
            discussion = text.split(DISCUSSION_HEADING, 1)[1]
    doc_path.parent.mkdir(parents=True, exist_ok=True)
    doc_path.write_text(render_markdown(results, discussion))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bcop.experiments.wasserstein_table",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,  # every help line ends with its default
    )
    defaults = TableConfig()
    add = parser.add_argument
    add("--critics", nargs="+", default=list(defaults.critics), help="registry names of Small critics")
    add("--pairs", nargs="+", default=list(defaults.pairs), choices=PAIRS, help="pairs to compare")
    add("--steps", type=int, default=defaults.steps, help="RMSprop steps per critic")
    add("--lrs", nargs="+", type=float, default=list(defaults.lrs), help="learning rates to choose from")
    add("--seeds", nargs="+", type=int, default=list(defaults.seeds), help="seeds reported per critic")
    add("--batch-size", type=int, default=defaults.batch_size, help="samples of P and of Q per step")
    add("--n-select", type=int, default=defaults.n_select, help="samples choosing the learning rate")
    add("--n-report", type=int, default=defaults.n_report, help="samples the estimate is reported on")
    add("--classes", nargs=2, type=int, default=[3, 5], help="digits of class-vs-class")
    add("--delta-norm", type=float, default=2.0, help="‖δ‖₂ of the translated pair")
    add("--distance", type=float, default=3.0, help="‖μa - μb‖₂ of the Gaussians")
    add("--sigma", type=float, default=0.5, help="standard deviation of the Gaussians")
    add("--generator", default=None, help="generator: folder, Hub repo id or name (None: wgan-gp-mnist)")
    add("--results", default="docs/wasserstein_results.json", help="results file written")
    add("--doc", default="docs/wasserstein.md", help='markdown page written ("": none)')
    return parser


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    argv = sys.argv[1:] if argv is None else argv
    args = _parser().parse_args(argv)
    cfg = TableConfig(
        critics=tuple(args.critics),
        pairs=tuple(args.pairs),
        steps=args.steps,
        lrs=tuple(args.lrs),
        seeds=tuple(args.seeds),
        batch_size=args.batch_size,
        n_select=args.n_select,
        n_report=args.n_report,
    )
    for name in cfg.critics:
        make_critic(name)  # fail on a wrong name before any training
    options = {
        "classes": tuple(args.classes),
        "delta_norm": args.delta_norm,
        "distance": args.distance,
        "sigma": args.sigma,
        "generator_folder": args.generator,
    }
    command = " ".join(["python -m bcop.experiments.wasserstein_table", *argv])
    run_table(cfg, Path(args.results), Path(args.doc) if args.doc else None, command, options)
    return 0


if __name__ == "__main__":
    sys.exit(main())

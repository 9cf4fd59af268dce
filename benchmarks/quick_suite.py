"""The ``quick`` suite: a few minutes' slice of the ``real`` suite, the README's first command.

Two of the ``real`` suite's ordinary loops (a CNN and a character Transformer) and the classic
sigmoid MLP, at a constant learning rate, with the ``real`` suite's protocol: Adam and SGD with
momentum tuned per loop over the same grids, Adam at 1e-3 as a loop has it, and the pretrained
generalists (every weights file but the study objects) untuned at their default lr, beside the
published Celo2 network (``celo2-published``) as the field's reference. Every verdict is against
the best tuned baseline, and the report ends with one line per learned optimizer: where it wins
and where it loses.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .real_report import figure_text, loop_table, plot
from .real_suite import PROTOCOL, SEEDS, TUNING_SEEDS, run_real_suite, summarize
from .report import display_name, header
from .suites import Results, default_optimizers

LOOPS = ("mnist-cnn-wide", "text-transformer", "mnist-mlp-sigmoid")
SCHEDULES = ("constant",)
DESCRIPTION = (
    "a few minutes: the pretrained generalists and the published Celo2 in three ordinary loops "
    "(a ReLU CNN, a character Transformer, the sigmoid MNIST MLP), against tuned Adam and SGD with momentum"
)
QUICK_PROTOCOL = (
    PROTOCOL
    + f"""
Quick: the loops {", ".join(LOOPS)} only, at a constant rate only (no cosine runs).
"""
)


def run_quick_suite(
    out: Path,
    optimizers: list[str] | None = None,
    device: str = "cpu",
    progress: bool = True,
    command: str = "",
    steps: int | None = None,
    seeds: int = SEEDS,
    tuning_seeds: int = TUNING_SEEDS,
) -> Results:
    """Run (or resume) the suite into ``out/results.json``; ``steps``/``seeds`` override its budget (tests)."""
    return run_real_suite(
        out,
        optimizers=default_optimizers("generalists") if optimizers is None else optimizers,
        loops=list(LOOPS),
        steps=steps,
        seeds=seeds,
        tuning_seeds=tuning_seeds,
        device=device,
        progress=progress,
        command=command,
        schedules=SCHEDULES,
        suite="quick",
        description=DESCRIPTION,
        protocol=QUICK_PROTOCOL,
    )


def verdict_word(figures: dict[str, Any]) -> str:
    """``better``, ``within 5%``, ``worse`` or ``diverged``: a learned row against the best tuned baseline."""
    if figures["diverged"]:
        return "diverged"
    if figures.get("vs_best") == "better":
        return "better"
    return "within 5%" if figures.get("within_5_percent") else "worse"


def _cell(figures: dict[str, Any]) -> str:
    word = verdict_word(figures)
    if word == "diverged" or "best_baseline" not in figures:
        return word
    best = f"{figures['best_baseline']} {figures['best_train_loss']:.4g}"
    return f"{word} ({figure_text(figures, 'train_loss')} vs {best})"


def one_line_summaries(data: dict[str, Any], summary: dict[str, Any]) -> list[str]:
    """Per learned optimizer: the loops where it is better than, within 5% of and worse than the best tuned
    baseline, where it diverged, and against Adam at 1e-3."""
    lines = []
    for name in data["learned"]:
        by_word: dict[str, list[str]] = {}
        beats_adam = judged = 0
        for loop, by_schedule in summary["loops"].items():
            for schedule, rows in by_schedule.items():
                if name not in rows:
                    continue
                figures = rows[name]
                judged += 1
                beats_adam += bool(figures.get("beats_adam"))
                label = loop if len(by_schedule) == 1 else f"{loop} ({schedule})"
                by_word.setdefault(verdict_word(figures), []).append(label)
        if not judged:
            continue
        parts = [f"{word} on {', '.join(loops)}" for word, loops in sorted(by_word.items(), key=_word_order)]
        parts.append(f"beats Adam at 1e-3 on {beats_adam} of {judged}")
        lines.append(f"{display_name(name, data)}: " + "; ".join(parts) + ".")
    return lines


def _word_order(item: tuple[str, list[str]]) -> int:
    return ("better", "within 5%", "worse", "diverged").index(item[0])


def verdict_table(data: dict[str, Any], summary: dict[str, Any]) -> str:
    loops = list(summary["loops"])
    lines = ["| learned optimizer | " + " | ".join(loops) + " |", "|---|" + "---|" * len(loops)]
    for name in data["learned"]:
        cells = []
        for loop in loops:
            rows = summary["loops"][loop].get(SCHEDULES[0], {})
            cells.append(_cell(rows[name]) if name in rows else "—")
        lines.append(f"| {display_name(name, data)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown(data: dict[str, Any], summary: dict[str, Any]) -> str:
    plans = {plan["loop"]: plan for plan in data["loops"]}
    parts = [
        *header(data),
        "## In one line",
        "",
        *(f"- {line}" for line in one_line_summaries(data, summary)),
        "",
        "## Against the best tuned baseline",
        "",
        "Cells: better (lower training loss than the best of tuned Adam and tuned SGD with momentum by more than "
        "two standard errors), within 5% (training loss at most 1.05× the best tuned baseline's and test metric "
        "within 5% of the best), worse, or diverged; then training loss, learned vs that baseline.",
        "",
        verdict_table(data, summary),
        "",
        "## Per loop",
        "",
        "Mean ± std over seeds. Train loss: mean minibatch loss over the last 10% of steps. lr: the rate used "
        "(* = at the edge of the tuning grid). Times: medians, relative to Adam at 1e-3 (foreach) in the same "
        "loop: step ÷ Adam is the whole training step (forward, backward, optimizer), step() the optimizer alone.",
        "",
    ]
    parts += [loop_table(plans[loop], by_schedule, data) + "\n" for loop, by_schedule in summary["loops"].items()]
    return "\n".join(parts)


def write_quick_reports(data: dict[str, Any], out: Path) -> list[Path]:
    """``results.md`` and ``quick.png`` beside ``results.json``; the summary goes into ``data``."""
    summary = data["summary"] = summarize(data)
    (out / "results.md").write_text(markdown(data, summary) + "\n")
    return [out / "results.md", plot(data, summary, out / "quick.png")]

"""``results.md`` and ``real.png`` from the ``real`` suite's results (``benchmarks.real_suite``)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from .real_suite import AS_WRITTEN, TUNED, final_cell, summarize
from .real_training import SCHEDULES
from .report import display_name, header

TARGET_LABELS = {
    "never_diverges": "never diverges",
    "beats_adam_on_every_loop": "beats Adam@1e-3 on every loop",
    "within_5_percent_on_two_thirds": "within 5% on ≥ 2/3 of loops",
    "step_time_within_target_on_every_loop": "step() ≤ 3× Adam-foreach on every loop",
}


def figure_text(figures: dict[str, Any], key: str, as_percent: bool = False) -> str:
    if figures["diverged"]:
        steps = ", ".join(str(s) for s in figures["diverged_at"] if s is not None)
        return f"diverged (step {steps})"
    value = figures[key]
    scale = 100 if as_percent else 1
    spread = "" if math.isnan(value["std"]) else f" ± {scale * value['std']:.3g}"
    return f"{scale * value['mean']:.4g}{spread}{'%' if as_percent else ''}"


def _yes_no(figures: dict[str, Any], key: str) -> str:
    return "—" if key not in figures else ("yes" if figures[key] else "no")


def loop_table(plan: dict[str, Any], by_schedule: dict[str, Any], data: dict[str, Any]) -> str:
    accuracy = plan["metric"] == "accuracy"
    header = [
        "schedule", "optimizer", "lr", "train loss", f"test {plan['metric']}", "step ÷ Adam", "step() ÷ Adam-foreach",
        "beats Adam@1e-3", "within 5% of best tuned",
    ]  # fmt: skip
    lines = [
        f"### {plan['loop']}: {plan['description']}",
        "",
        f"{plan['steps']} steps, {plan['seeds']} seeds; data: {plan['data']}.",
        "",
        "| " + " | ".join(header) + " |",
        "|---|---|---:|---:|---:|---:|---:|---|---|",
    ]
    for schedule in SCHEDULES:
        for name, figures in by_schedule.get(schedule, {}).items():
            label = name if name == AS_WRITTEN or name.endswith(TUNED) else display_name(name, data)
            star = "*" if figures.get("lr_at_grid_edge") else ""
            cells = [
                schedule, label, f"{figures['lr']:g}{star}", figure_text(figures, "train_loss"),
                figure_text(figures, "test_metric", as_percent=accuracy),
                f"{figures.get('step_time_vs_adam', math.nan):.2f}×",
                f"{figures.get('optimizer_step_vs_adam_foreach', math.nan):.2f}×",
                _yes_no(figures, "beats_adam"), _yes_no(figures, "within_5_percent"),
            ]  # fmt: skip
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def targets_table(summary: dict[str, Any], data: dict[str, Any]) -> str:
    lines = [
        "| learned optimizer | schedule | diverged loops | beats Adam@1e-3 | within 5% | step() ≤ 3× | "
        + " | ".join(TARGET_LABELS.values())
        + " | all targets |",
        "|---|---|---:|---:|---:|---:|" + "---|" * (len(TARGET_LABELS) + 1),
    ]
    for name, by_schedule in summary["targets"].items():
        for schedule, counts in by_schedule.items():
            n = counts["loops"]
            met = ["yes" if counts["met"][key] else "no" for key in TARGET_LABELS]
            lines.append(
                f"| {display_name(name, data)} | {schedule} | {counts['diverged']}/{n} | {counts['beats_adam']}/{n} | "
                f"{counts['within_5_percent']}/{n} | {counts['step_time_within_target']}/{n} | "
                + " | ".join(met)
                + f" | {'yes' if counts['all_met'] else 'no'} |"
            )
    return "\n".join(lines)


def relative_table(summary: dict[str, Any], data: dict[str, Any], schedule: str = "constant") -> str:
    """Training loss per loop relative to the best tuned baseline's (the lowest of the tuned rows):
    one row per learned optimizer and one for Adam at 1e-3, the form the README quotes."""
    loops = list(summary["loops"])
    best: dict[str, tuple[str, float]] = {}
    for loop in loops:
        tuned = {
            name.removesuffix(TUNED): figures["train_loss"]["mean"]
            for name, figures in summary["loops"][loop].get(schedule, {}).items()
            if name.endswith(TUNED) and not figures["diverged"]
        }
        best[loop] = min(tuned.items(), key=lambda item: item[1]) if tuned else ("none", math.nan)
    names = [n for n in summary["targets"]] + [AS_WRITTEN]
    lines = [
        "| loop | " + " | ".join(loops) + " |",
        "|---|" + "---:|" * len(loops),
        "| best tuned baseline | " + " | ".join(f"{name} {value:.3g}" for name, value in best.values()) + " |",
    ]
    for name in names:
        cells = []
        for loop in loops:
            figures = summary["loops"][loop].get(schedule, {}).get(name)
            if figures is None:
                cells.append("—")
            elif figures["diverged"]:
                cells.append("diverged")
            else:
                cells.append(f"{100 * (figures['train_loss']['mean'] / best[loop][1] - 1):+.0f}%")
        label = "Adam at 1e-3" if name == AS_WRITTEN else display_name(f"`{name}`", data, name)
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown(data: dict[str, Any], summary: dict[str, Any]) -> str:
    parts = [
        *header(data),
        "## Targets",
        "",
        "Per learned optimizer and schedule, over the loops: how many loops it diverged on, beat Adam at 1e-3 on, "
        "came within 5% of the best tuned baseline on, and had an optimizer.step() at most 3× Adam (foreach) on.",
        "",
        targets_table(summary, data),
        "",
        "## Against the best tuned baseline",
        "",
        "Training loss at a constant rate relative to the best tuned baseline's in the same loop (mean over seeds; "
        "lower is better).",
        "",
        relative_table(summary, data),
        "",
        "## Per loop",
        "",
        "Mean ± std over seeds. Train loss: mean minibatch loss over the last 10% of steps. lr: the rate used "
        "(* = at the edge of the tuning grid; tuned at a constant rate, reused under cosine). Times: medians, "
        "relative to Adam at 1e-3 (foreach) in the same loop and schedule.",
        "",
    ]
    plans = {plan["loop"]: plan for plan in data["loops"]}
    parts += [loop_table(plans[loop], by_schedule, data) + "\n" for loop, by_schedule in summary["loops"].items()]
    return "\n".join(parts)


def plot(data: dict[str, Any], summary: dict[str, Any], path: Path) -> Path:
    """One panel per loop: smoothed training loss of Adam at 1e-3, tuned Adam, tuned SGD-m and each learned
    optimizer; constant rate solid, cosine schedule dotted, one colour per optimizer; legend below the panels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    loops = list(summary["loops"])
    names = [AS_WRITTEN, *(b + TUNED for b in data["baselines"]), *data["learned"]]
    colours = {name: plt.get_cmap("tab10")(i % 10) for i, name in enumerate(names)}
    columns = min(3, len(loops))
    rows = math.ceil(len(loops) / columns)
    width = max(5.2 * columns, 9.0)
    legend_rows = math.ceil(len(names) * 2 / 3)
    height = 3.8 * rows + 1.0 + 0.25 * legend_rows
    figure, axes = plt.subplots(rows, columns, figsize=(width, height), squeeze=False)
    handles: dict[str, Any] = {}
    plans = {plan["loop"]: plan for plan in data["loops"]}
    cells = [cell for cell in data["cells"].values() if cell["phase"] == "final"]
    for axis, loop in zip(axes.flat, loops, strict=False):
        for schedule, style in zip(SCHEDULES, ("-", ":"), strict=True):
            for name, figures in summary["loops"][loop].get(schedule, {}).items():
                lr = None if name in data["learned"] else figures["lr"]
                cell = final_cell(cells, plans[loop], figures["optimizer"], lr, schedule)
                if cell is None or not cell["curve"]["step"]:
                    continue  # a diverged run has no curve; the table names the step
                label = f"{display_name(name, data)}, {'constant lr' if schedule == 'constant' else 'cosine schedule'}"
                (line,) = axis.plot(
                    cell["curve"]["step"], cell["curve"]["loss"], color=colours[name], linestyle=style, linewidth=1.5
                )
                handles.setdefault(label, line)
        plan = plans[loop]
        axis.set_title(f"{loop}\n{plan['description']}", fontsize=8.5, wrap=True)
        axis.set(xlabel="step", ylabel="training loss (moving average)", yscale="log")
        axis.grid(alpha=0.3, which="both")
    for axis in list(axes.flat)[len(loops) :]:
        axis.set_visible(False)
    figure.suptitle(
        "Learned optimizers in ordinary PyTorch training loops: training loss over steps (lower is better)\n"
        f"mean over seeds; baselines at their tuned rates except Adam at 1e-3; commit {data['environment']['commit']}",
        fontsize=11,
    )
    figure.legend(handles.values(), handles.keys(), loc="lower center", ncol=3, fontsize=8, frameon=False)
    figure.tight_layout(rect=(0, (0.2 + 0.25 * legend_rows) / height, 1, 1))
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def write_real_reports(data: dict[str, Any], out: Path) -> list[Path]:
    """``results.md`` and ``real.png`` beside ``results.json``; the summary goes into ``data``."""
    summary = data["summary"] = summarize(data)
    (out / "results.md").write_text(markdown(data, summary) + "\n")
    return [out / "results.md", plot(data, summary, out / "real.png")]


CARD_HEADINGS = {
    "short": "### Ordinary training loops (`learned-optim bench real`)",
    "long": "### Ordinary training loops at 2,000 steps (`learned-optim bench real --length long`)",
}


def card_block(
    name: str, data: dict[str, Any], summary: dict[str, Any], results: str = "benchmarks/results/real/results.md"
) -> str:
    """The card subsection for learned optimizer ``name``: its row in every loop and schedule, beside
    Adam at 1e-3 and the best tuned baseline, with the verdicts and where it diverged."""
    env = data["environment"]
    lines = [
        CARD_HEADINGS[data.get("length", "short")],
        "",
        f"Untuned, at its default lr, in {len(summary['loops'])} ordinary PyTorch training loops it was not "
        f"trained on, against Adam at 1e-3 and Adam and SGD with momentum tuned per loop (`{data['command']}`, "
        f"commit {env['commit']}, {env['machine']}; protocol and every row: `{results}`). "
        "Train loss: mean minibatch loss over the last 10% of steps, mean ± std over seeds.",
        "",
        "| loop | schedule | train loss | Adam@1e-3 | best tuned baseline | test metric (best tuned) | "
        "beats Adam@1e-3 | within 5% of best tuned |",
        "|---|---|---:|---:|---|---|---|---|",
    ]
    plans = {plan["loop"]: plan for plan in data["loops"]}
    for loop, by_schedule in summary["loops"].items():
        accuracy = plans[loop]["metric"] == "accuracy"
        for schedule, rows in by_schedule.items():
            if name not in rows:
                continue
            figures = rows[name]
            adam = rows.get(AS_WRITTEN)
            best_name = figures.get("best_baseline")
            best = rows.get(f"{best_name}{TUNED}") if best_name else None
            best_text = "—" if best is None else f"{best_name} at {best['lr']:g}: {figure_text(best, 'train_loss')}"
            metric = figure_text(figures, "test_metric", as_percent=accuracy)
            if "best_metric" in figures:
                scale = 100 if accuracy else 1
                metric += f" ({scale * figures['best_metric']:.4g}{'%' if accuracy else ''})"
            lines.append(
                f"| {loop} | {schedule} | {figure_text(figures, 'train_loss')} | "
                f"{'—' if adam is None else figure_text(adam, 'train_loss')} | {best_text} | {metric} | "
                f"{_yes_no(figures, 'beats_adam')} | {_yes_no(figures, 'within_5_percent')} |"
            )
    for schedule, counts in summary["targets"].get(name, {}).items():
        n = counts["loops"]
        lines.append(
            f"\n{schedule}: diverged in {counts['diverged']}/{n} loops, "
            f"beat Adam at 1e-3 in {counts['beats_adam']}/{n}, "
            f"within 5% of the best tuned baseline in {counts['within_5_percent']}/{n}."
        )
    return "\n".join(lines)


def update_cards(
    data: dict[str, Any], summary: dict[str, Any], results: Path = Path("benchmarks/results/real/results.md")
) -> list[Path]:
    """Write ``card_block`` into the Evaluation section of every learned optimizer's local model card;
    ``results``: the results file the block points to."""
    from learned_optim import hub
    from learned_optim.cards import set_subsection
    from learned_optim.errors import WeightsError

    written = []
    for name in data["learned"]:
        if name not in summary["targets"]:
            continue
        try:
            card = hub.resolve(name, local_files_only=True) / "README.md"
        except WeightsError:  # an architecture name, or Hub weights not on this machine: no card to write
            continue
        if card.exists():
            card.write_text(set_subsection(card.read_text(), card_block(name, data, summary, results.as_posix())))
            written.append(card)
    return written

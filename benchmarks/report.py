"""Tables, verdicts and plots from a suite's results JSON (``benchmarks.suites``).

A learned optimizer *beats* tuned Adam at step t when its mean training loss is lower by more
than twice the standard error of the difference of the two means over seeds (Welch); *loses*
when higher by as much; otherwise the two *tie*. A diverged seed counts as infinite loss.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from .stats import mean, std, verdict
from .suites import TaskPlan, chosen_rates

METRIC_LABELS = {"train_loss": "train loss", "test_accuracy": "test acc."}


def _final_cell(cells: dict[str, Any], task: str, optimizer: str, lr: float) -> dict[str, Any] | None:
    for cell in cells.values():
        if cell["phase"] == "final" and cell["task"] == task and cell["optimizer"] == optimizer and cell["lr"] == lr:
            return cell
    return None


def summarize(data: dict[str, Any]) -> dict[str, Any]:
    """``{task: {optimizer: {step: figures}}}`` for every finished final run, plus verdicts vs Adam."""
    summary: dict[str, Any] = {}
    for plan_fields in data["plans"]:
        plan = TaskPlan(**{k: tuple(v) if isinstance(v, list) else v for k, v in plan_fields.items()})
        rows: dict[str, Any] = {}
        candidates: list[tuple[str, dict[int, float], bool]] = []
        for baseline in data["baselines"]:
            grid = tuple(data["grids"][baseline])
            try:
                rates = chosen_rates(data["cells"], plan, baseline, grid)
            except ValueError:  # no tuning cell finished yet
                continue
            candidates.append((baseline, rates, True))
        candidates += [(name, dict.fromkeys(plan.report, 1.0), False) for name in data["learned"]]
        for name, rates, tuned in candidates:
            figures = {}
            for step, lr in rates.items():
                cell = _final_cell(data["cells"], plan.task, name, lr)
                if cell is None:
                    continue
                at = cell["at"][str(step)]
                grid = data["grids"].get(name, ())
                figures[str(step)] = {
                    "lr": lr,
                    "lr_at_grid_edge": tuned and lr in (max(grid), min(grid)),
                    **{m: {"mean": mean(at[m]), "std": std(at[m]), "per_seed": at[m]} for m in at},
                    "diverged_seeds": sum(d is not None for d in cell["diverged_at"]),
                    "step_seconds": cell["step_seconds"],
                    "state_bytes_per_run": cell["state_bytes_per_run"],
                }
            if figures:
                rows[name] = figures
        adam = rows.get("adam", {})
        for name, figures in rows.items():
            for step, entry in figures.items():
                if name != "adam" and step in adam:
                    entry["vs_adam"] = verdict(entry["train_loss"]["per_seed"], adam[step]["train_loss"]["per_seed"])
        summary[plan.task] = {"plan": plan_fields, "optimizers": rows}
    return summary


def _figure(entry: dict[str, Any], metric: str) -> str:
    if entry["diverged_seeds"]:
        return f"diverged ({entry['diverged_seeds']})"
    value = entry[metric]
    if metric == "test_accuracy":
        return f"{100 * value['mean']:.1f} ± {100 * value['std']:.1f}%"
    return f"{value['mean']:.3f} ± {value['std']:.3f}"


def task_table(task: str, entry: dict[str, Any]) -> str:
    plan, rows = entry["plan"], entry["optimizers"]
    steps = [str(r) for r in plan["report"]]
    header = (
        ["optimizer", "lr"]
        + [f"{METRIC_LABELS[m]} t={s}" for m in METRIC_LABELS for s in steps]
        + ["step time", "÷ Adam", "state ÷ Adam"]
    )
    lines = [
        f"#### {task}: {plan['steps']} steps, {plan['seeds']} seeds "
        f"(baselines' learning rates tuned on {plan['tuning_seeds']} other seeds)",
        "",
        "| " + " | ".join(header) + " |",
        "|---|---|" + "---:|" * (len(header) - 2),
    ]
    adam = rows.get("adam", {}).get(steps[-1])
    for name, figures in rows.items():
        last = figures.get(steps[-1]) or next(iter(figures.values()))
        rates = "/".join(f"{figures[s]['lr']:g}{'*' if figures[s]['lr_at_grid_edge'] else ''}" for s in figures)
        values = [_figure(figures[s], m) if s in figures else "—" for m in METRIC_LABELS for s in steps]
        time_ratio = f"{last['step_seconds'] / adam['step_seconds']:.2f}×" if adam else "—"
        state_ratio = f"{last['state_bytes_per_run'] / adam['state_bytes_per_run']:.2f}×" if adam else "—"
        lines.append(
            f"| {name} | {rates} | " + " | ".join(values) + f" | {last['step_seconds'] * 1e3:.1f} ms "
            f"| {time_ratio} | {state_ratio} |"
        )
    return "\n".join(lines)


def verdict_table(summary: dict[str, Any], learned: list[str]) -> str:
    """Rows: learned optimizers; columns: task at each reported step; cells: the verdict vs tuned Adam."""
    columns = [(task, step) for task, entry in summary.items() for step in map(str, entry["plan"]["report"])]
    learned = [n for n in sorted(learned) if any(n in entry["optimizers"] for entry in summary.values())]
    lines = [
        "| learned optimizer | " + " | ".join(f"{task} t={step}" for task, step in columns) + " |",
        "|---|" + "---|" * len(columns),
    ]
    for name in learned:
        cells = []
        for task, step in columns:
            mine = summary[task]["optimizers"].get(name, {}).get(step)
            adam = summary[task]["optimizers"].get("adam", {}).get(step)
            if mine is None or adam is None:
                cells.append("—")
                continue
            cells.append(f"{mine['vs_adam']} ({mine['train_loss']['mean']:.3f} vs {adam['train_loss']['mean']:.3f})")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown(data: dict[str, Any], summary: dict[str, Any]) -> str:
    env = data["environment"]
    parts = [
        f"# Benchmark suite `{data['suite']}`: {data['description']}",
        "",
        f"Command: `{data['command']}` at commit {env['commit']}, torch {env['torch']}, "
        f"{env['device']} ({env['machine']}, {env['threads']} threads).",
        "",
        f"Protocol: {data['protocol']}",
        "",
        "## Learned optimizers against tuned Adam (training loss at step t; better/worse = beyond two standard errors)",
        "",
        verdict_table(summary, data["learned"]),
        "",
        "## Per task",
        "",
        "Mean ± std over seeds. Train loss: on 4096 examples of the data the optimizee trains on; test acc.: the "
        "whole test split. lr: the rate used for each reported step (* = at the edge of the tuning grid). Step "
        "time: one training step of all seeds together (forward, backward, optimizer), median; state: optimizer "
        "state bytes per parameter.",
        "",
    ]
    parts += [task_table(task, entry) + "\n" for task, entry in summary.items()]
    return "\n".join(parts)


def plot(data: dict[str, Any], summary: dict[str, Any], path: Path) -> Path:
    """One panel per task: smoothed training loss, mean and a ±std band (mirrored in log scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(summary)
    columns = min(3, len(tasks))
    rows = math.ceil(len(tasks) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(5.5 * columns, 4 * rows), squeeze=False)
    for axis, task in zip(axes.flat, tasks, strict=False):
        cell = None
        last = str(summary[task]["plan"]["report"][-1])
        for name, figures in summary[task]["optimizers"].items():
            if last not in figures:
                continue
            cell = _final_cell(data["cells"], task, name, figures[last]["lr"])
            curve = cell["smoothed_curve"]
            if not curve["step"]:
                continue
            high = [m + s for m, s in zip(curve["mean"], curve["std"], strict=True)]
            # Mirrored on the log axis (mean / (1 + std/mean) ≈ mean − std for small std): mean − std
            # can be ≤ 0, which a log axis cannot draw and would stretch to its floor.
            low = [m * m / h if h > 0 else m for m, h in zip(curve["mean"], high, strict=True)]
            learned = name in data["learned"]
            label = f"{name}" + ("" if learned else f" (lr {figures[last]['lr']:g})")
            line = axis.plot(curve["step"], curve["mean"], label=label, linestyle="-" if learned else "--")[0]
            axis.fill_between(curve["step"], low, high, color=line.get_color(), alpha=0.2)
        window = cell["smoothed_curve"]["window"] if cell is not None else 1
        axis.set(title=task, xlabel="step", ylabel=f"training loss ({window}-step moving average)", yscale="log")
        axis.grid(alpha=0.3, which="both")
        axis.legend(fontsize=8)
    for axis in list(axes.flat)[len(tasks) :]:
        axis.set_visible(False)
    commit = data["environment"]["commit"]
    figure.suptitle(f"{data['suite']}: mean over seeds, band mean + std and its log-mirror (commit {commit})")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def write_reports(data: dict[str, Any], out: Path) -> list[Path]:
    """``results.md`` and ``<suite>.png`` beside the results JSON."""
    summary = data["summary"] = summarize(data)
    text = markdown(data, summary)
    (out / "results.md").write_text(text + "\n")
    return [out / "results.md", plot(data, summary, out / f"{data['suite']}.png")]

"""Tables, verdicts and plots from a suite's results JSON (``benchmarks.suites``).

Each learned optimizer is judged against the *best tuned baseline* at step t: of the tuned SGD,
SGD with momentum and Adam, the one with the lowest mean training loss at t. It *beats* that
baseline when its mean training loss is lower by more than twice the standard error of the
difference of the two means over seeds (Welch); *loses* when higher by as much; otherwise the
two *tie*. A diverged seed counts as infinite loss. (``vs_adam``, the same verdict against tuned
Adam alone, stays in the summary.)
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from .stats import mean, std, verdict
from .suites import TaskPlan, chosen_rates, recommendations
from .tuning import at_grid_edge

METRIC_LABELS = {"train_loss": "train loss", "test_accuracy": "test acc."}
# Below this many parameters per run the CPU's resident high-water mark is the allocator's and the
# framework's, not the optimizer's (a 16k-parameter MLP read 10-17x Adam's): no peak memory there.
PEAK_MEMORY_MIN_PARAMETERS = 1_000_000


def _final_cell(cells: dict[str, Any], task: str, optimizer: str, lr: float) -> dict[str, Any] | None:
    for cell in cells.values():
        if cell["phase"] == "final" and cell["task"] == task and cell["optimizer"] == optimizer and cell["lr"] == lr:
            return cell
    return None


def task_plans(data: dict[str, Any]) -> list[TaskPlan]:
    """The suite's plans, read back from ``results.json``."""
    return [TaskPlan(**{k: tuple(v) if isinstance(v, list) else v for k, v in plan.items()}) for plan in data["plans"]]


def summarize(data: dict[str, Any]) -> dict[str, Any]:
    """``{task: {optimizer: {step: figures}}}`` for every finished final run, plus the verdicts.

    A learned optimizer's figures at step t carry ``best_baseline`` (the tuned baseline with the
    lowest mean training loss at t), ``vs_best_baseline`` and ``vs_adam``.
    """
    summary: dict[str, Any] = {}
    for plan_fields, plan in zip(data["plans"], task_plans(data), strict=True):
        rows: dict[str, Any] = {}
        candidates: list[tuple[str, dict[int, float], bool]] = []
        for baseline in data["baselines"]:
            grid = tuple(data["grids"][baseline])
            try:
                rates = chosen_rates(data["cells"], plan, baseline, grid)
            except ValueError:  # no tuning cell finished yet
                continue
            candidates.append((baseline, rates, True))
        # Results written before learned_lrs was recorded ran every learned optimizer at lr 1.
        learned_lrs = data.get("learned_lrs", {})
        for name in data["learned"]:
            candidates.append((name, dict.fromkeys(plan.report, learned_lrs.get(name, 1.0)), False))
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
                    "lr_at_grid_edge": tuned and at_grid_edge(lr, grid),
                    **{m: {"mean": mean(at[m]), "std": std(at[m]), "per_seed": at[m]} for m in at},
                    "diverged_seeds": sum(d is not None for d in cell["diverged_at"]),
                    "step_seconds": cell["step_seconds"],
                    "state_bytes_per_run": cell["state_bytes_per_run"],
                    "peak_bytes": cell.get("peak_bytes"),
                    "parameters_per_run": cell.get("parameters_per_run", 0),
                }
            if figures:
                rows[name] = figures
        adam = rows.get("adam", {})
        baselines = [name for name in data["baselines"] if name in rows]
        for name, figures in rows.items():
            for step, entry in figures.items():
                if name != "adam" and step in adam:
                    entry["vs_adam"] = verdict(entry["train_loss"]["per_seed"], adam[step]["train_loss"]["per_seed"])
                best = best_baseline(rows, baselines, step)
                if name in data["learned"] and best is not None:
                    entry["best_baseline"] = best
                    reference = rows[best][step]["train_loss"]["per_seed"]
                    entry["vs_best_baseline"] = verdict(entry["train_loss"]["per_seed"], reference)
        summary[plan.task] = {"plan": plan_fields, "optimizers": rows}
    return summary


def best_baseline(rows: dict[str, Any], baselines: list[str], step: str) -> str | None:
    """The tuned baseline with the lowest mean training loss at ``step`` (None if none finished)."""
    finished = [name for name in baselines if step in rows.get(name, {})]
    return min(finished, key=lambda name: rows[name][step]["train_loss"]["mean"], default=None)


def display_name(name: str, data: dict[str, Any], weights: str | None = None) -> str:
    """The optimizer's name (as written, e.g. in backticks), marked when its weights (default: ``name``)
    are a study object (not for training models)."""
    study = data.get("recommendations", {}).get(weights or name) == "study object"
    return f"{name} (study object)" if study else name


def _figure(entry: dict[str, Any], metric: str) -> str:
    if entry["diverged_seeds"]:
        return f"diverged ({entry['diverged_seeds']})"
    value = entry[metric]
    if metric == "test_accuracy":
        return f"{100 * value['mean']:.1f} ± {100 * value['std']:.1f}%"
    return f"{value['mean']:.3f} ± {value['std']:.3f}"


def task_table(task: str, entry: dict[str, Any], data: dict[str, Any]) -> str:
    plan, rows = entry["plan"], entry["optimizers"]
    steps = [str(r) for r in plan["report"]]
    header = (
        ["optimizer", "lr"]
        + [f"{METRIC_LABELS[m]} t={s}" for m in METRIC_LABELS for s in steps]
        + ["step time", "÷ Adam", "state ÷ Adam", "peak memory ÷ Adam"]
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
        large = last.get("parameters_per_run", 0) >= PEAK_MEMORY_MIN_PARAMETERS
        measured = adam and large and last.get("peak_bytes") and adam.get("peak_bytes")
        peak_ratio = f"{last['peak_bytes'] / adam['peak_bytes']:.2f}×" if measured else "—"
        lines.append(
            f"| {display_name(name, data)} | {rates} | "
            + " | ".join(values)
            + f" | {last['step_seconds'] * 1e3:.1f} ms "
            f"| {time_ratio} | {state_ratio} | {peak_ratio} |"
        )
    return "\n".join(lines)


def verdict_table(summary: dict[str, Any], data: dict[str, Any]) -> str:
    """Rows: learned optimizers; columns: task at each reported step; cells: the verdict vs the best tuned baseline."""
    columns = [(task, step) for task, entry in summary.items() for step in map(str, entry["plan"]["report"])]
    learned = [n for n in sorted(data["learned"]) if any(n in entry["optimizers"] for entry in summary.values())]
    lines = [
        "| learned optimizer | " + " | ".join(f"{task} t={step}" for task, step in columns) + " |",
        "|---|" + "---|" * len(columns),
    ]
    for name in learned:
        cells = []
        for task, step in columns:
            rows = summary[task]["optimizers"]
            mine = rows.get(name, {}).get(step)
            if mine is None or "best_baseline" not in mine:
                cells.append("—")
                continue
            best = mine["best_baseline"]
            reference = rows[best][step]["train_loss"]["mean"]
            cells.append(f"{mine['vs_best_baseline']} ({mine['train_loss']['mean']:.3f} vs {best} {reference:.3f})")
        lines.append(f"| {display_name(name, data)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def header(data: dict[str, Any]) -> list[str]:
    """A results.md's first lines: the suite, and the command, commit, machine and protocol behind it."""
    env = data["environment"]
    return [
        f"# Benchmark suite `{data['suite']}`: {data['description']}",
        "",
        f"Command: `{data['command']}` at commit {env['commit']}, torch {env['torch']}, "
        f"{env['device']} ({env['machine']}, {env['threads']} threads).",
        "",
        f"Protocol: {data['protocol']}",
        "",
    ]


def evaluation_samples(data: dict[str, Any]) -> str:
    """What the train loss and the test accuracy are measured on, from the suite's plans."""
    plans = task_plans(data)
    train = {plan.eval_examples for plan in plans}
    test = {plan.test_examples for plan in plans}
    train_text = f"{train.pop():,} examples" if len(train) == 1 else "a fixed sample (its size in the task's plan)"
    if test == {None}:
        test_text = "the whole test split"
    elif len(test) == 1:
        test_text = f"{test.pop():,} fixed test examples"
    else:
        test_text = "the test examples in the task's plan"
    return f"Train loss: on {train_text} of the data the optimizee trains on; test acc.: on {test_text}."


def markdown(data: dict[str, Any], summary: dict[str, Any]) -> str:
    parts = [
        *header(data),
        "## Learned optimizers against the best tuned baseline",
        "",
        "At each step t the best tuned baseline is whichever of SGD, SGD with momentum and Adam (each at its tuned "
        "learning rate) has the lowest mean training loss there. Cells: better / worse / tie (within two standard "
        "errors), then training loss: learned vs that baseline.",
        "",
        verdict_table(summary, data),
        "",
        "## Per task",
        "",
        f"Mean ± std over seeds. {evaluation_samples(data)} lr: the rate used for each reported step (* = at the "
        "edge of the tuning grid). Step time: one training step of all seeds together (forward, backward, "
        "optimizer), median; state: optimizer state bytes per parameter; peak memory: the most a training step "
        "of all seeds holds (parameters, gradients, optimizer state, activations, transients; on the CPU the "
        "parameters plus the process's resident high-water mark beyond what it held before the first step; "
        f"shown for tasks of at least {PEAK_MEMORY_MIN_PARAMETERS:,} parameters, where it measures the optimizer "
        f"rather than the allocator){_peak_provenance(data)}.",
        "",
    ]
    parts += [task_table(task, entry, data) + "\n" for task, entry in summary.items()]
    return "\n".join(parts)


def _peak_provenance(data: dict[str, Any]) -> str:
    """How the peak memory of runs measured afterwards (``benchmarks.peak_memory``) was measured."""
    later = [c["peak_bytes_measured"] for c in data["cells"].values() if "peak_bytes_measured" in c]
    if not later:
        return ""
    first = later[0]
    commits = ", ".join(dict.fromkeys(m["environment"]["commit"] for m in later))
    return (
        f"; of {len(later)} runs measured afterwards in fresh processes over their first {first['steps']} steps: "
        f"`{first['command']}` at commit {commits} (each run's commit is in results.json)"
    )


def plot(data: dict[str, Any], summary: dict[str, Any], path: Path) -> Path:
    """One panel per task: smoothed training loss, mean over seeds with a shaded ±1 std band.

    Each optimizer keeps its colour in every panel; baselines are dashed, study objects thin and
    dotted. Each panel's title names the lowest training loss at the last reported step, and the
    legend sits below the panels, off the data.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(summary)
    names = list(dict.fromkeys(n for task in tasks for n in summary[task]["optimizers"]))
    colours = {name: plt.get_cmap("tab10" if len(names) <= 10 else "tab20")(i) for i, name in enumerate(names)}
    columns = min(3, len(tasks))
    rows = math.ceil(len(tasks) / columns)
    width = max(5.5 * columns, 9.0)  # one panel still leaves room for the title and legend
    legend_columns = max(1, min(len(names), int(width // 3.4)))
    legend_rows = math.ceil(len(names) / legend_columns)
    height = 4 * rows + 0.7 + 0.22 * legend_rows  # the legend goes below the panels, off the data
    figure, axes = plt.subplots(rows, columns, figsize=(width, height), squeeze=False)
    handles: dict[str, Any] = {}
    for axis, task in zip(axes.flat, tasks, strict=False):
        cell = None
        optimizers = summary[task]["optimizers"]
        last = str(summary[task]["plan"]["report"][-1])
        for name, figures in optimizers.items():
            if last not in figures:
                continue
            cell = _final_cell(data["cells"], task, name, figures[last]["lr"])
            curve = cell["smoothed_curve"]
            if not curve["step"]:
                continue
            high = [m + s for m, s in zip(curve["mean"], curve["std"], strict=True)]
            # The lower edge is mean² / (mean + std), ≈ mean − std for a small std: mean − std can be
            # ≤ 0, which a log axis cannot draw, and this keeps the band symmetric on the log axis.
            low = [m * m / h if h > 0 else m for m, h in zip(curve["mean"], high, strict=True)]
            learned = name in data["learned"]
            study = learned and data.get("recommendations", {}).get(name) == "study object"
            style = {"linestyle": ":" if study else ("-" if learned else "--"), "linewidth": 1.0 if study else 1.6}
            label = display_name(name, data) if learned else f"{name} (tuned)"
            (line,) = axis.plot(curve["step"], curve["mean"], color=colours[name], label=label, **style)
            axis.fill_between(curve["step"], low, high, color=colours[name], alpha=0.15, linewidth=0)
            handles.setdefault(label, line)
        window = cell["smoothed_curve"]["window"] if cell is not None else 1
        finished = {n: f[last]["train_loss"]["mean"] for n, f in optimizers.items() if last in f}
        winner = min(finished, key=finished.get, default=None)
        lowest = f"\nlowest at step {last}: {winner} ({finished[winner]:.3f})" if winner else ""
        axis.set_title(f"{task}{lowest}", fontsize=10)
        axis.set(xlabel="step", ylabel=f"training loss ({window}-step moving average)", yscale="log")
        axis.grid(alpha=0.3, which="both")
    for axis in list(axes.flat)[len(tasks) :]:
        axis.set_visible(False)
    figure.suptitle(
        f"Benchmark suite {data['suite']}: training loss over steps (lower is better)\n"
        f"line: mean over seeds; band: ±1 std; baselines at their tuned learning rates; "
        f"commit {data['environment']['commit']}",
        fontsize=11,
    )
    figure.legend(handles.values(), handles.keys(), loc="lower center", ncol=legend_columns, fontsize=9, frameon=False)
    figure.tight_layout(rect=(0, (0.1 + 0.22 * legend_rows) / height, 1, 1))
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def write_reports(data: dict[str, Any], out: Path) -> list[Path]:
    """``results.md`` and ``<suite>.png`` beside the results JSON."""
    # Results written before weights carried a recommendation: look the names up now.
    data.setdefault("recommendations", recommendations(data["learned"]))
    summary = data["summary"] = summarize(data)
    text = markdown(data, summary)
    (out / "results.md").write_text(text + "\n")
    return [out / "results.md", plot(data, summary, out / f"{data['suite']}.png")]

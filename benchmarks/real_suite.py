"""The ``real`` suite: learned optimizers in ordinary training loops, against Adam as written and tuned baselines.

The protocol is ``PROTOCOL`` (recorded in every results file); the loops are
``benchmarks.real_loops.LOOPS``. Finished cells are cached in ``results.json`` and reused while
their specification (and a learned optimizer's weights) are unchanged, so a run resumes.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from learned_optim.provenance import environment

from .real_loops import ALL_LOOPS, LONG_STEPS, LOOPS, Loop
from .real_training import SCHEDULES, RealCellSpec, run_real_cell
from .runner import weights_digest
from .stats import mean, std, verdict
from .suites import Results, default_optimizers, recommendations
from .tuning import at_grid_edge, best

SCHEMA = "learned_optim.bench.real/1"
DESCRIPTION = "ordinary PyTorch training loops outside the meta-training distribution"
ADAM_AS_WRITTEN = 1e-3  # the rate a loop written for Adam usually has
GRIDS: dict[str, tuple[float, ...]] = {
    "adam": (0.03, 0.01, 0.003, 0.001, 0.0003, 0.0001),
    "sgd-momentum": (1.0, 0.3, 0.1, 0.03, 0.01, 0.003),
}
SEEDS, TUNING_SEEDS = 2, 1
TUNING_FIRST_SEED, FINAL_FIRST_SEED = 0, 1000
WITHIN = 0.05  # "within 5% of the best tuned baseline"
LENGTHS = ("short", "long")  # each loop's own 200-300 steps; LONG_STEPS
STEP_TIME_TARGET = 3.0  # "optimizer.step() at most 3x Adam(foreach=True)'s"
AS_WRITTEN, TUNED = "adam@1e-3", " (tuned)"

PROTOCOL = """\
Each loop is an ordinary PyTorch script: an nn.Module, random minibatches, loss.backward(),
optimizer.step(), optimizer.zero_grad(), and under the cosine schedule
CosineAnnealingLR(T_max = steps) stepped after every step. Two lengths, each a complete run of
the protocol with its own tuning: short, 200-300 steps per run (about 40 minutes on 2 CPU cores),
and long, 2,000 steps per run (about 8x that); small models, 1 tuning seed and 2 final seeds.
1. Tune: Adam (foreach=True) and SGD with momentum 0.9 train with every rate of their
half-decade log grids (Adam 0.03 ... 1e-4, SGD-m 1 ... 0.003) from seed 0 at a constant rate; each
keeps the rate with the lowest validation loss at the last step (held-out data, never the test
split; a diverged run counts as infinite); a rate at the grid's edge is starred. The cosine runs
reuse the rate tuned at a constant rate. 2. Final runs, from seeds 1000 and 1001, under both
schedules: Adam at lr = 1e-3 (what the loop had), the tuned Adam and SGD-m, and every learned
optimizer at its own default lr, untuned. Reported: training loss (the mean minibatch loss over
the last 10% of steps; mean and std over seeds), the test metric, divergence (a non-finite loss or
one above 10x the first step's stops the run: loss infinite, accuracy 0), and two times relative to
Adam at 1e-3 (foreach) in the same loop and schedule: the median forward + backward + step, and
the median optimizer.step() alone. Verdicts per learned optimizer, loop and schedule: beats Adam at
1e-3 when its training loss is lower by more than two standard errors; within 5% of the best tuned
baseline when its training loss is at most 1.05x the lowest of the tuned baselines' and its test
metric is within 5% of their best (accuracy at least 0.95x, bits per char or MSE at most 1.05x).
Targets: never diverges; beats Adam at 1e-3 on every loop; within 5% on at least two thirds of the
loops; optimizer.step() at most 3x Adam (foreach) on every loop.
"""


def cell_key(phase: str, spec: RealCellSpec) -> str:
    lr = "default" if spec.lr is None else f"{spec.lr:g}"
    return f"{phase}/{spec.loop}/{spec.optimizer}@{lr}/{spec.schedule}/seeds={len(spec.seeds)}/steps={spec.steps}"


def tuned_rate(cells: dict[str, Any], loop: str, baseline: str, grid: tuple[float, ...], steps: int) -> float | None:
    """The grid rate with the lowest mean final validation loss (None before any tuning cell finished)."""
    tuned = [
        cell
        for key, cell in cells.items()
        if key.startswith(f"tune/{loop}/{baseline}@") and cell["lr"] in grid and cell["steps"] == steps
    ]
    chosen = best(tuned, lambda cell: cell["validation_loss"])
    return None if chosen is None else chosen["lr"]


def run_real_suite(
    out: Path,
    optimizers: list[str] | None = None,
    baselines: list[str] | None = None,
    loops: list[str] | None = None,
    steps: int | None = None,
    seeds: int = SEEDS,
    tuning_seeds: int = TUNING_SEEDS,
    device: str = "cpu",
    progress: bool = True,
    command: str = "",
    grids: dict[str, tuple[float, ...]] | None = None,
    schedules: tuple[str, ...] = SCHEDULES,
    suite: str = "real",
    description: str = DESCRIPTION,
    protocol: str = PROTOCOL,
    length: str = "short",
) -> Results:
    """Run (or resume) the suite into ``out/results.json``, written after every cell.

    ``length``: ``short``, each loop at its own 200–300 steps, or ``long``, every loop at
    ``LONG_STEPS`` (with its own tuning); ``steps`` overrides both. ``loops`` default to ``LOOPS``;
    any of ``ALL_LOOPS`` may be named. ``suite``, ``description``,
    ``protocol`` and ``schedules`` let another suite (``quick``) run a slice of this one.
    """
    if length not in LENGTHS:
        raise ValueError(f"length {length!r}: choose from {LENGTHS}")
    if steps is None and length == "long":
        steps = LONG_STEPS
    results = Results(out / "results.json", schema=SCHEMA)
    grids = dict(GRIDS if grids is None else grids)
    baselines = list(grids) if baselines is None else baselines
    unknown = [b for b in baselines if b not in grids] + [name for name in loops or () if name not in ALL_LOOPS]
    unknown += [schedule for schedule in schedules if schedule not in SCHEDULES]
    if unknown:
        raise ValueError(
            f"unknown baselines, loops or schedules {unknown}: baselines {sorted(grids)}, loops {sorted(ALL_LOOPS)}, "
            f"schedules {list(SCHEDULES)}"
        )
    learned = default_optimizers("generalists") if optimizers is None else optimizers
    digests = {name: weights_digest(name) for name in learned}
    plans = [ALL_LOOPS[name] if steps is None else replace(ALL_LOOPS[name], steps=steps) for name in loops or LOOPS]
    data = {loop.name: loop.load_data() for loop in plans}
    results.data.update(
        suite=suite,
        length=length,
        description=description,
        protocol=" ".join(protocol.split()),
        schedules=list(schedules),
        command=command or results.data.get("command", ""),
        environment=environment(device, ignore=[results.path]),
        loops=[_plan(loop, data[loop.name].source, seeds, tuning_seeds) for loop in plans],
        grids={b: list(grids[b]) for b in baselines},
        baselines=baselines,
        learned=learned,
        recommendations=recommendations(learned),
    )

    def final_runs(rate_of: Callable[[str], float | None]) -> list[tuple[str, float | None]]:
        """(optimizer, lr) of one loop's final runs, the baselines at ``rate_of(baseline)``."""
        runs: list[tuple[str, float | None]] = [("adam", ADAM_AS_WRITTEN)] if "adam" in baselines else []
        return runs + [(b, rate_of(b)) for b in baselines] + [(name, None) for name in learned]

    # Every cell counted up front, so the bar shows an ETA; a tuned rate that repeats Adam at 1e-3
    # (the same cell) takes one off the total once tuning has found it.
    tune_cells = sum(len(grids[b]) for b in baselines)
    total = len(plans) * (tune_cells + len(schedules) * len(final_runs(lambda baseline: None)))
    bar = tqdm(total=total, desc=f"bench {suite}", unit="cell", disable=not progress)

    def run(phase: str, spec: RealCellSpec, digest: str | None = None) -> None:
        key = cell_key(phase, spec)
        bar.set_postfix_str(key)
        if results.cached(key, spec, digest) is None:
            cell = run_real_cell(spec, data[spec.loop], device=device)
            cell.update(phase=phase, weights_sha256=digest, finished_at=time.strftime("%Y-%m-%dT%H:%M:%S"))
            results.cells[key] = cell
            results.write()
        bar.update()

    tuning_seed_list = tuple(range(TUNING_FIRST_SEED, TUNING_FIRST_SEED + tuning_seeds))
    final_seed_list = tuple(range(FINAL_FIRST_SEED, FINAL_FIRST_SEED + seeds))
    for loop in plans:
        source = data[loop.name].source
        for baseline in baselines:
            for lr in grids[baseline]:
                spec = RealCellSpec(loop.name, baseline, lr, "constant", tuning_seed_list, loop.steps, source, False)
                run("tune", spec)
        finals = final_runs(lambda b, loop=loop: tuned_rate(results.cells, loop.name, b, grids[b], loop.steps))
        distinct = list(dict.fromkeys(finals))  # tuned Adam at 1e-3 is the same cell as Adam as written
        if len(distinct) < len(finals):
            bar.total -= len(schedules) * (len(finals) - len(distinct))
            bar.refresh()
        for schedule in schedules:
            for name, lr in distinct:
                spec = RealCellSpec(loop.name, name, lr, schedule, final_seed_list, loop.steps, source)
                run("final", spec, digests.get(name))
    bar.close()
    results.write()
    return results


def _plan(loop: Loop, source: str, seeds: int, tuning_seeds: int) -> dict[str, Any]:
    return {
        "loop": loop.name,
        "description": loop.description,
        "steps": loop.steps,
        "batch_size": loop.batch_size,
        "metric": loop.metric,
        "higher_is_better": loop.higher_is_better,
        "data": source,
        "seeds": seeds,
        "tuning_seeds": tuning_seeds,
    }


def _figures(cell: dict[str, Any], reference: dict[str, Any] | None) -> dict[str, Any]:
    """One final cell's figures; times relative to ``reference`` (Adam at 1e-3, same loop and schedule)."""
    figures = {
        "optimizer": cell["optimizer"],
        "lr": cell["lr_used"],
        "train_loss": _spread(cell["train_loss"]),
        "test_metric": _spread(cell["test_metric"]),
        "diverged_at": cell["diverged_at"],
        "diverged": any(step is not None for step in cell["diverged_at"]),
        "step_seconds": statistics.median(cell["step_seconds"]),
        "optimizer_step_seconds": statistics.median(cell["optimizer_step_seconds"]),
    }  # fmt: skip
    if reference is not None:
        figures["step_time_vs_adam"] = figures["step_seconds"] / statistics.median(reference["step_seconds"])
        ratio = figures["optimizer_step_seconds"] / statistics.median(reference["optimizer_step_seconds"])
        figures["optimizer_step_vs_adam_foreach"] = ratio
    return figures


def _spread(per_seed: list[float]) -> dict[str, Any]:
    return {"mean": mean(per_seed), "std": std(per_seed), "per_seed": per_seed}


def judge(
    learned: dict[str, Any], adam_as_written: dict[str, Any] | None, tuned: list[dict[str, Any]], higher_is_better: bool
) -> dict[str, Any]:
    """The verdicts on one learned optimizer in one loop and schedule (see ``PROTOCOL``)."""
    losses = learned["train_loss"]
    judged: dict[str, Any] = {"diverged": learned["diverged"]}
    if adam_as_written is not None:
        judged["vs_adam"] = verdict(losses["per_seed"], adam_as_written["train_loss"]["per_seed"])
        judged["beats_adam"] = judged["vs_adam"] == "better"
    if tuned:
        best_loss = min(tuned, key=lambda row: row["train_loss"]["mean"])
        metrics = [row["test_metric"]["mean"] for row in tuned]
        best_metric = max(metrics) if higher_is_better else min(metrics)
        metric = learned["test_metric"]["mean"]
        judged["best_baseline"] = best_loss["optimizer"]
        judged["best_train_loss"] = best_loss["train_loss"]["mean"]
        judged["vs_best"] = verdict(losses["per_seed"], best_loss["train_loss"]["per_seed"])
        judged["best_metric"] = best_metric
        judged["loss_within_5_percent"] = losses["mean"] <= (1 + WITHIN) * best_loss["train_loss"]["mean"]
        judged["metric_within_5_percent"] = (
            metric >= (1 - WITHIN) * best_metric if higher_is_better else metric <= (1 + WITHIN) * best_metric
        )
        judged["within_5_percent"] = judged["loss_within_5_percent"] and judged["metric_within_5_percent"]
    if "optimizer_step_vs_adam_foreach" in learned:
        judged["step_time_within_target"] = learned["optimizer_step_vs_adam_foreach"] <= STEP_TIME_TARGET
    return judged


def targets(judgements: list[dict[str, Any]]) -> dict[str, Any]:
    """Counts over loops of one learned optimizer's verdicts, and which of the issue's targets it meets."""
    loops = len(judgements)
    counts = {
        "loops": loops,
        "diverged": sum(j["diverged"] for j in judgements),
        "beats_adam": sum(j.get("beats_adam", False) for j in judgements),
        "within_5_percent": sum(j.get("within_5_percent", False) for j in judgements),
        "step_time_within_target": sum(j.get("step_time_within_target", False) for j in judgements),
    }
    met = {
        "never_diverges": counts["diverged"] == 0,
        "beats_adam_on_every_loop": loops > 0 and counts["beats_adam"] == loops,
        "within_5_percent_on_two_thirds": loops > 0 and counts["within_5_percent"] >= math.ceil(2 * loops / 3),
        "step_time_within_target_on_every_loop": loops > 0 and counts["step_time_within_target"] == loops,
    }
    return counts | {"met": met, "all_met": all(met.values())}


LONG_RUN_SHARE = 0.8  # of the loops at 2,000 steps a recommended optimizer must beat Adam at 1e-3 on


def meets_recommendation_bar(short: dict[str, Any], long: dict[str, Any]) -> bool:
    """Whether one schedule's ``targets`` counts at both lengths clear the bar for calling weights
    recommended: never diverge, beat Adam at 1e-3 on every loop at the short length and on at least
    ``LONG_RUN_SHARE`` of the loops at 2,000 steps."""
    return (
        short["loops"] > 0
        and long["loops"] > 0
        and short["diverged"] == 0
        and long["diverged"] == 0
        and short["beats_adam"] == short["loops"]
        and long["beats_adam"] >= LONG_RUN_SHARE * long["loops"]
    )


def final_cell(
    finals: list[dict[str, Any]], plan: dict[str, Any], optimizer: str, lr: float | None, schedule: str
) -> dict[str, Any] | None:
    """The final cell of ``optimizer`` at ``lr`` (None: its default) under ``schedule``, in ``plan``'s loop."""
    wanted = (plan["loop"], optimizer, lr, schedule, plan["steps"], plan["seeds"])
    found = [
        c for c in finals if (c["loop"], c["optimizer"], c["lr"], c["schedule"], c["steps"], len(c["seeds"])) == wanted
    ]
    return found[-1] if found else None


def summarize(data: dict[str, Any]) -> dict[str, Any]:
    """``{"loops": {loop: {schedule: {row: figures}}}, "targets": {learned: {schedule: counts}}}``.

    Rows: ``adam@1e-3``, ``<baseline> (tuned)`` and each learned optimizer; a learned row carries
    ``judge``'s verdicts.
    """
    finals = [cell for cell in data["cells"].values() if cell["phase"] == "final"]
    loops: dict[str, Any] = {}
    per_learned: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for plan in data["loops"]:
        loop = plan["loop"]
        loops[loop] = {}
        for schedule in data.get("schedules", SCHEDULES):

            def final(
                name: str, lr: float | None, schedule: str = schedule, plan: dict = plan
            ) -> dict[str, Any] | None:
                return final_cell(finals, plan, name, lr, schedule)

            reference = final("adam", ADAM_AS_WRITTEN)
            rows: dict[str, Any] = {}
            if reference is not None:
                rows[AS_WRITTEN] = _figures(reference, reference)
            for baseline in data["baselines"]:
                grid = tuple(data["grids"][baseline])
                rate = tuned_rate(data["cells"], loop, baseline, grid, plan["steps"])
                cell = final(baseline, rate)
                if cell is not None:
                    rows[baseline + TUNED] = _figures(cell, reference) | {"lr_at_grid_edge": at_grid_edge(rate, grid)}
            tuned = [row for name, row in rows.items() if name.endswith(TUNED)]
            for name in data["learned"]:
                cell = final(name, None)
                if cell is None:
                    continue
                figures = _figures(cell, reference)
                figures.update(judge(figures, rows.get(AS_WRITTEN), tuned, plan["higher_is_better"]))
                rows[name] = figures
                per_learned.setdefault(name, {}).setdefault(schedule, []).append(figures)
            loops[loop][schedule] = rows
    summary_targets = {
        name: {schedule: targets(judged) for schedule, judged in by_schedule.items()}
        for name, by_schedule in per_learned.items()
    }
    return {"loops": loops, "targets": summary_targets}

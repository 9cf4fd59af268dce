"""The benchmark suites and how they run: tune the baselines, then rerun everything on fresh seeds.

The protocol, per task, is ``PROTOCOL`` below (recorded in every results file).

Finished cells are cached in the results JSON and reused when their specification (and, for
learned optimizers, the SHA-256 of their weights) is unchanged, so an interrupted suite resumes
where it stopped.
"""

from __future__ import annotations

import json
import time
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

try:
    import fcntl
except ImportError:  # Windows: no lock, so one process per results file there
    fcntl = None

from learned_optim.factory import default_lr
from learned_optim.hub import list_pretrained
from learned_optim.provenance import environment

from .cache import write_cells
from .runner import EVAL_EXAMPLES, CellSpec, run_cell, weights_digest
from .tuning import best

SCHEMA = "learned_optim.bench.results/1"
# Recorded verbatim (whitespace collapsed) in every results file, and shown in results.md.
PROTOCOL = """\
1. **Tune.** Each baseline (SGD, SGD with momentum 0.9, Adam) trains with every learning rate of
   its log grid from ``tuning_seeds`` seeds (0, 1, …). For each reported step t it keeps the rate
   with the lowest mean *validation* loss at t (the half of the training images the optimizee
   does not train on); a rate with a diverged seed counts as infinite. A chosen rate at the edge
   of its grid is flagged in the table.
2. **Rerun.** Each baseline at its chosen rate(s), and each learned optimizer of the suite at
   its default lr (untuned: 1 for weights trained at that step, Celo2's 1e-3), trains from
   ``seeds`` fresh seeds (1000, 1001, …). The figures reported at step t come from the run at
   the rate chosen for t.
"""
TUNING_FIRST_SEED = 0
FINAL_FIRST_SEED = 1000
HALF_DECADES = (10.0, 3.0, 1.0, 0.3, 0.1, 0.03, 0.01, 0.003, 0.001, 0.0003)
BASELINE_GRIDS: dict[str, tuple[float, ...]] = {
    "sgd": HALF_DECADES[:6],  # 10 … 0.03
    "sgd-momentum": HALF_DECADES[2:8],  # 1 … 0.003
    "adam": HALF_DECADES[4:],  # 0.1 … 3e-4
}


@dataclass(frozen=True)
class TaskPlan:
    task: str
    steps: int
    report: tuple[int, ...]
    seeds: int
    tuning_seeds: int
    eval_examples: int = EVAL_EXAMPLES
    test_examples: int | None = None  # None: the whole test split


@dataclass(frozen=True)
class Suite:
    """``learned``: which pretrained weights run by default (a key of ``LEARNED_SELECTIONS``)."""

    name: str
    description: str
    plans: tuple[TaskPlan, ...]
    grids: dict[str, tuple[float, ...]] = field(default_factory=lambda: dict(BASELINE_GRIDS))
    learned: str = "every"


def _mlp(task: str, steps: int, report: tuple[int, ...], seeds: int, tuning_seeds: int) -> TaskPlan:
    return TaskPlan(task, steps, report, seeds, tuning_seeds)


SUITES: dict[str, Suite] = {
    suite.name: suite
    for suite in (
        Suite(
            "mnist",
            "the classic task: mnist-mlp (784-20-10 sigmoid), 5 seeds, 10000 steps",
            (_mlp("mnist-mlp", 10000, (100, 1000, 2000, 10000), 5, 2),),
        ),
        Suite(
            "transfer",
            "tasks the learned optimizers never saw: ReLU, deeper and wider MLPs, CNNs with BatchNorm, Fashion-MNIST",
            (
                _mlp("mnist-mlp-relu", 1000, (100, 1000), 5, 2),
                _mlp("mnist-mlp-2x20", 1000, (100, 1000), 5, 2),
                _mlp("mnist-mlp-40", 1000, (100, 1000), 5, 2),
                _mlp("fashion-mlp", 1000, (100, 1000), 5, 2),
                # The CNNs cost ~40x an MLP step on a CPU: a shorter horizon, fewer seeds.
                _mlp("mnist-cnn-bn", 300, (100, 300), 3, 2),
                _mlp("fashion-cnn", 300, (100, 300), 3, 2),
            ),
        ),
        # ResNet-50 (25.6M parameters) takes 3-5 s a step at batch 32 on 2 CPU cores: a budget of
        # 200 steps, 1 tuning and 2 final seeds, evaluated on samples (1024 examples, 2000 test
        # images), is about 4 hours, resumable cell by cell. --tasks cifar10-resnet50 where CIFAR-10
        # downloads.
        Suite(
            "resnet50",
            "torchvision ResNet-50 on Fashion-MNIST at 32x32x3, batch 32: 200 steps, 2 seeds (a CPU budget)",
            (TaskPlan("fashion-resnet50", 200, (50, 200), 2, 1, eval_examples=1024, test_examples=2000),),
            grids={"sgd-momentum": (0.1, 0.03, 0.01), "adam": (0.003, 0.001, 0.0003)},
            learned="recommended",
        ),
        Suite(
            "resnet50-gpu",
            "torchvision ResNet-50 on Fashion-MNIST at 32x32x3, batch 32: 3000 steps, 3 seeds (a GPU budget)",
            (TaskPlan("fashion-resnet50", 3000, (300, 1000, 3000), 3, 2),),
            grids={"sgd-momentum": (0.3, 0.1, 0.03, 0.01), "adam": (0.003, 0.001, 0.0003, 0.0001)},
            learned="recommended",
        ),
    )
}


REFERENCE = ("celo2-published",)  # the field's published weights: run beside ours whether recommended or not


def default_optimizers(which: str = "recommended") -> list[str]:
    """What a suite runs by default: ``learned_optimizers(which)`` and the reference weights found here."""
    chosen = learned_optimizers(which)
    every = learned_optimizers("every")
    return chosen + [name for name in REFERENCE if name in every and name not in chosen]


LEARNED_SELECTIONS = {
    "every": lambda recommendation: True,
    # Every weights file offered for use, recommended or not: what the product is today.
    "generalists": lambda recommendation: recommendation != "study object",
    "recommended": lambda recommendation: recommendation == "recommended",
}


def learned_optimizers(which: str = "every") -> list[str]:
    """The pretrained learned optimizers ``list_pretrained()`` finds: ``every`` one, the ``generalists``
    (all but the study objects) or the ``recommended`` ones."""
    if which not in LEARNED_SELECTIONS:
        raise ValueError(f"which learned optimizers: one of {', '.join(map(repr, LEARNED_SELECTIONS))}, not {which!r}")
    chosen = LEARNED_SELECTIONS[which]
    return [entry["name"] for entry in list_pretrained() if chosen(entry["recommendation"])]


def recommendations(names: list[str]) -> dict[str, str]:
    """``{name: recommendation}`` of the pretrained ones among ``names`` (study objects are marked in reports)."""
    listed = {entry["name"]: entry["recommendation"] for entry in list_pretrained()}
    return {name: listed[name] for name in names if listed.get(name)}


class Results:
    """The results JSON: cached cells plus what produced them; written atomically after each cell."""

    def __init__(self, path: Path, schema: str = SCHEMA) -> None:
        self.path = path
        self.data: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
        if self.data and self.data.get("schema") != schema:
            raise ValueError(f"{path}: schema {self.data.get('schema')!r} is not {schema!r}; use another --out")
        self.data.setdefault("schema", schema)
        self.cells: dict[str, Any] = self.data.setdefault("cells", {})

    def cached(self, key: str, spec: CellSpec, digest: str | None) -> dict[str, Any] | None:
        cell = self.cells.get(key)
        if cell is None:
            return None
        recorded = recorded_fields(cell, type(spec))
        same_spec = json.loads(json.dumps(recorded)) == json.loads(json.dumps(asdict(spec)))
        return cell if same_spec and cell.get("weights_sha256") == digest else None

    def write(self) -> None:
        """Write, first taking in the cells another process wrote since (under a lock), so that
        processes running disjoint loops or tasks can fill one results file side by side."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(self.path.name + ".lock"), "w") as lock:
            if fcntl is not None:
                fcntl.flock(lock, fcntl.LOCK_EX)
            if self.path.exists():
                on_disk = json.loads(self.path.read_text()).get("cells", {})
                self.cells.update({key: cell for key, cell in on_disk.items() if key not in self.cells})
            write_cells(self.path, self.data, self.cells)


def recorded_fields(cell: dict[str, Any], spec_type: type) -> dict[str, Any]:
    """The fields of ``spec_type`` a finished cell was computed with, as its JSON holds them (lists
    for tuples); a field added to the specification after the cell was computed reads at its default."""
    return {f.name: cell.get(f.name, None if f.default is MISSING else f.default) for f in fields(spec_type)}


def cell_key(phase: str, spec: CellSpec) -> str:
    return f"{phase}/{spec.task}/{spec.optimizer}@{spec.lr:g}/seeds={len(spec.seeds)}/steps={spec.steps}"


def _eval_sizes(plan: TaskPlan) -> dict[str, int | None]:
    return {"eval_examples": plan.eval_examples, "test_examples": plan.test_examples}


def _seeds(first: int, count: int) -> tuple[int, ...]:
    return tuple(range(first, first + count))


def chosen_rates(cells: dict[str, Any], plan: TaskPlan, baseline: str, grid: tuple[float, ...]) -> dict[int, float]:
    """``{reported step: the rate with the lowest mean validation loss there}`` from the tuning cells."""
    tuned = [
        cell
        for key, cell in cells.items()
        if key.startswith(f"tune/{plan.task}/{baseline}@")
        and cell["lr"] in grid
        and cell["steps"] == plan.steps
        and len(cell["seeds"]) == plan.tuning_seeds
    ]
    return {r: best(tuned, lambda c, r=r: c["at"][str(r)]["validation_loss"])["lr"] for r in plan.report}


def run_suite(
    suite: Suite,
    out: Path,
    optimizers: list[str] | None = None,
    baselines: list[str] | None = None,
    device: str = "cpu",
    progress: bool = True,
    command: str = "",
) -> Results:
    """Run (or resume) ``suite``, writing ``out/results.json`` after every cell."""
    results = Results(out / "results.json")
    learned = default_optimizers(suite.learned) if optimizers is None else optimizers
    baselines = list(suite.grids) if baselines is None else baselines
    unknown = [b for b in baselines if b not in suite.grids]
    if unknown:
        raise ValueError(
            f"no learning-rate grid for baselines {unknown} in suite {suite.name!r}: {sorted(suite.grids)}"
        )
    digests = {name: weights_digest(name) for name in learned}
    lrs = {name: default_lr(name) for name in learned}  # each learned optimizer untuned, at its own default
    results.data.update(
        suite=suite.name,
        description=suite.description,
        protocol=" ".join(PROTOCOL.split()),
        command=command or results.data.get("command", ""),
        environment=environment(device),
        plans=[asdict(p) for p in suite.plans],
        grids={b: list(suite.grids[b]) for b in baselines},
        learned=learned,
        learned_lrs=lrs,
        recommendations=recommendations(learned),
        baselines=baselines,
    )
    tuning = [
        CellSpec(plan.task, b, lr, _seeds(TUNING_FIRST_SEED, plan.tuning_seeds), plan.steps, plan.report,
                 metrics=("validation_loss",), **_eval_sizes(plan))
        for plan in suite.plans
        for b in baselines
        for lr in suite.grids[b]
    ]  # fmt: skip
    bar = tqdm(desc=f"bench {suite.name}", total=len(tuning), unit="cell", disable=not progress)

    def run(phase: str, spec: CellSpec, digest: str | None = None) -> None:
        key = cell_key(phase, spec)
        bar.set_postfix_str(key)
        if results.cached(key, spec, digest) is None:
            started = time.time()
            cell = run_cell(spec, device=device, progress=progress)
            cell.update(phase=phase, weights_sha256=digest, finished_at=time.strftime("%Y-%m-%dT%H:%M:%S"))
            cell["wall_seconds"] = time.time() - started
            results.cells[key] = cell
            results.write()
        bar.update()

    for spec in tuning:
        run("tune", spec)
    finals = []
    for plan in suite.plans:
        seeds = _seeds(FINAL_FIRST_SEED, plan.seeds)
        for b in baselines:
            for lr in sorted(set(chosen_rates(results.cells, plan, b, suite.grids[b]).values()), reverse=True):
                finals.append((CellSpec(plan.task, b, lr, seeds, plan.steps, plan.report, **_eval_sizes(plan)), None))
        finals += [
            (CellSpec(plan.task, name, lrs[name], seeds, plan.steps, plan.report, **_eval_sizes(plan)), digests[name])
            for name in learned
        ]
    bar.total = len(tuning) + len(finals)
    bar.refresh()
    for spec, digest in finals:
        run("final", spec, digest)
    bar.close()
    results.write()
    return results


def with_overrides(
    suite: Suite,
    tasks: list[str] | None = None,
    steps: int | None = None,
    report: list[int] | None = None,
    seeds: int | None = None,
    tuning_seeds: int | None = None,
) -> Suite:
    """``suite`` with some of its tasks, or another budget (the command line's overrides)."""
    plans = list(suite.plans)
    if tasks:
        by_name = {p.task: p for p in plans}
        template = plans[0]
        plans = [by_name.get(t, replace(template, task=t)) for t in tasks]
    changed = []
    for plan in plans:
        plan_steps = steps or plan.steps
        kept = {r for r in (report or plan.report) if r <= plan_steps}
        plan_report = tuple(sorted(kept if report else kept | {plan_steps}))
        changed.append(
            replace(
                plan,
                steps=plan_steps,
                report=plan_report,
                seeds=seeds or plan.seeds,
                tuning_seeds=tuning_seeds or plan.tuning_seeds,
            )
        )
    return replace(suite, plans=tuple(changed))

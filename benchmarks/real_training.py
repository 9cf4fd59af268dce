"""One cell of the ``real`` suite: an optimizer trains one loop from a few seeds, one ordinary run per seed.

Unlike ``benchmarks.runner``, nothing is stacked or functional: each seed builds its
``nn.Module``, draws minibatches, and runs ``loss.backward(); optimizer.step();
optimizer.zero_grad()`` (and ``scheduler.step()`` under a cosine schedule), as a user's script does.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch

from learned_optim.factory import make_optimizer

from .real_loops import ALL_LOOPS, Loop, LoopData, sample_batch

SCHEDULES = ("constant", "cosine")
BASELINE_FACTORIES = {"adam": "adam-foreach", "sgd-momentum": "sgd-momentum"}  # suite name -> factory name
DIVERGENCE_FACTOR = 10.0  # a minibatch loss above this multiple of the first one counts as diverged
FINAL_LOSS_FRACTION = 0.1  # the training loss reported is the mean minibatch loss over this last part
CURVE_POINTS = 200


@dataclass(frozen=True)
class RealCellSpec:
    """What to run. ``lr`` None: a learned optimizer's own default. ``data``: the data's source, so a
    changed corpus is not served from the cache."""

    loop: str
    optimizer: str
    lr: float | None
    schedule: str
    seeds: tuple[int, ...]
    steps: int
    data: str
    evaluate_test: bool = True

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule {self.schedule!r}: choose from {SCHEDULES}")
        if self.steps < 1 or not self.seeds:
            raise ValueError(f"a cell needs at least one step and one seed, got {self.steps} steps, {self.seeds}")


def build_optimizer(name: str, params: list[torch.nn.Parameter], lr: float | None) -> torch.optim.Optimizer:
    """A baseline (Adam with ``foreach=True``, SGD with momentum 0.9) or a learned optimizer.

    A learned optimizer is a pretrained name or Hub repo (``lo.load``) or an architecture name (a
    fresh network, e.g. ``celo2``); with ``lr`` None it keeps its own default.
    """
    return make_optimizer(BASELINE_FACTORIES.get(name, name), params, lr)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def train_one_seed(loop: Loop, data: LoopData, spec: RealCellSpec, seed: int, device: str) -> dict[str, Any]:
    """One ordinary training run; stops at divergence (the rest of the run counts as infinite loss)."""
    torch.manual_seed(seed)
    model = loop.build_model().to(device)
    optimizer = build_optimizer(spec.optimizer, list(model.parameters()), spec.lr)
    scheduler = (
        torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=spec.steps) if spec.schedule == "cosine" else None
    )
    batches = torch.Generator().manual_seed(seed)
    losses: list[float] = []
    step_seconds, optimizer_seconds = [], []
    diverged_at = None
    for step in range(1, spec.steps + 1):
        inputs, targets = (t.to(device) for t in sample_batch(loop, data, batches))
        _sync(device)
        started = time.perf_counter()
        loss = loop.loss(model(inputs), targets)
        loss.backward()
        _sync(device)
        stepping = time.perf_counter()
        optimizer.step()
        _sync(device)
        finished = time.perf_counter()
        optimizer.zero_grad()
        if scheduler is not None:
            scheduler.step()
        step_seconds.append(finished - started)
        optimizer_seconds.append(finished - stepping)
        value = loss.item()
        losses.append(value)
        if not math.isfinite(value) or value > DIVERGENCE_FACTOR * losses[0]:
            diverged_at = step
            break
    run: dict[str, Any] = {
        "lr": optimizer.param_groups[0]["lr"] if scheduler is None else scheduler.base_lrs[0],
        "diverged_at": diverged_at,
        "losses": losses,
        "step_seconds": statistics.median(step_seconds),
        "optimizer_step_seconds": statistics.median(optimizer_seconds),
    }
    if diverged_at is not None:
        worst = 0.0 if loop.higher_is_better else math.inf  # accuracy 0; bits per char or MSE infinite
        return run | {"train_loss": math.inf, "validation_loss": math.inf, "test_loss": math.inf, "test_metric": worst}
    tail = losses[-max(1, round(FINAL_LOSS_FRACTION * len(losses))) :]
    run["train_loss"] = sum(tail) / len(tail)
    validation_loss, _ = loop.evaluate(model, _to(data.validation, device))
    run["validation_loss"] = validation_loss if math.isfinite(validation_loss) else math.inf
    if spec.evaluate_test:
        run["test_loss"], run["test_metric"] = loop.evaluate(model, _to(data.test, device))
    return run


def _to(batch: tuple[torch.Tensor, torch.Tensor], device: str) -> tuple[torch.Tensor, torch.Tensor]:
    return batch[0].to(device), batch[1].to(device)


def _curve(runs: list[dict[str, Any]], steps: int) -> dict[str, list[float]]:
    """Moving-average training loss (window: 2% of the run), mean over seeds, at most ``CURVE_POINTS`` steps.

    Empty when any seed diverged: a curve over the surviving seeds would hide the failure.
    """
    if any(run["diverged_at"] is not None for run in runs):
        return {"step": [], "loss": []}
    window = max(1, steps // 50)
    curve = torch.tensor([run["losses"] for run in runs], dtype=torch.float64).mean(0)
    sums = torch.cat([torch.zeros(1, dtype=torch.float64), curve.cumsum(0)])
    ends = torch.arange(1, steps + 1)
    smooth = (sums[ends] - sums[(ends - window).clamp(min=0)]) / (ends - (ends - window).clamp(min=0))
    kept = torch.unique(torch.linspace(0, steps - 1, min(steps, CURVE_POINTS)).round().long())
    return {"step": (kept + 1).tolist(), "loss": [float(f"{v:.5g}") for v in smooth[kept].tolist()]}


def run_real_cell(spec: RealCellSpec, data: LoopData, device: str = "cpu") -> dict[str, Any]:
    """Train every seed of ``spec`` and return the cell: the spec's fields, per-seed figures, a curve, timings."""
    loop = ALL_LOOPS[spec.loop]
    started = time.perf_counter()
    runs = [train_one_seed(loop, data, spec, seed, device) for seed in spec.seeds]
    per_seed = ["train_loss", "validation_loss", "diverged_at", "step_seconds", "optimizer_step_seconds"]
    if spec.evaluate_test:
        per_seed += ["test_loss", "test_metric"]
    return {
        **{k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(spec).items()},
        "lr_used": runs[0]["lr"],
        **{key: [run[key] for run in runs] for key in per_seed},
        "curve": _curve(runs, spec.steps),
        "seconds": time.perf_counter() - started,
    }

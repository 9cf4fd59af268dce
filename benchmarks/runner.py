"""One benchmark cell: an optimizer at one learning rate on one task, trained from several seeds.

All seeds train at once: the parameters of the seeds' models are stacked along a leading seed
dimension and losses are computed per seed with ``torch.func.vmap``. Every optimizer here is
elementwise or coordinatewise, so ``optimizer.step()`` on the stacked tensors is exactly one
independent run per seed, through the same optimizer classes a user calls — except a per-tensor
optimizer (Celo2), whose statistics over a stacked tensor would mix the seeds: it gets one optimizer
per seed, over views of that seed's slice of the stacked tensors. BatchNorm running
statistics live in stacked buffers and are updated in place, per seed, as in ordinary training.

Data roles (see ``meta.tasks.images``): the optimizee trains on ``fit_split`` — by default the
``valid`` half of the training images, which meta-training never saw — and is measured at the
``report`` steps on a fixed sample of that data (``train_loss``), on a fixed sample of the other
half (``validation_loss``, used to tune baselines' learning rates) and on the whole test split
(``test_loss``, ``test_accuracy``). Evaluation uses the model in eval mode (BatchNorm running
statistics), as a user would evaluate it.
"""

from __future__ import annotations

import hashlib
import math
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor
from torch.func import functional_call, stack_module_state, vmap
from tqdm.auto import tqdm

from learned_optim.factory import FUSED_SUFFIX, make_optimizer
from learned_optim.meta.tasks import get_task

from . import memory

EVAL_EXAMPLES = 4096  # fixed samples for train and validation loss; the test split is used whole
EVAL_CHUNK = 1024  # examples per vmapped evaluation call, to bound activation memory
CURVE_POINTS = 500  # the smoothed curves keep at most this many steps
METRICS = ("train_loss", "validation_loss", "test_loss", "test_accuracy")
OTHER_HALF = {"valid": "train", "train": "valid"}


def weights_digest(name: str) -> str | None:
    """SHA-256 of a learned optimizer's weights file: a cached result is reused only for the same weights.

    None for an architecture name: a fresh network drawn from its fixed seed, always the same.
    """
    import learned_optim as lo

    name = name.removesuffix(FUSED_SUFFIX)  # the same weights, compiled
    if name in lo.ARCHITECTURES:
        return None
    return hashlib.sha256((lo.hub.resolve(name) / "model.safetensors").read_bytes()).hexdigest()


@dataclass(frozen=True)
class CellSpec:
    """What to run: ``seeds`` are model-initialisation and batch-order seeds, one run each."""

    task: str
    optimizer: str
    lr: float
    seeds: tuple[int, ...]
    steps: int
    report: tuple[int, ...]
    metrics: tuple[str, ...] = METRICS
    fit_split: str = "valid"
    # Evaluation sample sizes: train and validation losses on ``eval_examples`` fixed examples, the
    # test metrics on ``test_examples`` of the test split (None: all of it). Large models lower them.
    eval_examples: int = EVAL_EXAMPLES
    test_examples: int | None = None

    def __post_init__(self) -> None:
        if self.steps < 1 or not self.seeds:
            raise ValueError(f"a cell needs at least one step and one seed, got {self.steps} steps, {self.seeds}")
        unknown = set(self.metrics) - set(METRICS)
        if unknown:
            raise ValueError(f"unknown metrics {sorted(unknown)}; choose from {METRICS}")
        if any(r < 1 or r > self.steps for r in self.report):
            raise ValueError(f"report steps {self.report} must lie in 1..{self.steps}")


def _fixed_sample(data: tuple[Tensor, Tensor], examples: int | None) -> tuple[Tensor, Tensor]:
    inputs, targets = data
    if examples is None or examples >= len(inputs):
        return inputs, targets
    index = torch.randperm(len(inputs), generator=torch.Generator().manual_seed(7))[:examples]
    return inputs[index], targets[index]


def _moving_average(curve: Tensor, window: int) -> Tensor:
    """Trailing mean over ``window`` steps (fewer at the start) of a (steps, seeds) curve."""
    sums = torch.cat([torch.zeros_like(curve[:1]), curve.cumsum(0)])
    ends = torch.arange(1, len(curve) + 1)
    starts = (ends - window).clamp(min=0)
    return (sums[ends] - sums[starts]) / (ends - starts).unsqueeze(1)


class PerSeedOptimizers:
    """One optimizer per seed over views of seed s's slice of the stacked parameters (in place)."""

    def __init__(self, name: str, params: list[torch.nn.Parameter], seeds: int, lr: float) -> None:
        self.params = params
        self.views = [[torch.nn.Parameter(p.data[seed]) for p in params] for seed in range(seeds)]
        self.optimizers = [make_optimizer(name, views, lr=lr) for views in self.views]

    @property
    def state(self) -> dict[Tensor, dict[str, Any]]:
        return {p: s for optimizer in self.optimizers for p, s in optimizer.state.items()}

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    def step(self) -> None:
        for seed, (views, optimizer) in enumerate(zip(self.views, self.optimizers, strict=True)):
            for view, p in zip(views, self.params, strict=True):
                view.grad = None if p.grad is None else p.grad[seed]
            optimizer.step()


def _rounded(values: list[float]) -> list[float]:
    return [v if not math.isfinite(v) else float(f"{v:.5g}") for v in values]


def run_cell(spec: CellSpec, device: str = "cpu", progress: bool = False) -> dict[str, Any]:
    """Train ``spec`` and return its record: per-step curves, metrics at the report steps, cost."""
    task = get_task(spec.task)
    if getattr(task, "split_data", None) is None:
        raise ValueError(f"task {spec.task!r} has no labelled evaluation data; benchmarks need a classifier task")
    modules = [task.make_module(torch.Generator().manual_seed(seed)) for seed in spec.seeds]
    stacked_params, buffers = stack_module_state(modules)
    params = [torch.nn.Parameter(p.detach().to(device)) for p in stacked_params.values()]
    buffers = {name: b.to(device) for name, b in buffers.items()}
    names = list(stacked_params)
    template = task.template.to(device)

    def outputs(param_values, buffer_values, x):
        return functional_call(template, {**dict(zip(names, param_values, strict=True)), **buffer_values}, (x,))

    def train_loss(param_values, buffer_values, x, y):
        return task.loss_fn(outputs(param_values, buffer_values, x), y)

    def eval_sums(param_values, buffer_values, x, y):
        logits = outputs(param_values, buffer_values, x)
        loss = torch.nn.functional.cross_entropy(logits, y, reduction="sum")
        return loss, (logits.argmax(-1) == y).sum()

    per_seed_loss = vmap(train_loss)
    per_seed_eval = vmap(eval_sums, in_dims=(0, 0, None, None))
    eval_data = {
        "train": _fixed_sample(task.split_data(spec.fit_split), spec.eval_examples),
        "validation": _fixed_sample(task.split_data(OTHER_HALF[spec.fit_split]), spec.eval_examples),
        "test": _fixed_sample(task.split_data("test"), spec.test_examples),
    }

    def evaluate(split: str) -> tuple[list[float], list[float]]:
        inputs, targets = eval_data[split]
        loss, correct = torch.zeros(len(spec.seeds), device=device), torch.zeros(len(spec.seeds), device=device)
        template.eval()
        with torch.no_grad():
            for start in range(0, len(inputs), EVAL_CHUNK):
                x = inputs[start : start + EVAL_CHUNK].to(device)
                y = targets[start : start + EVAL_CHUNK].to(device)
                chunk_loss, chunk_correct = per_seed_eval(params, buffers, x, y)
                loss += chunk_loss
                correct += chunk_correct
        template.train()
        loss = torch.where(torch.isfinite(loss), loss, torch.full_like(loss, math.inf))
        return (loss / len(inputs)).tolist(), (correct / len(inputs)).tolist()

    optimizer = make_optimizer(spec.optimizer, params, lr=spec.lr)
    if getattr(optimizer, "per_tensor", False):
        optimizer = PerSeedOptimizers(spec.optimizer, params, len(spec.seeds), spec.lr)
    batch_generators = [torch.Generator().manual_seed(seed) for seed in spec.seeds]
    losses, step_seconds, reported = [], [], {}
    diverged_at: list[int | None] = [None] * len(spec.seeds)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    bar = tqdm(total=spec.steps, desc=f"{spec.task} {spec.optimizer}@{spec.lr:g}", leave=False, disable=not progress)
    # Peak memory of the training steps (evaluation excluded): the parameters plus the most a step
    # holds beyond what the process held before the first one (gradients, optimizer state,
    # activations, transients); on CUDA, the allocator's peak, parameters included.
    held_before = memory.current_bytes(device)
    step_peaks: list[int] = []
    started = time.perf_counter()
    for step in range(1, spec.steps + 1):
        batches = [task.sample(g, spec.fit_split) for g in batch_generators]
        x = torch.stack([b[0] for b in batches]).to(device)
        y = torch.stack([b[1] for b in batches]).to(device)
        memory.reset_peak(device)
        step_start = time.perf_counter()
        loss = per_seed_loss(params, buffers, x, y)
        optimizer.zero_grad()
        loss.sum().backward()
        optimizer.step()
        sync()
        step_seconds.append(time.perf_counter() - step_start)
        if held_before is not None:
            step_peaks.append(memory.peak_bytes(device))
        loss = loss.detach()
        finite = torch.stack([torch.isfinite(p.detach()).flatten(1).all(1) for p in params]).all(0)
        finite &= torch.isfinite(loss)
        for seed_index, ok in enumerate(finite.tolist()):
            if not ok and diverged_at[seed_index] is None:
                diverged_at[seed_index] = step
        live = torch.tensor([d is None for d in diverged_at], device=loss.device)
        losses.append(torch.where(live, loss, torch.full_like(loss, math.inf)).cpu())
        if step in spec.report:
            reported[str(step)] = _measure(spec.metrics, evaluate, diverged_at)
        bar.update()
        if not live.any():
            break  # every seed diverged: the remaining steps count as infinite loss
    bar.close()
    curve = torch.stack(losses)  # (steps run, seeds)
    missing = spec.steps - len(curve)
    curve = torch.cat([curve, torch.full((missing, len(spec.seeds)), math.inf)])
    for r in spec.report:
        reported.setdefault(str(r), {m: [math.inf if "loss" in m else 0.0] * len(spec.seeds) for m in spec.metrics})
    state_bytes = sum(
        v.numel() * v.element_size() for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v)
    )
    if not step_peaks:
        peak = None
    elif device.startswith("cuda"):
        peak = max(step_peaks)
    else:
        peak = sum(p.numel() * p.element_size() for p in params) + max(0, max(step_peaks) - held_before)
    return {
        **{k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(spec).items()},
        "seconds": time.perf_counter() - started,
        "step_seconds": statistics.median(step_seconds),
        "state_bytes_per_run": state_bytes // len(spec.seeds),
        "parameters_per_run": sum(p[0].numel() for p in params),
        "peak_bytes": peak,
        "diverged_at": diverged_at,
        "train_loss_curve": _rounded(curve.mean(1).tolist()),
        "smoothed_curve": _smoothed(curve),
        "at": reported,
    }


def _measure(metrics, evaluate, diverged_at) -> dict[str, list[float]]:
    values: dict[str, list[float]] = {}
    for split in ("train", "validation", "test"):
        wanted = [m for m in metrics if m.startswith(split)]
        if not wanted:
            continue
        loss, accuracy = evaluate(split)
        for metric in wanted:
            values[metric] = loss if metric.endswith("loss") else accuracy
    for metric, per_seed in values.items():  # diverged seeds: infinite loss, zero accuracy
        bad = math.inf if metric.endswith("loss") else 0.0
        values[metric] = [bad if d is not None else v for v, d in zip(per_seed, diverged_at, strict=True)]
    return values


def _smoothed(curve: Tensor) -> dict[str, list[float]]:
    """Mean and std over the seeds that never diverged of each seed's moving-average loss."""
    steps = len(curve)
    finite_seeds = torch.isfinite(curve).all(0)
    window = max(1, steps // 50)
    kept = torch.unique(torch.linspace(0, steps - 1, min(steps, CURVE_POINTS)).round().long())
    if not finite_seeds.any():
        return {"window": window, "step": [], "mean": [], "std": [], "seeds": 0}
    smooth = _moving_average(curve[:, finite_seeds].double(), window)[kept]
    std = smooth.std(1) if smooth.shape[1] > 1 else torch.zeros(len(kept))
    return {
        "window": window,
        "step": (kept + 1).tolist(),
        "mean": _rounded(smooth.mean(1).tolist()),
        "std": _rounded(std.tolist()),
        "seeds": int(finite_seeds.sum()),
    }

"""Symbolic distillation (Zheng et al. 2022): record a trained optimizer, fit closed-form rules, pick one.

1. ``record``: run the teacher (its pure ``update``, as at runtime) on task instances (of one task,
   or each drawn from a task distribution, as the teacher was meta-trained) and log, for
   coordinates sampled from every parameter tensor at every step, all symbolic inputs
   (``learned_optim.optimizers.symbolic.INPUTS``, computed by the same code the ``Symbolic``
   optimizer runs) and the teacher's direction d_t. Saved as a versioned safetensors dataset.
2. ``fit``: a regression backend returns a Pareto front of rules (size against error) over the
   chosen inputs; every candidate is scored by R² on held-out trajectories (never seen by the fit).
3. ``select``: the smallest rule within ``tolerance`` of the best held-out R², simplified by sympy
   when that keeps its predictions.

With ``sign_symmetric``, every row counts twice, as recorded and with its gradient and direction
negated (``sign_mirrored``), in the search and in the scores: the rules fit the teacher's odd part,
d(−g) = −d(g), the symmetry that SGD and Adam keep. A teacher whose direction is not exactly odd (a
learned network's bias terms) would otherwise hand the rule a constant term, a drift of every
trained coordinate by the same amount each step whatever its gradient.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import safetensors
import safetensors.torch
import torch
from torch import Tensor
from tqdm.auto import tqdm

from learned_optim.expression import Rule
from learned_optim.hub import Pretrained
from learned_optim.meta import sympy_rules
from learned_optim.meta.inner_step import optimizer_step
from learned_optim.meta.regression import RegressionBackend, SearchSettings
from learned_optim.meta.tasks import TASK_DISTRIBUTIONS, get_task
from learned_optim.meta.unroll import apply_direction, flat_gradient, start
from learned_optim.optimizers import get_architecture
from learned_optim.optimizers.symbolic import ACCUMULATORS, INPUTS, SymbolicConfig, advance

DATASET_FORMAT = "learned_optim-distill-dataset-1"


@dataclass
class Dataset:
    """Recorded (inputs → teacher direction) rows; ``columns`` name the columns of ``inputs``."""

    columns: list[str]
    inputs: Tensor  # (rows, columns), float64
    target: Tensor  # (rows,), the teacher's direction d_t
    trajectory: Tensor  # (rows,), which task instance a row comes from
    step: Tensor  # (rows,), 1-based step
    metadata: dict[str, Any] = field(default_factory=dict)

    def column(self, name: str) -> Tensor:
        return self.inputs[:, self.columns.index(name)]

    def sign_mirrored(self) -> Dataset:
        """The rows as recorded followed by the same rows with every gradient negated: the inputs that flip
        with the gradient (``Input.odd``) and the direction change sign, the others (1/t) stay."""
        signs = torch.tensor([-1.0 if INPUTS[name].odd else 1.0 for name in self.columns], dtype=self.inputs.dtype)
        return Dataset(
            self.columns,
            torch.cat([self.inputs, self.inputs * signs]),
            torch.cat([self.target, -self.target]),
            self.trajectory.repeat(2),
            self.step.repeat(2),
            {**self.metadata, "sign_mirrored": True},
        )

    def heldout_mask(self, fraction: float) -> Tensor:
        """Rows of the last ``fraction`` of trajectories: whole trajectories, so held-out rows are unseen."""
        trajectories = int(self.trajectory.max()) + 1
        first_heldout = trajectories - max(1, math.ceil(fraction * trajectories))
        if first_heldout < 1:
            raise ValueError(f"held-out fraction {fraction} leaves no training trajectory of {trajectories}")
        return self.trajectory >= first_heldout

    def save(self, path: str | Path) -> None:
        tensors = {"inputs": self.inputs, "target": self.target, "trajectory": self.trajectory, "step": self.step}
        metadata = {
            "format": DATASET_FORMAT,
            "columns": json.dumps(self.columns),
            "metadata": json.dumps(self.metadata),
        }
        safetensors.torch.save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=metadata)

    @classmethod
    def load(cls, path: str | Path) -> Dataset:
        with safetensors.safe_open(str(path), framework="pt") as handle:
            header = handle.metadata() or {}
            if header.get("format") != DATASET_FORMAT:
                raise ValueError(f"{path}: not a {DATASET_FORMAT} file (format {header.get('format')!r})")
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 - safe_open has no iterator
        return cls(
            json.loads(header["columns"]),
            tensors["inputs"],
            tensors["target"],
            tensors["trajectory"],
            tensors["step"],
            json.loads(header["metadata"]),
        )


class _Recorder:
    """Collects rows step by step: the recorded inputs and directions of some coordinates."""

    def __init__(self, names: Sequence[str]) -> None:
        self.names = list(names)
        self.parts: dict[str, list[Tensor]] = {"inputs": [], "target": [], "trajectory": [], "step": []}

    def add(self, inputs: dict[str, Tensor], direction: Tensor, trajectory: int, step: int) -> None:
        # broadcast_to: an input shared by all coordinates (inv_step) is one 0-dim tensor.
        columns = [inputs[name].broadcast_to(direction.shape) for name in self.names]
        self.parts["inputs"].append(torch.stack(columns, dim=1).double())
        self.parts["target"].append(direction.double())
        self.parts["trajectory"].append(torch.full((len(direction),), trajectory))
        self.parts["step"].append(torch.full((len(direction),), step))

    def dataset(self, metadata: dict[str, Any]) -> Dataset:
        tensors = (torch.cat(self.parts[key]) for key in ("inputs", "target", "trajectory", "step"))
        return Dataset(self.names, *tensors, metadata)


def record(
    teacher: Pretrained,
    task: str = "mnist-mlp",
    *,
    trajectories: int = 10,
    steps: int = 200,
    coordinates_per_tensor: int = 16,
    seed: int = 0,
    beta1: float = 0.95,
    beta2: float = 0.95,
    eps: float = 1e-8,
    data_root: str | None = None,
    progress_bar: bool = True,
) -> Dataset:
    """Run ``teacher`` on ``trajectories`` fresh instances of the task for ``steps`` steps and record.

    ``task`` names one task or a task distribution; with a distribution every trajectory is a new
    instance drawn from ``seed``, so the held-out trajectories are instances the fit never saw.
    """
    architecture = get_architecture(teacher.architecture)
    task_name, distribution = task, TASK_DISTRIBUTIONS.get(task)
    fixed_task = None if distribution else get_task(task, data_root)
    feature_config = SymbolicConfig(beta1=beta1, beta2=beta2, eps=eps)
    names = list(INPUTS)
    generator = torch.Generator().manual_seed(seed)
    recorder = _Recorder(names)
    bar = tqdm(
        total=trajectories * steps, desc=f"record {teacher.architecture} on {task_name}", disable=not progress_bar
    )
    for trajectory in range(trajectories):
        instance = fixed_task or distribution.draw(generator, data_root)
        inner = start(architecture, teacher.config, instance, generator)
        params, opt_state = inner.params, inner.opt_state
        sizes = [params[name].numel() for name in instance.parameter_names]
        offsets = np.cumsum([0, *sizes[:-1]]).tolist()
        accumulators = {name: torch.zeros(sum(sizes)) for name in ACCUMULATORS}
        for step in range(1, steps + 1):
            params = {k: v.detach().requires_grad_(k in instance.parameter_names) for k, v in params.items()}
            loss = instance.loss(params, instance.sample(generator, "train"))
            grad = flat_gradient(instance, loss, params)
            with torch.no_grad():
                direction, opt_state = optimizer_step(
                    architecture,
                    teacher.theta,
                    teacher.config,
                    grad,
                    opt_state,
                    torch.tensor(float(step)),
                    names=instance.parameter_names,
                    params=params,
                )
                inputs, accumulators = advance(grad, accumulators, step, feature_config, tuple(names))
                index = torch.cat(
                    [
                        offset + torch.randperm(size, generator=generator)[:coordinates_per_tensor]
                        for offset, size in zip(offsets, sizes, strict=True)
                    ]
                )
                rows = {name: inputs[name].broadcast_to(grad.shape)[index] for name in names}
                recorder.add(rows, direction[index], trajectory, step)
                params = apply_direction(instance, params, direction, 1.0)
            bar.update()
    bar.close()
    metadata = {
        "task": task_name,
        "trajectories": trajectories,
        "steps": steps,
        "coordinates_per_tensor": coordinates_per_tensor,
        "seed": seed,
        "beta1": beta1,
        "beta2": beta2,
        "eps": eps,
        "teacher_architecture": teacher.architecture,
        "teacher_description": teacher.description,
    }
    return recorder.dataset(metadata)


Teacher = Callable[[Tensor, dict[str, Tensor]], tuple[Tensor, dict[str, Tensor]]]


def record_synthetic(
    teacher: Teacher,
    *,
    coordinates: int = 2000,
    steps: int = 40,
    trajectories: int = 5,
    seed: int = 0,
    beta1: float = 0.9,
    beta2: float = 0.999,
    eps: float = 1e-8,
) -> Dataset:
    """Record a hand-written ``teacher(g, state) -> (direction, state)`` on synthetic gradient streams.

    Each coordinate's gradients are g_t = s · (μ + ξ_t): a scale s log-uniform in [1e-3, 1], a
    drift μ ~ N(0, 0.25), noise ξ_t ~ N(0, 1). Used to check that distillation recovers known rules.
    """
    generator = torch.Generator().manual_seed(seed)
    feature_config = SymbolicConfig(beta1=beta1, beta2=beta2, eps=eps)
    names = tuple(INPUTS)
    recorder = _Recorder(names)
    for trajectory in range(trajectories):
        scale = 10.0 ** (-3.0 * torch.rand(coordinates, generator=generator, dtype=torch.float64))
        drift = 0.5 * torch.randn(coordinates, generator=generator, dtype=torch.float64)
        accumulators = {name: torch.zeros(coordinates, dtype=torch.float64) for name in ACCUMULATORS}
        state: dict[str, Tensor] = {}
        for step in range(1, steps + 1):
            g = scale * (drift + torch.randn(coordinates, generator=generator, dtype=torch.float64))
            direction, state = teacher(g, state)
            inputs, accumulators = advance(g, accumulators, step, feature_config, names)
            recorder.add(inputs, direction, trajectory, step)
    metadata = {"task": "synthetic", "trajectories": trajectories, "steps": steps, "seed": seed}
    metadata.update(beta1=beta1, beta2=beta2, eps=eps, coordinates_per_tensor=coordinates)
    return recorder.dataset(metadata)


def r2_score(prediction: Tensor, target: Tensor) -> float:
    """Coefficient of determination 1 − SSE/SST (−inf for non-finite predictions)."""
    prediction = prediction.double().broadcast_to(target.shape)
    if not bool(torch.isfinite(prediction).all()):
        return -math.inf
    total = ((target - target.mean()) ** 2).sum()
    return float(1.0 - ((prediction - target) ** 2).sum() / total)


def predict(rule: Rule, dataset: Dataset, mask: Tensor | None = None) -> Tensor:
    """The rule's output on the dataset's rows (all, or those in ``mask``)."""
    inputs = dataset.inputs if mask is None else dataset.inputs[mask]
    with torch.no_grad():
        return rule.evaluate({name: inputs[:, dataset.columns.index(name)] for name in rule.inputs})


@dataclass(frozen=True)
class Candidate:
    """One rule of the Pareto front with its scores."""

    rule: Rule
    train_r2: float
    heldout_r2: float

    @property
    def size(self) -> int:
        return self.rule.size()

    def summary(self) -> dict[str, Any]:
        return {
            "size": self.size,
            "train_r2": self.train_r2,
            "heldout_r2": self.heldout_r2,
            "formula": self.rule.infix(),
        }


@dataclass(frozen=True)
class Distillation:
    """The scored Pareto front and the chosen rule."""

    candidates: list[Candidate]
    chosen: Candidate
    inputs: list[str]


def fit(
    dataset: Dataset,
    inputs: Sequence[str],
    backend: RegressionBackend,
    settings: SearchSettings,
    *,
    heldout_fraction: float = 0.2,
    max_rows: int = 20000,
    tolerance: float = 0.01,
    sign_symmetric: bool = False,
) -> Distillation:
    """Fit rules of ``inputs`` to the teacher's directions and select one (see module docstring)."""
    unknown = sorted(set(inputs) - set(dataset.columns))
    if unknown:
        raise ValueError(f"inputs {unknown} are not recorded; the dataset has {dataset.columns}")
    train_rows = torch.nonzero(~dataset.heldout_mask(heldout_fraction)).squeeze(1)
    generator = torch.Generator().manual_seed(settings.seed)
    sampled = max_rows // 2 if sign_symmetric else max_rows
    fit_rows = train_rows[torch.randperm(len(train_rows), generator=generator)[:sampled]]
    if sign_symmetric:  # each sampled row with its mirror: the intercept an odd rule needs is exactly 0
        fit_rows = torch.cat([fit_rows, fit_rows + len(dataset.target)])
        dataset = dataset.sign_mirrored()
    heldout = dataset.heldout_mask(heldout_fraction)
    columns = [dataset.columns.index(name) for name in inputs]
    front = backend.fit(
        dataset.inputs[fit_rows][:, columns].numpy(), dataset.target[fit_rows].numpy(), list(inputs), settings
    )
    candidates = [score(Rule.from_json(tree, INPUTS), dataset, heldout) for tree in front]
    candidates = [c for c in candidates if math.isfinite(c.heldout_r2) and finite_at_zero(c.rule)]
    if not candidates:
        raise RuntimeError("the regression returned no rule that is finite on the held-out rows and at zero inputs")
    chosen = tidy(select(candidates, tolerance), dataset, heldout)
    return Distillation(sorted(candidates, key=lambda c: c.size), chosen, list(inputs))


def finite_at_zero(rule: Rule) -> bool:
    """A rule must stay finite where every input is zero (a coordinate whose gradient is exactly zero)."""
    zeros = torch.zeros(1, dtype=torch.float64)
    with torch.no_grad():
        return bool(torch.isfinite(rule.evaluate({name: zeros for name in rule.inputs})).all())


def score(rule: Rule, dataset: Dataset, heldout: Tensor) -> Candidate:
    """R² of ``rule`` on the training and the held-out rows."""
    return Candidate(
        rule,
        r2_score(predict(rule, dataset, ~heldout), dataset.target[~heldout]),
        r2_score(predict(rule, dataset, heldout), dataset.target[heldout]),
    )


def select(candidates: Sequence[Candidate], tolerance: float) -> Candidate:
    """The smallest candidate whose held-out R² is within ``tolerance`` of the best."""
    best = max(c.heldout_r2 for c in candidates)
    return min((c for c in candidates if c.heldout_r2 >= best - tolerance), key=lambda c: (c.size, -c.heldout_r2))


def _no_worse(new: Candidate, old: Candidate, relative: float = 1e-3) -> bool:
    """``new`` leaves at most ``relative`` more of the held-out variance unexplained than ``old``."""
    return (1.0 - new.heldout_r2) <= (1.0 - old.heldout_r2) * (1.0 + relative) + 1e-12


def tidy(candidate: Candidate, dataset: Dataset, heldout: Tensor, max_digits: int = 6) -> Candidate:
    """Make the rule readable without losing fit: drop constants that do not matter (Operon always
    adds an intercept and a scale), let sympy fold and cancel, then round the constants to the
    fewest significant digits that keep the fit. Each change is kept only if the held-out fit stays."""
    for index in range(len(candidate.rule.constants)):
        zeroed = list(candidate.rule.constants)
        zeroed[index] = 0.0
        trial = score(candidate.rule.with_constants(zeroed), dataset, heldout)
        if _no_worse(trial, candidate):
            candidate = trial
    simplified = score(sympy_rules.simplify(candidate.rule), dataset, heldout)
    if _no_worse(simplified, candidate):
        candidate = simplified
    for digits in range(1, max_digits + 1):  # after simplifying: folded constants are rounded too
        rounded = [float(f"{c:.{digits}g}") for c in candidate.rule.constants]
        trial = score(candidate.rule.with_constants(rounded), dataset, heldout)
        if _no_worse(trial, candidate):
            return trial
    return candidate

"""Meta-training: outer Adam over the learned network's weights φ, truncated BPTT over unrolls.

One meta-epoch runs ``trajectories_per_epoch`` task instances for the current horizon T, each in
T/K unrolls of K steps; after each unroll, φ takes one Adam step on the unroll's meta-loss
(clipped gradient norm). After each epoch the network is validated on fixed task instances from
the ``valid`` split; the best weights are kept. With several ``horizons`` (a curriculum), training
moves to the next horizon when validation has not improved for ``patience`` epochs, or after
``max_epochs_per_horizon`` epochs there. A resumed run may change only its schedule
(``SCHEDULE_FIELDS``: how many epochs, when the curriculum moves), never what it has already done.

Optionally, ``imitation_epochs`` first train the network to reproduce a teacher (SGD, momentum,
Adam), ``rescale`` randomly rescales optimizee parameters (Lv et al. 2017), and
``symmetry_weight`` adds a penalty on the updates' breaking of the task network's symmetries
(``learned_optim.diagnostics``) to every meta-loss term.

``task`` names one task or a task distribution (``learned_optim.meta.tasks.distributions``). With
a distribution, every trajectory draws its own instance from the trainer's generator, and
validation runs ``validation_trajectories`` instances drawn from a fixed seed, each scored by its
loss relative to its loss at initialisation (``validate``).

``estimator`` chooses the meta-gradient: ``"tbptt"`` backpropagates through each unroll;
``"pes"`` (``learned_optim.meta.pes``) estimates the gradient of the whole trajectory from
``pes_particles`` antithetic pairs of perturbations of scale ``pes_sigma``, with no backward pass
through the unroll. ``tasks_per_step`` > 1 runs that many task instances in each meta-step and
averages their meta-gradients. Instances of one task (a named task, or a distribution with
``same_spec_per_step``) run as one stacked unroll (``learned_optim.meta.stacked``: vmapped losses,
one update for all) when ``stack_task_instances`` is on, the estimator is ``tbptt`` and there is no
``symmetry_weight``; otherwise one after another. Both give the same meta-gradient, in float rounding.

Everything needed to continue is checkpointed atomically after every trajectory (φ, the outer
Adam, the random generator, the curriculum position): a run killed at any moment resumes with
``resume=True`` and ends with the same weights as an uninterrupted run. A trajectory is the unit:
one interrupted mid-way is run again from its start (its task instances and, for PES, its
particles and ξ are drawn again from the restored generator), so no estimator state needs saving.

Launched by ``torchrun`` with ``--distributed``, each rank unrolls its own task instances and the
meta-gradients are averaged (``learned_optim.meta.distributed``); a meta-step then covers one
trajectory per rank.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch import Tensor
from tqdm.auto import tqdm

from learned_optim.base import config_from_dict
from learned_optim.errors import WeightsError
from learned_optim.meta import distributed, imitation, pes
from learned_optim.meta.coordinate_split import CoordinateThreads, split_unroll
from learned_optim.meta.stacked import stack_inner_states, stacked_unroll
from learned_optim.meta.tasks import TASK_DISTRIBUTIONS, TASKS, get_task
from learned_optim.meta.tasks.distributions import build_task
from learned_optim.meta.tasks.rescaled import RescaledTask
from learned_optim.meta.teachers import TEACHERS
from learned_optim.meta.unroll import InnerState, compiled, meta_loss, start, unroll
from learned_optim.optimizers import get_architecture
from learned_optim.provenance import git_commit
from learned_optim.validation import check_non_negative, check_positive

CHECKPOINT_NAME = "checkpoint.safetensors"
METRICS_NAME = "metrics.jsonl"
_CHECKPOINT_FORMAT = "learned_optim-checkpoint-1"
ESTIMATORS = ("tbptt", "pes")
VALIDATION_SCORES = ("mean", "final")
FINAL_FRACTION = 0.1  # "final": the last tenth of the horizon, the benchmarks' training-loss window


@dataclass(frozen=True)
class MetaTrainConfig:
    """A meta-training recipe; stored as JSON in ``configs/`` and in the weights' ``config.json``."""

    architecture: str = "lstm"
    optimizer_config: dict[str, Any] = field(default_factory=dict)
    task: str = "mnist-mlp"
    horizons: list[int] = field(default_factory=lambda: [100])
    unroll: int = 20
    meta_epochs: int = 50
    trajectories_per_epoch: int = 20
    meta_lr: float = 1e-3
    grad_clip: float = 1.0
    weighting: str = "mean"
    # PES only: truncations that end before this fraction of the horizon still run (the perturbations
    # persist through them) but take no meta-step, so φ is trained for the end of a run. 0: all do.
    meta_loss_from: float = 0.0
    inner_lr: float = 1.0
    second_order: bool = False
    validation_trajectories: int = 4
    validation_horizon: int = 0
    validation_score: str = "mean"  # or "final": the loss over the horizon's last tenth, as users judge a run
    patience: int = 3
    max_epochs_per_horizon: int = 0  # > 0: move to the next horizon after this many epochs, improving or not
    rescale: float = 0.0
    symmetry_weight: float = 0.0
    imitation_teacher: str = ""
    imitation_lr: float = 0.01
    imitation_epochs: int = 0
    estimator: str = "tbptt"  # or "pes": persistent evolution strategies (learned_optim.meta.pes)
    pes_particles: int = 8  # antithetic pairs per task instance
    pes_sigma: float = 0.01  # standard deviation of PES's perturbations of φ
    tasks_per_step: int = 1  # task instances whose meta-gradients each meta-step averages
    same_spec_per_step: bool = False  # a distribution's instances in one meta-step share one drawn spec
    stack_task_instances: bool = True  # instances of one task run as one stacked (vmapped) unroll
    compile: bool = False  # torch.compile each inner step's update (unroll.compiled): faster, same math
    initial_weights: str = ""  # start from these weights (name or directory), e.g. to meta-tune a distilled rule
    # Names of the weights meta-training updates, a name ending in "_" standing for every weight it
    # begins (["scale_"]: Celo2's step-scale network); the others stay as they start. Empty: all.
    meta_train_only: list[str] = field(default_factory=list)
    seed: int = 0
    description: str = ""

    def __post_init__(self) -> None:
        get_architecture(self.architecture, "MetaTrainConfig.architecture")
        if self.task not in TASKS and self.task not in TASK_DISTRIBUTIONS:
            raise ValueError(
                f"Invalid task: {self.task!r}; choose a task from {sorted(TASKS)} "
                f"or a task distribution from {sorted(TASK_DISTRIBUTIONS)}"
            )
        names = ("unroll", "trajectories_per_epoch", "validation_trajectories", "patience")
        for name in (*names, "pes_particles", "tasks_per_step"):
            check_positive(name, getattr(self, name))
        schedule = ("meta_epochs", "imitation_epochs", "validation_horizon", "max_epochs_per_horizon")
        for name in (*schedule, "rescale", "symmetry_weight"):
            check_non_negative(name, getattr(self, name))
        check_positive("meta_lr", self.meta_lr)
        check_positive("grad_clip", self.grad_clip)
        check_positive("imitation_lr", self.imitation_lr)
        check_positive("pes_sigma", self.pes_sigma)
        check_non_negative("inner_lr", self.inner_lr)
        if not self.horizons or any(not h > 0 or h % self.unroll for h in self.horizons):
            raise ValueError(f"Invalid horizons: {self.horizons}; each must be a multiple of unroll={self.unroll}")
        if self.imitation_epochs and self.imitation_teacher not in TEACHERS:
            raise ValueError(f"imitation_epochs needs imitation_teacher, one of {TEACHERS}")
        if self.symmetry_weight and self.rescale:
            raise ValueError("symmetry_weight and rescale cannot be combined")
        if self.estimator not in ESTIMATORS:
            raise ValueError(f"Invalid estimator: {self.estimator!r}; choose from {ESTIMATORS}")
        if self.estimator == "pes" and (self.second_order or self.symmetry_weight):
            raise ValueError("estimator 'pes' runs no backward pass: second_order and symmetry_weight need 'tbptt'")
        if self.symmetry_weight and self.task in TASK_DISTRIBUTIONS:
            raise ValueError("symmetry_weight needs one task: the symmetries are found in its network")
        if self.validation_score not in VALIDATION_SCORES:
            raise ValueError(f"Invalid validation_score: {self.validation_score!r}; choose from {VALIDATION_SCORES}")
        if not 0 <= self.meta_loss_from < 1:
            raise ValueError(f"Invalid meta_loss_from: {self.meta_loss_from}; a fraction of the horizon in [0, 1)")
        if self.meta_loss_from and self.estimator != "pes":
            raise ValueError(
                "meta_loss_from needs estimator 'pes': a truncated unroll's gradient cannot reach the later losses"
            )
        if self.weighting not in ("sum", "mean", "log_sum"):
            raise ValueError(f"Invalid weighting: {self.weighting!r}; choose from sum, mean, log_sum")

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "meta-training config") -> MetaTrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"{source}: unknown keys {unknown}; valid keys: {sorted(known)}")
        try:
            return cls(**values)
        except ValueError as error:
            raise ValueError(f"{source}: {error}") from None

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> MetaTrainConfig:
        return cls.from_dict(json.loads(Path(path).read_text()), str(path))


# What may change when a run resumes: how long it goes on and when its curriculum moves, not what
# it has done (its tasks, estimator, architecture and the steps already taken).
SCHEDULE_FIELDS = ("meta_epochs", "patience", "max_epochs_per_horizon", "description")


def _fixed_part(config: MetaTrainConfig) -> dict[str, Any]:
    return {k: v for k, v in dataclasses.asdict(config).items() if k not in SCHEDULE_FIELDS}


@dataclass
class Progress:
    """Where a run stands; saved in every checkpoint."""

    epoch: int = 0
    trajectory: int = 0
    horizon_index: int = 0
    epochs_since_best: int = 0
    best_valid: float = math.inf
    epoch_losses: list[float] = field(default_factory=list)
    skipped_steps: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    started_at_commit: str = ""
    processes: int = 0  # how the run ran (its last start), for its recipe: an export may run elsewhere
    threads_per_process: int = 0


@dataclass
class MetaTrainResult:
    architecture: str
    optimizer_config: Any
    theta: dict[str, Tensor]
    best_theta: dict[str, Tensor]
    progress: Progress


def trained_names(theta: dict[str, Tensor], only: list[str]) -> set[str]:
    """The names of ``theta`` that ``meta_train_only`` selects (all when it is empty); an entry
    ending in "_" selects every name it begins. An entry that selects nothing is an error."""
    if not only:
        return set(theta)
    chosen: set[str] = set()
    for entry in only:
        matched = {n for n in theta if n == entry or (entry.endswith("_") and n.startswith(entry))}
        if not matched:
            raise ValueError(f"meta_train_only: {entry!r} names no weight; the weights are {sorted(theta)}")
        chosen |= matched
    return chosen


def extended_config(architecture: Any, start_from: Any, overrides: dict[str, Any]) -> Any:
    """The config of the starting weights ``start_from`` with ``overrides``, which may only add
    weights: every weight of the starting network must keep its name and shape. Weights of the
    architecture that ``architecture`` extends (its ``extends``) start it with its own defaults added."""
    base = start_from.config
    if not isinstance(base, architecture.Config):
        base = architecture.Config(**dataclasses.asdict(base))
    elif not overrides:
        return base
    unknown = set(overrides) - {field.name for field in dataclasses.fields(base)}
    if unknown:
        raise ValueError(f"optimizer_config: unknown fields {sorted(unknown)} for {architecture.__name__}")
    extended = dataclasses.replace(base, **overrides)
    shapes = {name: tuple(value.shape) for name, value in architecture.init_theta(extended, None).items()}
    changed = sorted(name for name, value in start_from.theta.items() if shapes.get(name) != tuple(value.shape))
    if changed or set(shapes) == set(start_from.theta):
        raise ValueError(
            f"optimizer_config {overrides} adds no weights or changes the starting weights {changed}; with "
            "initial_weights it may only add weights (e.g. Celo2's step_scale_hidden)"
        )
    return extended


class MetaTrainer:
    """Runs a :class:`MetaTrainConfig` in ``run_dir`` (checkpoint, metrics.jsonl, plot)."""

    def __init__(
        self,
        config: MetaTrainConfig,
        run_dir: str | os.PathLike[str],
        data_root: str | None = None,
        coordinate_threads: int = 1,
    ):
        """``coordinate_threads`` > 1 splits every inner step's coordinates over that many threads of
        one core each (``learned_optim.meta.coordinate_split``): same math, in float rounding; first
        order without ``symmetry_weight`` only."""
        self.config = config
        self.coordinate_threads = None
        if coordinate_threads < 1:
            raise ValueError(f"coordinate_threads must be at least 1, got {coordinate_threads}")
        if coordinate_threads > 1:
            if config.second_order or config.symmetry_weight:
                raise ValueError(
                    "coordinate_threads > 1 needs first-order meta-gradients without symmetry_weight "
                    "(both couple the coordinates); use one thread per process for this config"
                )
            if config.estimator != "tbptt" or config.tasks_per_step > 1:
                raise ValueError(
                    "coordinate_threads > 1 splits one backpropagated unroll: needs estimator 'tbptt', tasks_per_step 1"
                )
            self.coordinate_threads = CoordinateThreads(coordinate_threads)
        self.run_dir = Path(run_dir)
        self.architecture = get_architecture(config.architecture)
        if config.compile:
            self.architecture = compiled(self.architecture)
        self.optimizer_config = config_from_dict(self.architecture.Config, config.optimizer_config, "optimizer_config")
        start_from = None
        if config.initial_weights:
            from learned_optim.hub import from_pretrained

            start_from = from_pretrained(config.initial_weights)
            if start_from.architecture not in (config.architecture, self.architecture.extends):
                raise ValueError(
                    f"initial_weights {config.initial_weights!r} are {start_from.architecture!r} weights: "
                    f"set architecture {start_from.architecture!r}"
                )
            # optimizer_config may only add weights (e.g. Celo2's step_scale_hidden): the starting
            # network's fields are kept and every one of its weights must keep its name and shape.
            self.optimizer_config = extended_config(self.architecture, start_from, config.optimizer_config)
        self.start_from = start_from  # its recipe carries the budget the starting weights cost
        self.data_root = data_root
        self.distribution = TASK_DISTRIBUTIONS.get(config.task)
        self.task = self.validation_task = None  # with a distribution, each trajectory draws its own
        if self.distribution is None:
            task = get_task(config.task, data_root)
            self.task = RescaledTask(task, config.rescale) if config.rescale > 0 else task
            self.validation_task = task
        self.regularizer = None
        if config.symmetry_weight:
            from functools import partial

            from learned_optim.diagnostics.symmetry import find_symmetries, symmetry_penalty

            structures = find_symmetries(self.validation_task.template)
            penalty = partial(symmetry_penalty, structures)
            self.regularizer = lambda params, update: config.symmetry_weight * penalty(params, update)
        initial = self.architecture.init_theta(self.optimizer_config, torch.Generator().manual_seed(config.seed))
        if start_from is not None:  # weights the starting network lacks keep their fresh values
            initial |= {k: v.clone() for k, v in start_from.theta.items()}
        self.trained = trained_names(initial, config.meta_train_only)
        self.theta = {k: v.requires_grad_(k in self.trained) for k, v in initial.items()}
        self.best_theta = {k: v.detach().clone() for k, v in self.theta.items()}
        self.meta_optimizer = torch.optim.Adam(self.trained_values(), lr=config.meta_lr)
        # PES perturbs the flat φ only where it is trained (None: everywhere).
        self.pes_mask = None
        if len(self.trained) < len(self.theta):
            self.pes_mask = torch.cat([torch.full((v.numel(),), float(k in self.trained)) for k, v in initial.items()])
        self.generator = torch.Generator().manual_seed(config.seed + 1)
        self.progress = Progress()

    # -- one trajectory -------------------------------------------------------------------------

    def meta_gradient(self, loss: Tensor, backward: Callable[[], None] | None = None) -> bool:
        """Set φ's gradient to ∂loss/∂φ averaged over ranks; False (no gradient) if any rank's loss is not finite.

        ``backward`` sets φ's gradients where ``loss`` carries no graph (a split unroll's record).
        """
        self.meta_optimizer.zero_grad()
        if not distributed.all_finite(loss.detach()):
            self.progress.skipped_steps += 1  # keep φ: one diverged optimizee must not poison it
            return False
        (backward or loss.backward)()
        distributed.average_gradients(self.trained_values())
        return True

    def trained_values(self) -> list[Tensor]:
        """The weights meta-training updates (``meta_train_only``), in ``theta``'s order."""
        return [value for name, value in self.theta.items() if name in self.trained]

    def _meta_step(self, loss: Tensor, backward: Callable[[], None] | None = None) -> None:
        if self.meta_gradient(loss, backward):
            torch.nn.utils.clip_grad_norm_(self.trained_values(), self.config.grad_clip)
            self.meta_optimizer.step()

    def draw_task(self, generator: torch.Generator) -> Any:
        """A trajectory's task: the configured one, or a new instance of the distribution (rescaled if configured)."""
        if self.distribution is None:
            return self.task
        task = self.distribution.draw(generator, self.data_root)
        return RescaledTask(task, self.config.rescale) if self.config.rescale > 0 else task

    def draw_step_tasks(self, generator: torch.Generator) -> list[Any]:
        """A meta-step's ``tasks_per_step`` tasks; with ``same_spec_per_step``, one drawn task, repeated
        (its instances then differ in initialisation and batches only, so they can be stacked). The
        spec comes from the generator every rank shares, so under ``--distributed`` all ranks train
        the same spec too: ranks that wait for each other every meta-step then do equal work."""
        config = self.config
        if config.same_spec_per_step and self.distribution is not None:
            task = build_task(self.distribution.draw_spec(generator), self.data_root)
            task = RescaledTask(task, config.rescale) if config.rescale > 0 else task
            return [task] * config.tasks_per_step
        return [self.draw_task(generator) for _ in range(config.tasks_per_step)]

    def stacks(self, tasks: list[Any]) -> bool:
        """Whether ``tasks`` run as one stacked unroll: several instances of the very same task object
        (so the same names, shapes and loss), backpropagated, with no regulariser (it is not vmapped)."""
        config = self.config
        return (
            config.stack_task_instances
            and len(tasks) > 1
            and all(task is tasks[0] for task in tasks)
            and config.estimator == "tbptt"
            and self.regularizer is None
            and self.coordinate_threads is None
        )

    def meta_trajectory(self, horizon: int) -> float:
        """``tasks_per_step`` task instances through ``horizon`` steps, one meta-step per unroll; their mean loss."""
        config = self.config
        if config.same_spec_per_step and self.distribution is not None:
            tasks = self.draw_step_tasks(self.generator)  # the spec, from the shared generator
            generator = distributed.rank_generator(self.generator)
        else:
            generator = distributed.rank_generator(self.generator)
            tasks = self.draw_step_tasks(generator)
        inners = [start(self.architecture, self.optimizer_config, task, generator) for task in tasks]
        if config.estimator == "pes":
            return self._pes_trajectory(horizon, tasks, inners, generator)
        if self.stacks(tasks):
            return self._stacked_trajectory(horizon, tasks[0], inners, generator)
        total = 0.0
        for _ in range(horizon // config.unroll):
            results = [
                self._unroll(self.theta, task, inner, generator, True)
                for task, inner in zip(tasks, inners, strict=True)
            ]
            inners = [state for _, state, _ in results]
            meta_losses = [meta_loss(losses, config.weighting) for losses, _, _ in results]
            if len(results) == 1:
                self._meta_step(meta_losses[0], results[0][2])
            else:  # several instances: never a split unroll (refused in __init__), so the losses carry the graph
                self._meta_step(torch.stack(meta_losses).mean())
            total += sum(float(losses.detach().mean()) for losses, _, _ in results) / len(results)
        return total / (horizon // config.unroll)

    def _stacked_trajectory(
        self, horizon: int, task: Any, inners: list[InnerState], generator: torch.Generator
    ) -> float:
        """``meta_trajectory`` with the instances of ``task`` stacked: one unroll per meta-step for all."""
        config = self.config
        stacked = stack_inner_states(self.architecture, self.optimizer_config, inners)
        total = 0.0
        for _ in range(horizon // config.unroll):
            losses, stacked = stacked_unroll(
                self.architecture,
                self.theta,
                self.optimizer_config,
                task,
                stacked,
                generator,
                config.unroll,
                lr=config.inner_lr,
                second_order=config.second_order,
            )
            stacked = stacked.detached()
            # Each instance's meta-loss, then their mean: the sequential path's meta-gradient.
            per_instance = torch.stack([meta_loss(column, config.weighting) for column in losses.unbind(1)])
            self._meta_step(per_instance.mean())
            total += float(losses.detach().mean(0).mean())
        return total / (horizon // config.unroll)

    def _pes_trajectory(
        self, horizon: int, tasks: list[Any], inners: list[InnerState], generator: torch.Generator
    ) -> float:
        """PES meta-steps: the estimates of every task instance's pairs averaged into φ's gradient."""
        config = self.config
        pairs = [pes.start_pairs(inner, config.pes_particles, self.theta) for inner in inners]
        total = 0.0
        truncations = horizon // config.unroll
        # The first truncation with a step past meta_loss_from of the horizon takes the first meta-step.
        first_counted = math.floor(config.meta_loss_from * horizon / config.unroll)
        for truncation in range(truncations):
            estimates, losses = [], []
            for index, task in enumerate(tasks):
                estimate, task_losses, pairs[index] = pes.pes_estimate(
                    self.architecture,
                    self.theta,
                    self.optimizer_config,
                    task,
                    pairs[index],
                    generator,
                    config.unroll,
                    sigma=config.pes_sigma,
                    mask=self.pes_mask,
                    lr=config.inner_lr,
                    weighting=config.weighting,
                )
                estimates.append(estimate)
                losses.append(task_losses)
            gradient = pes.unflatten_theta(self.theta, torch.stack(estimates).mean(0))

            def set_gradient(gradient: dict[str, Tensor] = gradient) -> None:
                for name, value in self.theta.items():
                    if name in self.trained:
                        value.grad = gradient[name].clone()

            all_losses = torch.stack(losses)
            if truncation >= first_counted:
                self._meta_step(all_losses, set_gradient)
            total += float(all_losses.mean())
        return total / truncations

    def _unroll(
        self, theta: dict[str, Tensor], task: Any, inner: InnerState, generator: torch.Generator, training: bool
    ) -> tuple[Tensor, InnerState, Callable[[], None] | None]:
        """One unroll of ``config.unroll`` steps: its losses, the next state (detached: truncated BPTT)
        and, for a split unroll, what sets φ's gradient of their meta-loss (otherwise the losses
        carry the graph). Training draws from the ``train`` split and adds second order and the
        regulariser where configured; validation draws from ``valid``."""
        config = self.config
        split = "train" if training else "valid"
        arguments = (self.architecture, theta, self.optimizer_config, task, inner, generator, config.unroll)
        if self.coordinate_threads:
            threads = self.coordinate_threads
            record = split_unroll(*arguments, threads, lr=config.inner_lr, split=split)

            def set_gradients() -> None:
                trained = {name: value for name, value in self.theta.items() if name in self.trained}
                gradients = record.meta_gradient(trained, config.weighting, threads)
                for name, value in trained.items():
                    value.grad = gradients[name]

            return record.losses, record.state, set_gradients
        losses, inner = unroll(
            *arguments,
            lr=config.inner_lr,
            split=split,
            second_order=training and config.second_order,
            regularizer=self.regularizer if training else None,
        )
        return losses, inner.detached(), None

    def imitation_trajectory(self, horizon: int) -> float:
        """The teacher's trajectory on one task instance (drawn from the distribution, if any)."""
        generator = distributed.rank_generator(self.generator)
        losses = imitation.imitation_trajectory(
            self.architecture,
            self.theta,
            self.optimizer_config,
            self.draw_task(generator),
            generator,
            teacher=self.config.imitation_teacher,
            teacher_lr=self.config.imitation_lr,
            horizon=horizon,
            unroll=self.config.unroll,
            inner_lr=self.config.inner_lr,
            meta_step=self._meta_step,
        )
        return sum(losses) / len(losses)

    def validate(self, theta: dict[str, Tensor] | None = None, horizon: int | None = None) -> float:
        """Mean training loss over fixed ``valid``-split task instances (lower is better).

        With a task distribution, each instance scores its mean training loss over the horizon
        (``validation_score`` "final": over the horizon's last tenth, in whole unrolls) divided by
        its loss at initialisation, and the scores are averaged. Raw losses would let
        the instances with the largest loss scale (a byte-level model starts near ln 128 ≈ 4.9, a
        classifier near ln 10 ≈ 2.3) decide which weights are kept; the ratio is 1 for no
        progress, 0 for a solved task, whatever the task. (A log-ratio would do as well, but lets
        one nearly solved instance dominate the mean.)
        """
        theta = {k: v.detach() for k, v in (theta or self.theta).items()}
        horizon = horizon or self.config.validation_horizon or self.config.horizons[self.progress.horizon_index]
        generator = torch.Generator().manual_seed(self.config.seed + 10_000)
        unrolls = horizon // self.config.unroll
        kept = unrolls if self.config.validation_score == "mean" else max(1, math.ceil(unrolls * FINAL_FRACTION))
        total, scores = 0.0, []
        count = self.config.validation_trajectories
        for index in range(count):
            task = self.validation_task or self.distribution.draw(generator, self.data_root)
            inner = start(self.architecture, self.optimizer_config, task, generator)
            scale = 1.0
            if self.distribution is not None:
                with torch.no_grad():
                    scale = float(task.loss(inner.params, task.sample(generator, "valid")))
            # Every rank draws every instance (the generator stays in step) but runs only its share.
            instance_generator = torch.Generator().manual_seed(int(torch.randint(0, 2**62, (), generator=generator)))
            if index % distributed.world_size() != distributed.rank():
                continue
            unroll_means = []
            for _ in range(unrolls):
                losses, inner = self._validation_unroll(theta, task, inner, instance_generator)
                unroll_means.append(float(losses.mean()))
            instance_total = sum(unroll_means[-kept:])
            total += instance_total
            scores.append(instance_total / kept / scale)
        if self.distribution is None:
            mean = distributed.sum_over_ranks(total) / (count * kept)
        else:
            mean = distributed.sum_over_ranks(sum(scores)) / count
        return mean if math.isfinite(mean) else math.inf

    def _validation_unroll(
        self, theta: dict[str, Tensor], task: Any, inner: InnerState, generator: torch.Generator
    ) -> tuple[Tensor, InnerState]:
        """One unroll on the ``valid`` split, without a graph: the forward-only update where the
        architecture has one (Celo2's CPU kernel), the split unroll under ``--coordinate-threads``."""
        if self.coordinate_threads:
            losses, inner, _ = self._unroll(theta, task, inner, generator, training=False)
            return losses.detach(), inner
        return pes.evaluate_unroll(
            self.architecture,
            theta,
            self.optimizer_config,
            task,
            inner,
            generator,
            self.config.unroll,
            lr=self.config.inner_lr,
            split="valid",
            update=getattr(self.architecture, "forward_update", None),
        )

    # -- the loop -------------------------------------------------------------------------------

    def run(self, resume: bool = False, progress_bar: bool = True) -> MetaTrainResult:
        config, progress = self.config, self.progress
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if resume and (self.run_dir / CHECKPOINT_NAME).exists():
            self.load_checkpoint(self.run_dir / CHECKPOINT_NAME)
            progress = self.progress
        else:
            progress.started_at_commit = git_commit()
            if config.initial_weights and not config.imitation_epochs:
                self._validate_initial_weights()
        progress.processes, progress.threads_per_process = distributed.world_size(), torch.get_num_threads()
        total_epochs = config.imitation_epochs + config.meta_epochs
        bar = tqdm(
            total=total_epochs * config.trajectories_per_epoch,
            initial=progress.epoch * config.trajectories_per_epoch + progress.trajectory,
            desc=f"meta-train {config.architecture} on {config.task}",
            disable=not progress_bar or distributed.rank() != 0,
            unit="traj",
        )
        while progress.epoch < total_epochs:
            imitating = progress.epoch < config.imitation_epochs
            horizon = config.horizons[progress.horizon_index]
            while progress.trajectory < config.trajectories_per_epoch:
                started = time.perf_counter()
                run_one = self.imitation_trajectory if imitating else self.meta_trajectory
                progress.epoch_losses.append(distributed.mean_over_ranks(run_one(horizon)))
                progress.trajectory += distributed.world_size()  # one trajectory per rank
                bar.update(distributed.world_size())
                progress.seconds += time.perf_counter() - started
                self.save_checkpoint()
            self._end_epoch(imitating, horizon)
            bar.set_postfix(valid=f"{progress.history[-1]['valid_loss']:.4f}", horizon=horizon)
        bar.close()
        self.write_plot()
        return self.result()

    def result(self) -> MetaTrainResult:
        """Where the run stands as a result: finished, or (from a checkpoint) the best weights so far."""
        return MetaTrainResult(
            self.config.architecture,
            self.optimizer_config,
            {k: v.detach().clone() for k, v in self.theta.items()},
            self.best_theta,
            self.progress,
        )

    def finished(self) -> bool:
        return self.progress.epoch >= self.config.imitation_epochs + self.config.meta_epochs

    def inner_steps(self) -> tuple[int, int]:
        """The budget spent so far: inner steps along the trajectories (every rank's, the imitation
        epochs' included), and inner steps computed (PES runs 2 × ``pes_particles`` copies of each)."""
        config, progress = self.config, self.progress
        copies = 2 * config.pes_particles if config.estimator == "pes" else 1
        epochs = [(r["phase"], r["horizon"], config.trajectories_per_epoch) for r in progress.history]
        if not self.finished():
            phase = "imitation" if progress.epoch < config.imitation_epochs else "meta"
            epochs.append((phase, config.horizons[progress.horizon_index], progress.trajectory))
        along = computed = 0
        for phase, horizon, trajectories in epochs:
            if phase in ("meta", "imitation"):
                steps = trajectories * horizon * config.tasks_per_step
                along += steps
                computed += steps * (1 if phase == "imitation" else copies)
        return along, computed

    def _validate_initial_weights(self) -> None:
        """Given weights are the first candidate (epoch 0, phase "initial"): meta-tuning a rule or a
        trained network then never returns weights that validate worse than its start."""
        started = time.perf_counter()
        valid = self.validate()
        self._keep_as_best(valid)
        self.progress.seconds += time.perf_counter() - started
        record = {"epoch": 0, "phase": "initial", "horizon": self.config.horizons[0], "train_loss": None}
        self._record(record | {"valid_loss": valid, "skipped_steps": 0})

    def _keep_as_best(self, valid: float) -> None:
        self.progress.best_valid = valid
        self.progress.epochs_since_best = 0
        self.best_theta = {k: v.detach().clone() for k, v in self.theta.items()}

    def _record(self, record: dict[str, Any]) -> None:
        """Append an epoch's row to the history, checkpoint, and rewrite ``metrics.jsonl``."""
        progress = self.progress
        record["minutes"] = progress.seconds / 60
        progress.history.append(record)
        self.save_checkpoint()
        if distributed.rank() == 0:
            with open(self.run_dir / METRICS_NAME, "w", encoding="utf-8") as metrics:
                metrics.writelines(json.dumps(row) + "\n" for row in progress.history)

    def _end_epoch(self, imitating: bool, horizon: int) -> None:
        config, progress = self.config, self.progress
        started = time.perf_counter()
        valid = self.validate()
        record = {
            "epoch": progress.epoch + 1,
            "phase": "imitation" if imitating else "meta",
            "horizon": horizon,
            "train_loss": sum(progress.epoch_losses) / len(progress.epoch_losses),
            "valid_loss": valid,
            "skipped_steps": progress.skipped_steps,
        }
        # Imitation epochs only warm up; best weights are chosen among meta-training epochs.
        if not imitating and valid < progress.best_valid:
            self._keep_as_best(valid)
        elif not imitating:
            progress.epochs_since_best += 1
        if not imitating and progress.horizon_index + 1 < len(config.horizons) and self._horizon_done(horizon):
            progress.horizon_index += 1
            progress.epochs_since_best = 0
            if not config.validation_horizon:  # validation follows the horizon: a new loss scale
                progress.best_valid = math.inf
        progress.seconds += time.perf_counter() - started
        progress.epoch += 1
        progress.trajectory = 0
        progress.epoch_losses = []
        self._record(record)

    def _horizon_done(self, horizon: int) -> bool:
        """Validation stalled for ``patience`` epochs, or (``max_epochs_per_horizon``) this horizon had its
        epochs: a run whose validation keeps improving on short horizons still reaches the long ones."""
        config = self.config
        if self.progress.epochs_since_best >= config.patience:
            return True
        epochs_here = 1 + sum(r["phase"] == "meta" and r["horizon"] == horizon for r in self.progress.history)
        return 0 < config.max_epochs_per_horizon <= epochs_here

    # -- checkpoints ----------------------------------------------------------------------------

    def save_checkpoint(self) -> None:
        if distributed.rank() != 0:
            return  # φ, the outer Adam and the shared generator are the same on every rank
        tensors = {f"theta.{k}": v.detach().clone() for k, v in self.theta.items()}
        tensors.update({f"best_theta.{k}": v.clone() for k, v in self.best_theta.items()})
        meta_state = self.meta_optimizer.state_dict()
        for index, values in meta_state["state"].items():
            tensors.update({f"meta_optimizer.{index}.{key}": value.clone() for key, value in values.items()})
        tensors["generator"] = self.generator.get_state()
        metadata = {
            "format": _CHECKPOINT_FORMAT,
            "config": json.dumps(dataclasses.asdict(self.config)),
            "progress": json.dumps(dataclasses.asdict(self.progress)),
            "meta_optimizer_groups": json.dumps(meta_state["param_groups"]),
        }
        target = self.run_dir / CHECKPOINT_NAME
        temporary = target.with_name(f".{target.name}.tmp")
        safetensors.torch.save_file(tensors, temporary, metadata=metadata)
        os.replace(temporary, target)  # atomic: a kill leaves the old or the new checkpoint

    def load_checkpoint(self, path: Path) -> None:
        with safetensors.safe_open(path, framework="pt") as handle:
            metadata = handle.metadata()
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
        if metadata.get("format") != _CHECKPOINT_FORMAT:
            raise WeightsError(f"{path}: not a learned_optim meta-training checkpoint")
        # Compare with defaults filled in, so a checkpoint made before a field existed still matches.
        saved_config = MetaTrainConfig.from_dict(json.loads(metadata["config"]), str(path))
        if _fixed_part(saved_config) != _fixed_part(self.config):
            raise ValueError(
                f"{path}: the checkpoint was made with another config; use a new run directory "
                f"(only {', '.join(SCHEDULE_FIELDS)} may change when a run is resumed)"
            )
        with torch.no_grad():
            for key, value in self.theta.items():
                value.copy_(tensors[f"theta.{key}"])
        self.best_theta = {k: tensors[f"best_theta.{k}"] for k in self.theta}
        state: dict[int, dict[str, Tensor]] = {}
        for key, value in tensors.items():
            if key.startswith("meta_optimizer."):
                _, index, name = key.split(".", 2)
                state.setdefault(int(index), {})[name] = value
        groups = json.loads(metadata["meta_optimizer_groups"])
        self.meta_optimizer.load_state_dict({"state": state, "param_groups": groups})
        self.generator.set_state(tensors["generator"])
        self.progress = Progress(**json.loads(metadata["progress"]))

    def write_plot(self) -> Path | None:
        """``training.png``: training and validation loss per epoch, curriculum changes marked."""
        history = self.progress.history
        if not history or distributed.rank() != 0:
            return None
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        epochs = [row["epoch"] for row in history]
        figure, axis = plt.subplots(figsize=(7, 4))
        trained = [row for row in history if row["train_loss"] is not None]  # epoch 0 has no training loss
        axis.plot(
            [row["epoch"] for row in trained],
            [row["train_loss"] for row in trained],
            label="meta-train (mean inner loss / imitation)",
        )
        validation = "loss / loss at init" if self.distribution is not None else "mean inner loss"
        if self.config.validation_score == "final":
            validation += ", last tenth"
        axis.plot(epochs, [row["valid_loss"] for row in history], label=f"meta-validation ({validation})")
        for previous, row in itertools.pairwise(history):
            if row["horizon"] != previous["horizon"]:
                axis.axvline(row["epoch"] - 0.5, color="grey", linestyle=":")
                axis.text(row["epoch"] - 0.5, axis.get_ylim()[1], f" T={row['horizon']}", va="top", fontsize=8)
        axis.set_yscale("log")
        axis.set_xlabel("meta-epoch")
        axis.set_ylabel("loss")
        axis.set_title(f"{self.config.architecture} on {self.config.task}")
        axis.legend()
        figure.tight_layout()
        path = self.run_dir / "training.png"
        figure.savefig(path, dpi=120)
        plt.close(figure)
        return path

r"""First-order unrolls with the optimizee's coordinates split over threads of one core each.

A coordinatewise learned optimizer runs its network on every coordinate independently, and in
first order the meta-gradient separates by coordinate too. With θ_{k+1} = θ_k − lr · d_k and the
meta-loss L = Σ_{j=1..K} w_j ℓ_j, ℓ_j = f(θ_j; batch_j), the gradients g_j = ∇f(θ_j; batch_j) that
the inner loop computes anyway (g_j is step j's input) give::

    ∂L/∂d_k = −lr · Σ_{j>k} w_j g_j          w_j = 1/K (mean), 1 (sum), 1/Σℓ (log_sum)

so each slice of coordinates runs its part of every inner step, and then backpropagates through
its own part of the network's graph, on its own thread; φ's gradient is the sum over slices. Only
the task's loss and gradient (small for L2O tasks) run on one thread, once per inner step.

Why: the network's thin matrix products and elementwise passes are memory-bound, and on small
CPUs they scale badly over cores (on the 2-core development machine two threads at times run them
slower than one). Slices on single-threaded cores keep both cores busy on their own memory. Whether
that is faster depends on the machine: the development machine runs it faster in its slow state
and slower in its fast one (docs/performance.md); time both with ``tools.meta_speed``.

Same math as :func:`learned_optim.meta.unroll.unroll` followed by a backward pass (the same
batches, in the same order): losses, states and meta-gradients differ in float rounding only
(``tests/test_coordinate_split.py``). Second-order meta-gradients and regularisers couple the
coordinates, so they need the plain unroll.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from torch import Tensor

from learned_optim.meta.inner_step import SEPARATOR, is_per_tensor, optimizer_step
from learned_optim.meta.unroll import InnerState, apply_direction, flat_gradient

Result = TypeVar("Result")


@contextlib.contextmanager
def _single_threaded() -> Iterator[None]:
    """The calling thread's torch ops on one core for the duration (kernels compiled inside bake in 1)."""
    previous = torch.get_num_threads()
    if previous != 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if previous != 1:
            torch.set_num_threads(previous)


# A compiled update's variants: φ with or without gradients × state with or without a graph × thread
# count, and dynamo keeps them once per slice thread (its guards also check state private to a thread).
_VARIANT_LIMIT = 32


@contextlib.contextmanager
def _room_for_variants() -> Iterator[None]:
    """Dynamo's per-function limit of compiled variants (8) raised while this thread waits for the
    slices, so that a split run never falls back to eager. Entered by the caller only: the workers
    compile inside its window."""
    import torch._dynamo

    with torch._dynamo.config.patch(recompile_limit=max(torch._dynamo.config.recompile_limit, _VARIANT_LIMIT)):
        yield


def _serve(jobs: queue.SimpleQueue, results: queue.SimpleQueue, ready: threading.Barrier) -> None:
    # ATen sets a thread's count lazily, from the process-wide one, at its first query: query first,
    # or a later set_num_threads elsewhere would still reach this thread.
    torch.get_num_threads()
    torch.set_num_threads(1)
    ready.wait()
    while (job := jobs.get()) is not None:
        function, index = job
        try:
            results.put((index, True, function(index)))
        except BaseException as error:  # handed to the caller, which raises it
            results.put((index, False, error))


class CoordinateThreads:
    """``threads`` − 1 worker threads plus the caller, each running torch ops on one core.

    ``map(function, count)`` runs ``function(i)`` for slice i, slice 0 on the calling thread, and
    returns the results in slice order; a worker's exception is raised in the caller.
    """

    def __init__(self, threads: int) -> None:
        if threads < 1:
            raise ValueError(f"coordinate threads must be at least 1, got {threads}")
        self.threads = threads
        self._jobs: list[queue.SimpleQueue] = [queue.SimpleQueue() for _ in range(threads - 1)]
        self._results: queue.SimpleQueue = queue.SimpleQueue()
        callers_threads = torch.get_num_threads()
        ready = threading.Barrier(threads)
        workers = [
            threading.Thread(target=_serve, args=(jobs, self._results, ready), daemon=True, name="coordinate-slice")
            for jobs in self._jobs
        ]
        for worker in workers:
            worker.start()
        ready.wait()
        torch.set_num_threads(callers_threads)  # the workers' set_num_threads(1) also set the process-wide count
        # Stopped and joined when collected or at exit: a worker left inside torch at shutdown aborts the process.
        self._finalizer = weakref.finalize(self, _stop, self._jobs, workers)
        self._backward_compiled = False

    def map(self, function: Callable[[int], Result], count: int) -> list[Result]:
        if count > self.threads:
            raise ValueError(f"{count} slices for {self.threads} threads")
        for index in range(1, count):
            self._jobs[index - 1].put((function, index))
        results: list[Any] = [None] * count
        failure: BaseException | None = None
        try:
            with _single_threaded():
                results[0] = function(0)
        except BaseException as error:  # collect the workers first, then raise
            failure = error
        for _ in range(1, count):
            index, ok, value = self._results.get()
            results[index] = value
            if not ok and failure is None:
                failure = value
        if failure is not None:
            raise failure
        return results

    def close(self) -> None:
        """Stop the worker threads (also done when this object is collected, or at exit)."""
        self._finalizer()


def _stop(job_queues: list[queue.SimpleQueue], workers: list[threading.Thread]) -> None:
    for jobs in job_queues:
        jobs.put(None)
    for worker in workers:
        worker.join()


def coordinate_slices(count: int, parts: int) -> list[tuple[int, int]]:
    """``parts`` contiguous ``(start, stop)`` ranges covering ``range(count)``, sizes within 1."""
    base, extra = divmod(count, parts)
    bounds, start = [], 0
    for part in range(parts):
        stop = start + base + (part < extra)
        bounds.append((start, stop))
        start = stop
    return [bound for bound in bounds if bound[1] > bound[0]]


def tensor_slices(sizes: list[int], parts: int) -> list[tuple[int, int, int, int]]:
    """At most ``parts`` contiguous ranges of whole tensors of ``sizes``, near equal in coordinates:
    ``(first tensor, stop tensor, first coordinate, stop coordinate)`` each."""
    total, slices = sum(sizes), []
    first, start, position = 0, 0, 0
    for index, size in enumerate(sizes):
        position += size
        boundary = total * (len(slices) + 1) / parts
        if position >= boundary or index == len(sizes) - 1:
            slices.append((first, index + 1, start, position))
            first, start = index + 1, position
    return [piece for piece in slices if piece[3] > piece[2]]


def _value_and_gradient(task: Any, params: dict[str, Tensor], batch: Any) -> tuple[Tensor, Tensor]:
    inputs = dict(params)
    for name in task.parameter_names:
        inputs[name] = params[name].detach().requires_grad_()
    with torch.enable_grad():
        loss = task.loss(inputs, batch)
        return loss.detach(), flat_gradient(task, loss, inputs)


@dataclass
class SplitUnroll:
    """One unroll's record: its losses ℓ_1 … ℓ_K, the new (detached) state, and per slice the
    directions d_0 … d_{K−1} with their graphs back to φ, for :meth:`meta_gradient`."""

    losses: Tensor
    state: InnerState
    slices: list[tuple[int, int]]
    directions: list[list[Tensor]]
    gradients: list[Tensor]
    lr: float

    def meta_gradient(self, theta: dict[str, Tensor], weighting: str, threads: CoordinateThreads) -> dict[str, Tensor]:
        """∂L/∂φ for ``meta_loss(losses, weighting)``; frees the unroll's graphs."""
        num_steps = len(self.gradients)
        weight = {"mean": 1.0 / num_steps, "sum": 1.0, "log_sum": None}[weighting]
        if weight is None:  # d log Σℓ / dℓ_j = 1 / Σℓ
            weight = 1.0 / float(self.losses.sum())
        with _single_threaded():
            adjoints: list[Tensor] = []
            running = torch.zeros_like(self.gradients[0])
            for gradient in reversed(self.gradients):  # a_k = −lr Σ_{j>k} w_j g_j, for k = K−1 … 0
                running = running + gradient
                adjoints.append(running * (-self.lr * weight))
            adjoints.reverse()
        names = list(theta)
        leaves = [theta[name] for name in names]

        def backward(index: int) -> tuple[Tensor | None, ...]:
            start, stop = self.slices[index]
            # A slice can hold only tensors whose update learns nothing (Celo2's AdamW path).
            pairs = [
                (d, a[start:stop]) for d, a in zip(self.directions[index], adjoints, strict=True) if d.requires_grad
            ]
            if not pairs:
                return (None,) * len(leaves)
            outputs, cotangents = zip(*pairs, strict=True)
            return torch.autograd.grad(outputs, leaves, cotangents, allow_unused=True)

        if threads._backward_compiled:
            parts = threads.map(backward, len(self.slices))
        else:  # a compiled update's backward compiles lazily on first use, without a lock: once, in turn
            with _single_threaded():
                parts = [backward(index) for index in range(len(self.slices))]
            threads._backward_compiled = True
        self.directions = []
        gradients = {}
        for position, (name, leaf) in enumerate(zip(names, leaves, strict=True)):
            pieces = [part[position] for part in parts if part[position] is not None]
            gradients[name] = torch.stack(pieces).sum(0) if pieces else torch.zeros_like(leaf)
        return gradients


def split_unroll(
    architecture: Any,
    theta: dict[str, Tensor],
    config: Any,
    task: Any,
    inner: InnerState,
    generator: torch.Generator,
    num_steps: int,
    threads: CoordinateThreads,
    *,
    lr: float = 1.0,
    split: str = "train",
) -> SplitUnroll:
    """``unroll`` (first order, no regulariser) with each inner step's update run per coordinate slice.

    The graphs back to ``theta`` are kept only where ``theta`` requires gradients; the returned
    state is detached (truncated BPTT), ready for the next unroll.
    """
    with _single_threaded(), _room_for_variants():
        params = {name: value.detach() for name, value in inner.params.items()}
        _, gradient = _value_and_gradient(task, params, task.sample(generator, split))
        count = gradient.numel()
        names = list(task.parameter_names)
        if is_per_tensor(architecture):  # slices of whole tensors: a statistic never spans a cut
            pieces = tensor_slices([params[name].numel() for name in names], threads.threads)
            slices = [(start, stop) for _, _, start, stop in pieces]
            slice_names = [names[first:last] for first, last, _, _ in pieces]
            states = [
                {
                    key: value.detach()
                    for key, value in inner.opt_state.items()
                    if key.split(SEPARATOR, 1)[0] in set(members)
                }
                for members in slice_names
            ]
        else:
            slices = coordinate_slices(count, threads.threads)
            slice_names = [names] * len(slices)
            states = []
            for start, stop in slices:
                state = {}
                for name, value in inner.opt_state.items():
                    if value.shape[-1:] != (count,):
                        raise ValueError(
                            f"state {name!r} of shape {tuple(value.shape)} is not per coordinate (last axis)"
                        )
                    state[name] = value.detach()[..., start:stop].contiguous()
                states.append(state)
        per_tensor = is_per_tensor(architecture)
        slice_params = [{name: params[name] for name in members} for members in slice_names]
        keep_graph = torch.is_grad_enabled() and any(value.requires_grad for value in theta.values())
        directions: list[list[Tensor]] = [[] for _ in slices]
        losses, gradients = [], []
        for k in range(num_steps):
            step = torch.tensor(float(inner.step + k + 1))

            def advance(index: int, gradient: Tensor = gradient, step: Tensor = step) -> Tensor:
                start, stop = slices[index]
                direction, states[index] = optimizer_step(
                    architecture,
                    theta,
                    config,
                    gradient[start:stop],
                    states[index],
                    step,
                    names=slice_names[index],
                    params=slice_params[index],
                )
                if per_tensor:  # the update reads θ: keep θ's dependence on earlier directions, as unroll does
                    pieces = direction.split([slice_params[index][name].numel() for name in slice_names[index]])
                    for name, piece in zip(slice_names[index], pieces, strict=True):
                        value = slice_params[index][name]
                        slice_params[index][name] = value - lr * piece.view_as(value)
                        if not keep_graph:
                            slice_params[index][name] = slice_params[index][name].detach()
                if keep_graph:
                    directions[index].append(direction)
                else:
                    states[index] = {name: value.detach() for name, value in states[index].items()}
                return direction.detach()

            direction = torch.cat(threads.map(advance, len(slices)))
            params = apply_direction(task, params, direction, lr)
            loss, gradient = _value_and_gradient(task, params, task.sample(generator, split))
            losses.append(loss)
            gradients.append(gradient)
        if is_per_tensor(architecture):
            new_state = {key: value.detach() for state in states for key, value in state.items()}
        else:
            new_state = {name: torch.cat([state[name].detach() for state in states], dim=-1) for name in states[0]}
    return SplitUnroll(
        torch.stack(losses),
        InnerState(params, new_state, inner.step + num_steps),
        slices,
        directions,
        gradients,
        lr,
    )

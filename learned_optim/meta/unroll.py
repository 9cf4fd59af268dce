"""Functional unrolls of a learned optimizer on a task, for truncated backpropagation through time.

The inner loop is plain tensor code: task parameters are a dict of tensors and the optimizer is
the architecture's pure ``update`` (the same function ``Optimizer.step`` runs). One unroll of K
steps from θ_0::

    for k in 0 … K−1:
        g_k = ∇f(θ_k; batch_k)                    a constant (first order) unless second_order=True
        d_k, s_{k+1} = update(φ, g_k, s_k, t+k+1)
        θ_{k+1} = θ_k − lr · d_k
        ℓ_{k+1} = f(θ_{k+1}; batch_{k+1})         the meta-loss terms, differentiable in φ

Every inner step computes its gradient once and keeps its graph; the meta-gradient is one
backward pass over the K steps, so an unroll costs O(K). (The reference implementations call
backward through the whole unroll at every inner step: O(K²).) Between unrolls the caller
detaches θ and s: truncated BPTT.

All coordinates of all parameter tensors form one flat vector for the update, so the shared
network runs once per inner step whatever the number of tensors; a per-tensor architecture gets
each tensor whole instead (``learned_optim.meta.inner_step``, the one inner step every functional
engine shares).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from learned_optim.meta.inner_step import init_optimizer_state, optimizer_step


@dataclass
class InnerState:
    """Where an optimizee trajectory stands: task tensors, optimizer state, steps taken."""

    params: dict[str, Tensor]
    opt_state: dict[str, Tensor]
    step: int = 0

    def detached(self) -> InnerState:
        return InnerState(
            {k: v.detach() for k, v in self.params.items()},
            {k: v.detach() for k, v in self.opt_state.items()},
            self.step,
        )


def flat_parameters(task: Any, params: dict[str, Tensor]) -> Tensor:
    """The optimized coordinates of ``params``, in ``task.parameter_names`` order, as one vector."""
    return torch.cat([params[name].reshape(-1) for name in task.parameter_names])


def flat_gradient(task: Any, loss: Tensor, params: dict[str, Tensor], **grad_kwargs: Any) -> Tensor:
    """∇loss with respect to the optimized entries of ``params``, as one vector (``flat_parameters`` order)."""
    grads = torch.autograd.grad(loss, [params[name] for name in task.parameter_names], **grad_kwargs)
    return torch.cat([g.reshape(-1) for g in grads])


def start(architecture: Any, config: Any, task: Any, generator: torch.Generator) -> InnerState:
    """A fresh task instance and a zero optimizer state."""
    params = task.init(generator)
    return InnerState(params, init_optimizer_state(architecture, config, task.parameter_names, params), 0)


def compiled(architecture: Any) -> Any:
    """``architecture`` with its ``update`` run through ``torch.compile``.

    Inductor fuses each inner step's elementwise work, forward and backward, into a few loops; the
    matrix products stay ATen's. Same math: results differ from eager in the last bits only. The
    first unroll compiles (seconds) and one more compile follows once the state carries a graph.
    """
    return type(architecture.__name__, (architecture,), {"update": staticmethod(torch.compile(architecture.update))})


def split_direction(task: Any, params: dict[str, Tensor], direction: Tensor) -> dict[str, Tensor]:
    """The flat direction as one tensor per optimized parameter, shaped like it."""
    names = task.parameter_names
    pieces = direction.split([params[name].numel() for name in names])
    return {name: piece.view_as(params[name]) for name, piece in zip(names, pieces, strict=True)}


def apply_direction(task: Any, params: dict[str, Tensor], direction: Tensor, lr: float) -> dict[str, Tensor]:
    """``θ − lr · d`` for the optimized entries of ``params``; buffers pass through."""
    updated = dict(params)
    for name, piece in split_direction(task, params, direction).items():
        updated[name] = params[name] - lr * piece
    return updated


def unroll(
    architecture: Any,
    theta: dict[str, Tensor],
    config: Any,
    task: Any,
    inner: InnerState,
    generator: torch.Generator,
    num_steps: int,
    *,
    lr: float = 1.0,
    split: str = "train",
    second_order: bool = False,
    regularizer: Callable[[dict[str, Tensor], dict[str, Tensor]], Tensor] | None = None,
) -> tuple[Tensor, InnerState]:
    """Run ``num_steps`` inner steps; returns the losses ℓ_1 … ℓ_K (a tensor of K) and the new state.

    The losses carry the graph back to ``theta``; the returned state does too, so detach it
    (``InnerState.detached``) before the next unroll for truncated BPTT. ``regularizer(θ_k, d_k)``,
    where given, is added to each step's term (e.g. a symmetry penalty on the update).
    """
    names = task.parameter_names
    params = dict(inner.params)
    for name in names:
        if not params[name].requires_grad:
            params[name] = params[name].detach().requires_grad_()
    opt_state = inner.opt_state
    loss = task.loss(params, task.sample(generator, split))
    losses = []
    for k in range(num_steps):
        flat_grad = flat_gradient(task, loss, params, retain_graph=True, create_graph=second_order)
        step = torch.tensor(float(inner.step + k + 1))
        direction, opt_state = optimizer_step(
            architecture, theta, config, flat_grad, opt_state, step, names=names, params=params
        )
        penalty = regularizer(params, split_direction(task, params, direction)) if regularizer else 0.0
        params = apply_direction(task, params, direction, lr)
        loss = task.loss(params, task.sample(generator, split))
        losses.append(loss + penalty)
    return torch.stack(losses), InnerState(params, opt_state, inner.step + num_steps)


def meta_loss(losses: Tensor, weighting: str = "mean") -> Tensor:
    """Combine the per-step losses of an unroll: ``sum``, ``mean`` or ``log_sum`` (log Σ ℓ_k)."""
    if weighting == "sum":
        return losses.sum()
    if weighting == "mean":
        return losses.mean()
    if weighting == "log_sum":
        return losses.sum().log()
    raise ValueError(f"unknown meta-loss weighting {weighting!r}; choose sum, mean or log_sum")

r"""Persistent evolution strategies (PES, Vicol, Metz and Sohl-Dickstein, ICML 2021).

An unbiased estimate of the meta-gradient of a whole trajectory that never backpropagates
through it. With φ the learned network's weights as one flat vector, each of N antithetic pairs
runs two copies of the optimizee for one unroll of K steps, at φ + ε and φ − ε
(ε ~ N(0, σ²I), fresh each unroll), on the same task instance and the same batches. Each pair
keeps ξ, the sum of the ε it has drawn since the trajectory started (the minus copy's is −ξ),
and::

    ĝ = 1/N Σ_i ξ_i (L_i⁺ − L_i⁻) / (2σ²)

where L is the unroll's meta-loss. Truncated BPTT biases the gradient towards short horizons;
the accumulated ξ removes that bias, at the price of variance that grows with the number of
unrolls. The copies' inner states persist from unroll to unroll; a new trajectory starts them
again from one fresh task instance with ξ = 0.

Inner gradients still come from autograd, on leaf copies of the task parameters; the optimizer's
update runs under ``torch.no_grad()``, so no graph ever reaches φ and memory stays that of one
inner step. The 2N copies run as one: their tensors stacked on a leading axis, the task's loss and
the optimizer's update under ``torch.func.vmap`` (``unroll_copies``), so an inner step of all the
copies costs a few batched calls rather than 2N rounds of small ones.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.func import vmap

from learned_optim.meta.inner_step import optimizer_step
from learned_optim.meta.unroll import InnerState, apply_direction, flat_gradient, meta_loss


def flatten_theta(theta: Mapping[str, Tensor]) -> Tensor:
    """φ as one detached vector, in ``theta``'s key order."""
    return torch.cat([value.detach().reshape(-1) for value in theta.values()])


def unflatten_theta(like: Mapping[str, Tensor], flat: Tensor) -> dict[str, Tensor]:
    """``flat`` cut into tensors named and shaped as ``like``'s."""
    pieces = flat.split([value.numel() for value in like.values()])
    return {name: piece.view_as(value) for (name, value), piece in zip(like.items(), pieces, strict=True)}


def unflatten_copies(like: Mapping[str, Tensor], flat: Tensor) -> dict[str, Tensor]:
    """Rows of ``flat`` (copies × |φ|) cut into tensors named and shaped as ``like``'s, with a leading copy axis."""
    pieces = flat.split([value.numel() for value in like.values()], dim=1)
    return {
        name: piece.reshape(flat.shape[0], *value.shape)
        for (name, value), piece in zip(like.items(), pieces, strict=True)
    }


def evaluate_unroll(
    architecture: Any,
    theta: Mapping[str, Tensor],
    config: Any,
    task: Any,
    inner: InnerState,
    generator: torch.Generator,
    num_steps: int,
    *,
    lr: float,
    split: str = "train",
    update: Any = None,
) -> tuple[Tensor, InnerState]:
    """``unroll.unroll``'s losses and new state (same batches, same arithmetic) without any graph to φ.

    ``update``: the update function to run (default the architecture's; e.g. its ``forward_update``)."""
    names = task.parameter_names

    def leaves(params: dict[str, Tensor]) -> dict[str, Tensor]:
        return {k: (v.detach().requires_grad_() if k in names else v.detach()) for k, v in params.items()}

    params = leaves(inner.params)
    opt_state = inner.opt_state
    loss = task.loss(params, task.sample(generator, split))
    losses = []
    for k in range(num_steps):
        flat_grad = flat_gradient(task, loss, params)
        with torch.no_grad():
            step = torch.tensor(float(inner.step + k + 1))
            direction, opt_state = optimizer_step(
                architecture, theta, config, flat_grad, opt_state, step, names=names, params=params, update=update
            )
            params = leaves(apply_direction(task, params, direction, lr))
        loss = task.loss(params, task.sample(generator, split))
        losses.append(loss.detach())
    params = {k: v.detach() for k, v in params.items()}
    return torch.stack(losses), InnerState(params, opt_state, inner.step + num_steps)


@dataclass
class PESCopies:
    """Every copy of one trajectory, stacked on a leading axis of 2N: pair i runs at φ + ε (row 2i)
    and φ − ε (row 2i + 1). ``perturbation`` holds each pair's ξ, the sum of its ε: ``(N, |φ|)``."""

    params: dict[str, Tensor]
    opt_state: dict[str, Tensor]
    step: int
    perturbation: Tensor

    @property
    def pairs(self) -> int:
        return self.perturbation.shape[0]


def start_pairs(inner: InnerState, count: int, theta: Mapping[str, Tensor]) -> PESCopies:
    """``count`` pairs at the trajectory's start: every copy at ``inner``, ξ = 0."""

    def copies(tensor: Tensor) -> Tensor:
        return tensor.detach().unsqueeze(0).expand(2 * count, *tensor.shape).clone()

    return PESCopies(
        {k: copies(v) for k, v in inner.params.items()},
        {k: copies(v) for k, v in inner.opt_state.items()},
        inner.step,
        torch.zeros(count, flatten_theta(theta).numel()),
    )


def unroll_copies(
    architecture: Any,
    thetas: Mapping[str, Tensor],
    config: Any,
    task: Any,
    copies: PESCopies,
    generator: torch.Generator,
    num_steps: int,
    *,
    lr: float,
) -> tuple[Tensor, dict[str, Tensor], dict[str, Tensor]]:
    """``evaluate_unroll`` of every copy at once, each at its own φ (``thetas``: a leading copy axis),
    all on the same batches: the losses ``(copies, num_steps)``, the new parameters and state.

    ``vmap`` runs the task's loss and the optimizer's update over the copies, so each inner step
    costs one batched call of each instead of 2N small ones; one backward pass of the summed losses
    gives every copy its own gradient (the copies share no tensor)."""
    names = list(task.parameter_names)
    batches = [task.sample(generator, "train") for _ in range(num_steps + 1)]
    losses_of = vmap(task.loss, in_dims=(0, None))

    def direction_of(theta: Any, flat_grad: Tensor, opt_state: Any, params: Any, step: Tensor) -> Any:
        return optimizer_step(architecture, theta, config, flat_grad, opt_state, step, names=names, params=params)

    forward_update = getattr(architecture, "forward_update", None)
    if forward_update is not None:  # a kernel that beats vmap's batched eager step: copy by copy
        directions_of = functools.partial(_copy_by_copy, architecture, config, names, forward_update)
    else:
        directions_of = vmap(direction_of, in_dims=(0, 0, 0, 0, None))
    params = {k: (v.detach().requires_grad_() if k in names else v) for k, v in copies.params.items()}
    opt_state = copies.opt_state
    losses = losses_of(params, batches[0])
    history = []
    for k in range(num_steps):
        grads = torch.autograd.grad(losses.sum(), [params[name] for name in names])
        flat_grads = torch.cat([g.reshape(g.shape[0], -1) for g in grads], dim=1)
        with torch.no_grad():
            step = torch.tensor(float(copies.step + k + 1))
            direction, opt_state = directions_of(thetas, flat_grads, opt_state, params, step)
            pieces = direction.split([params[name][0].numel() for name in names], dim=1)
            params = dict(params)
            for name, piece in zip(names, pieces, strict=True):
                params[name] = (params[name] - lr * piece.view_as(params[name])).requires_grad_()
        losses = losses_of(params, batches[k + 1])
        history.append(losses.detach())
    params = {k: v.detach() for k, v in params.items()}
    return torch.stack(history, dim=1), params, opt_state


def _copy_by_copy(
    architecture: Any,
    config: Any,
    names: list[str],
    update: Any,
    thetas: Mapping[str, Tensor],
    flat_grads: Tensor,
    opt_state: Mapping[str, Tensor],
    params: Mapping[str, Tensor],
    step: Tensor,
) -> tuple[Tensor, dict[str, Tensor]]:
    """What the vmapped update returns, computed one copy after another with ``update``."""
    directions, states = [], []
    for index in range(flat_grads.shape[0]):
        direction, state = optimizer_step(
            architecture,
            {k: v[index].contiguous() for k, v in thetas.items()},
            config,
            flat_grads[index],
            {k: v[index] for k, v in opt_state.items()},
            step,
            names=names,
            params={k: v[index] for k, v in params.items()},
            update=update,
        )
        directions.append(direction)
        states.append(state)
    return torch.stack(directions), {key: torch.stack([state[key] for state in states]) for key in states[0]}


def pes_estimate(
    architecture: Any,
    theta: Mapping[str, Tensor],
    config: Any,
    task: Any,
    copies: PESCopies,
    generator: torch.Generator,
    num_steps: int,
    *,
    sigma: float,
    lr: float,
    weighting: str = "mean",
    mask: Tensor | None = None,
) -> tuple[Tensor, Tensor, PESCopies]:
    """One unroll of every pair: the flat gradient estimate ĝ, every copy's losses (2N × K) and the copies after it.

    The perturbations are drawn from ``generator`` first, then the unroll's batches, which every
    copy shares. ``mask`` (0/1 per coordinate of the flat φ) perturbs only its 1s: the others stay
    fixed, their estimate is 0 and the loss differences carry none of their noise.
    """
    phi = flatten_theta(theta)
    noises = torch.stack([torch.randn(phi.shape, generator=generator) * sigma for _ in range(copies.pairs)])
    if mask is not None:
        noises = noises * mask
    signs = torch.tensor([1.0, -1.0]).repeat(copies.pairs).unsqueeze(1)
    perturbed = phi + signs * noises.repeat_interleave(2, dim=0)
    thetas = unflatten_copies(theta, perturbed)
    losses, params, opt_state = unroll_copies(architecture, thetas, config, task, copies, generator, num_steps, lr=lr)
    meta_losses = torch.stack([meta_loss(row, weighting) for row in losses]).view(copies.pairs, 2)
    perturbation = copies.perturbation + noises
    estimate = (perturbation * (meta_losses[:, 0] - meta_losses[:, 1]).unsqueeze(1)).sum(0)
    estimate /= 2 * copies.pairs * sigma**2
    return estimate, losses, PESCopies(params, opt_state, copies.step + num_steps, perturbation)

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
inner step.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from learned_optim.meta.inner_step import optimizer_step
from learned_optim.meta.unroll import InnerState, apply_direction, flat_gradient, meta_loss


def flatten_theta(theta: Mapping[str, Tensor]) -> Tensor:
    """φ as one detached vector, in ``theta``'s key order."""
    return torch.cat([value.detach().reshape(-1) for value in theta.values()])


def unflatten_theta(like: Mapping[str, Tensor], flat: Tensor) -> dict[str, Tensor]:
    """``flat`` cut into tensors named and shaped as ``like``'s."""
    pieces = flat.split([value.numel() for value in like.values()])
    return {name: piece.view_as(value) for (name, value), piece in zip(like.items(), pieces, strict=True)}


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
) -> tuple[Tensor, InnerState]:
    """``unroll.unroll``'s losses and new state (same batches, same arithmetic) without any graph to φ."""
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
                architecture, theta, config, flat_grad, opt_state, step, names=names, params=params
            )
            params = leaves(apply_direction(task, params, direction, lr))
        loss = task.loss(params, task.sample(generator, split))
        losses.append(loss.detach())
    params = {k: v.detach() for k, v in params.items()}
    return torch.stack(losses), InnerState(params, opt_state, inner.step + num_steps)


@dataclass
class AntitheticPair:
    """The two copies of one trajectory (run at φ + ε and φ − ε each unroll) and ξ, the sum of their ε."""

    plus: InnerState
    minus: InnerState
    perturbation: Tensor


def start_pairs(inner: InnerState, count: int, theta: Mapping[str, Tensor]) -> list[AntitheticPair]:
    """``count`` pairs at the trajectory's start: both copies at ``inner``, ξ = 0."""
    zeros = torch.zeros_like(flatten_theta(theta))
    return [AntitheticPair(inner, inner, zeros) for _ in range(count)]


def pes_estimate(
    architecture: Any,
    theta: Mapping[str, Tensor],
    config: Any,
    task: Any,
    pairs: list[AntitheticPair],
    generator: torch.Generator,
    num_steps: int,
    *,
    sigma: float,
    lr: float,
    weighting: str = "mean",
) -> tuple[Tensor, Tensor, list[AntitheticPair]]:
    """One unroll of every pair: the flat gradient estimate ĝ, every copy's losses (2N × K) and the pairs after it.

    The perturbations are drawn from ``generator`` first; then every copy replays the same
    stretch of the generator, so all copies see the same batches and the generator ends where
    one unroll leaves it.
    """
    phi = flatten_theta(theta)
    noises = [torch.randn(phi.shape, generator=generator) * sigma for _ in pairs]
    batches = generator.get_state()
    estimate = torch.zeros_like(phi)
    all_losses, after = [], []
    for pair, noise in zip(pairs, noises, strict=True):
        perturbation = pair.perturbation + noise
        meta_losses, states = [], []
        for sign, inner in ((1.0, pair.plus), (-1.0, pair.minus)):
            generator.set_state(batches)
            perturbed = unflatten_theta(theta, phi + sign * noise)
            losses, state = evaluate_unroll(architecture, perturbed, config, task, inner, generator, num_steps, lr=lr)
            meta_losses.append(meta_loss(losses, weighting))
            states.append(state)
            all_losses.append(losses)
        estimate += perturbation * (meta_losses[0] - meta_losses[1])
        after.append(AntitheticPair(states[0], states[1], perturbation))
    estimate /= 2 * len(pairs) * sigma**2
    return estimate, torch.stack(all_losses), after

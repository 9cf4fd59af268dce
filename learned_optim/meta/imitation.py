"""Imitation warm start: train the learned optimizer to reproduce a hand-designed teacher.

Along the teacher's own trajectory θ_{t+1} = θ_t − u_t, the learned optimizer sees the same
gradients and is trained, by truncated BPTT through its state, to minimise

    Σ_t ‖lr · d_t − u_t‖² / Σ_t ‖u_t‖²

which gives meta-training a starting point that already descends.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from learned_optim.meta.inner_step import init_optimizer_state, optimizer_step
from learned_optim.meta.teachers import init_teacher_state, teacher_update
from learned_optim.meta.unroll import apply_direction, flat_gradient, flat_parameters


def imitation_trajectory(
    architecture: Any,
    theta: dict[str, Tensor],
    config: Any,
    task: Any,
    generator: torch.Generator,
    *,
    teacher: str,
    teacher_lr: float,
    horizon: int,
    unroll: int,
    inner_lr: float,
    meta_step,
) -> list[float]:
    """Follow the teacher for ``horizon`` steps; call ``meta_step(loss)`` after every ``unroll`` steps."""
    names = task.parameter_names
    params = task.init(generator)
    flat = flat_parameters(task, params)
    teacher_state = init_teacher_state(teacher, flat)
    opt_state = init_optimizer_state(architecture, config, names, params)
    losses = []
    for begin in range(0, horizon, unroll):
        error = flat.new_zeros(())
        scale = flat.new_zeros(())
        for t in range(begin + 1, min(begin + unroll, horizon) + 1):
            leaves = {k: (v.detach().requires_grad_() if k in names else v) for k, v in params.items()}
            loss = task.loss(leaves, task.sample(generator, "train"))
            flat_grad = flat_gradient(task, loss, leaves)
            target, teacher_state = teacher_update(teacher, flat_grad, teacher_state, t, teacher_lr)
            direction, opt_state = optimizer_step(
                architecture, theta, config, flat_grad, opt_state, torch.tensor(float(t)), names=names, params=leaves
            )
            error = error + ((inner_lr * direction - target) ** 2).sum()
            scale = scale + (target**2).sum()
            params = apply_direction(task, {k: v.detach() for k, v in params.items()}, target, 1.0)
        imitation_loss = error / scale.clamp_min(1e-20)
        meta_step(imitation_loss)
        losses.append(float(imitation_loss.detach()))
        opt_state = {k: v.detach() for k, v in opt_state.items()}
    return losses

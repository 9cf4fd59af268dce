"""Hand-designed optimizers as pure functions, the teachers of imitation learning.

Each returns the update u_t that the teacher subtracts from θ (θ_{t+1} = θ_t − u_t)::

    sgd:       u = α g
    momentum:  b = μ b + g,                          u = α b
    adam:      m, v as in Adam (β1 = 0.9, β2 = 0.999),  u = α m̂ / (√v̂ + ε)
"""

from __future__ import annotations

import torch
from torch import Tensor

from learned_optim.features import adam_normalized, ema

TEACHERS = ("sgd", "momentum", "adam")


def init_teacher_state(name: str, flat_param: Tensor) -> dict[str, Tensor]:
    if name not in TEACHERS:
        raise ValueError(f"unknown teacher {name!r}; choose from {TEACHERS}")
    if name == "sgd":
        return {}
    if name == "momentum":
        return {"buffer": torch.zeros_like(flat_param)}
    return {"exp_avg": torch.zeros_like(flat_param), "exp_avg_sq": torch.zeros_like(flat_param)}


def teacher_update(
    name: str, grad: Tensor, state: dict[str, Tensor], step: int, lr: float, momentum: float = 0.9
) -> tuple[Tensor, dict[str, Tensor]]:
    if name == "sgd":
        return lr * grad, state
    if name == "momentum":
        buffer = state["buffer"] * momentum + grad
        return lr * buffer, {"buffer": buffer}
    exp_avg = ema(state["exp_avg"], grad, 0.9)
    exp_avg_sq = ema(state["exp_avg_sq"], grad * grad, 0.999)
    m_hat, _ = adam_normalized(grad, exp_avg, exp_avg_sq, float(step), 0.9, 0.999, 1e-8)
    return lr * m_hat, {"exp_avg": exp_avg, "exp_avg_sq": exp_avg_sq}

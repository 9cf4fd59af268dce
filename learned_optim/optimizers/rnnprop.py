r"""RNNprop of Lv, Jiang & Li 2017.

"Learning Gradient Descent: Better Generalization and Longer Horizons" (ICML 2017,
arXiv:1703.03633). The network sees Adam-normalised inputs, so it is invariant to the scale of
the gradient, and its output is bounded by a tanh. For a coordinate with gradient g_t::

    m_t = β1 m_{t−1} + (1 − β1) g_t,   v_t = β2 v_{t−1} + (1 − β2) g_t²      β1 = β2 = 0.95
    m̂_t = m_t / (1 − β1^t),           v̂_t = v_t / (1 − β2^t)
    x_t = ELU(A · [m̂_t / (√v̂_t + ε),  g_t / (√v̂_t + ε)] + a)               input layer, 20 units
    y_t, s_{t+1} = LSTM_φ(x_t, s_t)                                          2 layers, 20 hidden
    d_t = step_scale · tanh(W y_t + b)                                      step_scale = 0.1
    θ_{t+1} = θ_t − lr · d_t

A coordinate whose gradient has been exactly zero since the start (v_t = 0) has d_t = 0
(``learned_optim.features.untouched``): frozen rows stay frozen, as with SGD and Adam. Every step is
bounded by ``lr · step_scale`` per coordinate. State per coordinate: m, v and the
LSTM's h and c per layer (2 + 2 · num_layers · hidden_size = 82 numbers by default).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn import functional

from learned_optim.base import LearnedOptimizer, compute_dtype_for
from learned_optim.features import adam_normalized, ema, untouched
from learned_optim.nets import (
    init_linear,
    init_lstm,
    linear,
    lstm,
    pack_lstm_state,
    tanh,
    unpack_lstm_state,
    zero_lstm_state,
)
from learned_optim.validation import check_beta, check_epsilon, check_positive


@dataclass(frozen=True)
class RNNpropConfig:
    """Architecture hyperparameters of :class:`RNNprop`."""

    hidden_size: int = 20
    num_layers: int = 2
    beta1: float = 0.95
    beta2: float = 0.95
    eps: float = 1e-8
    step_scale: float = 0.1

    def __post_init__(self) -> None:
        for name in ("hidden_size", "num_layers", "step_scale"):
            check_positive(name, getattr(self, name))
        check_beta(0, self.beta1)
        check_beta(1, self.beta2)
        check_epsilon(self.eps)


def init_theta(config: RNNpropConfig, generator: torch.Generator | None = None) -> dict[str, Tensor]:
    """Fresh (untrained) network weights, float32 on the CPU."""
    theta = init_linear("input", 2, config.hidden_size, generator)
    theta.update(init_lstm("lstm", config.hidden_size, config.hidden_size, config.num_layers, generator))
    theta.update(init_linear("output", config.hidden_size, 1, generator))
    return theta


def init_state(param: Tensor, config: RNNpropConfig) -> dict[str, Tensor]:
    """Zero moments shaped like ``param`` and zero LSTM states shaped ``(hidden_size, *param.shape)``."""
    dtype = compute_dtype_for(param.dtype)
    state = {
        "exp_avg": torch.zeros(param.shape, dtype=dtype, device=param.device),
        "exp_avg_sq": torch.zeros(param.shape, dtype=dtype, device=param.device),
    }
    state.update(zero_lstm_state(param.shape, config.hidden_size, config.num_layers, dtype=dtype, device=param.device))
    return state


def update(
    theta: dict[str, Tensor], grad: Tensor, state: dict[str, Tensor], step: Tensor | float, config: RNNpropConfig
) -> tuple[Tensor, dict[str, Tensor]]:
    """Pure update at 1-based ``step``: returns the direction ``d_t`` and the new state."""
    numel, hidden_size = grad.numel(), config.hidden_size
    g = grad.reshape(numel).to(theta["output.weight"].dtype)
    exp_avg = ema(state["exp_avg"].reshape(numel), g, config.beta1)
    exp_avg_sq = ema(state["exp_avg_sq"].reshape(numel), g * g, config.beta2)
    m_tilde, g_tilde = adam_normalized(g, exp_avg, exp_avg_sq, step, config.beta1, config.beta2, config.eps)
    x = functional.elu(linear(theta, "input", torch.stack((m_tilde, g_tilde))))
    hidden = unpack_lstm_state(state, hidden_size, config.num_layers, numel)
    top, hidden = lstm(theta, "lstm", x, hidden)
    direction = tanh(linear(theta, "output", top)) * config.step_scale
    # Zero gradients since the start (v still 0): no move, though the network's output is not 0.
    direction = torch.where(untouched(g, (state["exp_avg_sq"].reshape(numel),)), 0.0, direction[0])
    new_state = {
        "exp_avg": exp_avg.reshape(grad.shape),
        "exp_avg_sq": exp_avg_sq.reshape(grad.shape),
        **pack_lstm_state(hidden, state),
    }
    return direction.reshape(grad.shape), new_state


class RNNprop(LearnedOptimizer):
    __doc__ = __doc__
    architecture = "rnnprop"
    Config = RNNpropConfig
    init_theta = staticmethod(init_theta)
    init_state = staticmethod(init_state)
    update = staticmethod(update)

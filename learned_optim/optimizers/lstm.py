r"""Coordinatewise LSTM optimizer of Andrychowicz et al. 2016.

"Learning to learn by gradient descent by gradient descent" (NeurIPS 2016, arXiv:1606.04474).
One small LSTM with weights φ is shared by all coordinates of all parameters; each coordinate
keeps its own hidden state. For a coordinate with gradient g_t::

    x_t           = preprocess(g_t)                      (log|g|/p, sign g), appendix A; p = 10
    y_t, s_{t+1}  = LSTM_φ(x_t, s_t)                     2 layers, 20 hidden units
    d_t           = output_scale · (W y_t + b)           output_scale = 0.1
    θ_{t+1}       = θ_t − lr · d_t                       lr = 1 is the step it was trained with

A coordinate whose gradient has been exactly zero since the start keeps d_t = 0 and its zero state
(``learned_optim.features.untouched``): frozen rows stay frozen, as with SGD and Adam.

The paper writes θ_{t+1} = θ_t + g_t with g_t the network output; we use the torch.optim sign
convention (subtract a direction) so that ``lr`` scales the learned step like any other optimizer.

State per coordinate: h and c of each layer, 2 · num_layers · hidden_size numbers (80 by default).

Option ``normalize_gradient=True`` (off by default, so the paper's optimizer is unchanged): the
network reads the gradient divided by its running RMS, as Adam and RNNprop do::

    v_t = β2 v_{t−1} + (1 − β2) g_t²,   v̂_t = v_t / (1 − β2^t)               β2 = 0.999
    x_t = preprocess(g_t / (√v̂_t + ε))

so that multiplying a task's loss (and every gradient) by a constant leaves every step unchanged
(up to ε), and one network can serve tasks whose gradients differ by orders of magnitude. It keeps
v, one more number per coordinate.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from learned_optim.base import LearnedOptimizer, compute_dtype_for
from learned_optim.features import ema, log_sign, rms_denominator, untouched
from learned_optim.nets import init_linear, init_lstm, linear, lstm, pack_lstm_state, unpack_lstm_state, zero_lstm_state
from learned_optim.validation import check_beta, check_epsilon, check_positive


@dataclass(frozen=True)
class LSTMConfig:
    """Architecture hyperparameters of :class:`LSTMOptimizer`."""

    hidden_size: int = 20
    num_layers: int = 2
    preprocess_p: float = 10.0
    output_scale: float = 0.1
    normalize_gradient: bool = False
    beta2: float = 0.999
    eps: float = 1e-8

    def __post_init__(self) -> None:
        for name in ("hidden_size", "num_layers", "preprocess_p", "output_scale"):
            check_positive(name, getattr(self, name))
        check_beta(1, self.beta2)
        check_epsilon(self.eps)


def init_theta(config: LSTMConfig, generator: torch.Generator | None = None) -> dict[str, Tensor]:
    """Fresh (untrained) network weights, float32 on the CPU."""
    theta = init_lstm("lstm", 2, config.hidden_size, config.num_layers, generator)
    theta.update(init_linear("output", config.hidden_size, 1, generator))
    return theta


def init_state(param: Tensor, config: LSTMConfig) -> dict[str, Tensor]:
    """Zero hidden and cell states, shaped ``(hidden_size, *param.shape)`` (feature-major), and with
    ``normalize_gradient`` a zero second moment shaped like ``param``."""
    dtype = compute_dtype_for(param.dtype)
    state = zero_lstm_state(param.shape, config.hidden_size, config.num_layers, dtype=dtype, device=param.device)
    if config.normalize_gradient:
        state["exp_avg_sq"] = torch.zeros(param.shape, dtype=dtype, device=param.device)
    return state


def update(
    theta: dict[str, Tensor], grad: Tensor, state: dict[str, Tensor], step: Tensor | float, config: LSTMConfig
) -> tuple[Tensor, dict[str, Tensor]]:
    """Pure update: returns the direction ``d_t`` (shaped like ``grad``) and the new state.

    ``step`` (1-based) is read only with ``normalize_gradient`` (v's bias correction); it is
    accepted either way so that every optimizer's update has the same signature.
    """
    numel, hidden_size = grad.numel(), config.hidden_size
    g = grad.reshape(numel).to(theta["output.weight"].dtype)
    hidden = unpack_lstm_state(state, hidden_size, config.num_layers, numel)
    # Zero gradients since the start: no move, and the LSTM's state stays at its zero start.
    still = untouched(g, (tensor for pair in hidden for tensor in pair))
    features, extra = g, {}
    if config.normalize_gradient:
        exp_avg_sq = ema(state["exp_avg_sq"].reshape(numel), g * g, config.beta2)
        features = g / rms_denominator(exp_avg_sq, step, config.beta2, config.eps)
        extra = {"exp_avg_sq": exp_avg_sq.reshape(grad.shape)}
    top, new_hidden = lstm(theta, "lstm", log_sign(features, config.preprocess_p), hidden)
    direction = torch.where(still, 0.0, linear(theta, "output", top)[0] * config.output_scale)
    new_hidden = [
        (torch.where(still, h, new_h), torch.where(still, c, new_c))
        for (h, c), (new_h, new_c) in zip(hidden, new_hidden, strict=True)
    ]
    return direction.reshape(grad.shape), {**pack_lstm_state(new_hidden, state), **extra}


class LSTMOptimizer(LearnedOptimizer):
    __doc__ = __doc__
    architecture = "lstm"
    Config = LSTMConfig
    init_theta = staticmethod(init_theta)
    init_state = staticmethod(init_state)
    update = staticmethod(update)

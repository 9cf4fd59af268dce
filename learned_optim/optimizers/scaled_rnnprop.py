r"""RNNprop with a learned per-tensor step scale: how far each tensor moves, learned from its statistics.

RNNprop (``learned_optim.optimizers.rnnprop``) sees Adam-normalised inputs, which makes it blind
to every scale: it moves each coordinate of a 2,304-input classifier as far as one of a 9-input
convolution, although PyTorch initialises the first's weights 16× smaller (``1/√fan-in``). This variant keeps
RNNprop's per-coordinate direction d_t and multiplies it, per tensor, by the step scale s_t of
Celo2's scale network (``learned_optim.optimizers.celo2_step_scale``, which has the math), read
from nine statistics of the whole tensor: the parameter's and gradient's RMS, the ratio and
cosine of RNNprop's momentum m_t to the gradient, ln t and ln n::

    d_t = RNNprop's direction (m_t, v_t, the LSTM states: unchanged)
    z_t = (ln ‖p‖ₘ, ln ‖g‖ₘ, ln(‖m_t‖ₘ/‖g‖ₘ) twice, cos(m_t, g) twice, ln t, ln n, 0)
    s_t = exp(L · tanh(o(z_t) / L)),  L = ln 100                   (0.01 ≤ s_t ≤ 100)
    θ_{t+1} = θ_t − lr · (s_t · d_t + weight_decay · θ_t)

(the scale network's momentum inputs are a fast and a slow momentum; RNNprop has one, given for
both). The scale network's output layer starts at zero, so fresh it gives s = 1 exactly and the
optimizer is RNNprop bit for bit. It is a per-tensor architecture (``per_tensor``): every engine
hands the update whole tensors, so no statistic spans two tensors or part of one (under FSDP2 a
sharded parameter is gathered). State per coordinate: RNNprop's; the scale keeps none.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from learned_optim.base import LearnedOptimizer
from learned_optim.optimizers import celo2_step_scale, rnnprop
from learned_optim.validation import check_positive


@dataclass(frozen=True)
class ScaledRNNpropConfig(rnnprop.RNNpropConfig):
    """RNNprop's hyperparameters and the width of the scale network's hidden layer."""

    step_scale_hidden: int = 16

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive("step_scale_hidden", self.step_scale_hidden)


def init_theta(config: ScaledRNNpropConfig, generator: torch.Generator | None = None) -> dict[str, Tensor]:
    """RNNprop's fresh weights (the same draws as ``RNNprop`` from the same generator), then the
    scale network's, whose zero output layer makes s = 1."""
    theta = rnnprop.init_theta(config, generator)
    theta.update(celo2_step_scale.init_scale_theta(config.step_scale_hidden, generator))
    return theta


def init_state(
    param: Tensor, config: ScaledRNNpropConfig, options: Mapping[str, Any] | None = None
) -> dict[str, Tensor]:
    """RNNprop's state for ``param`` (moments and LSTM states)."""
    return rnnprop.init_state(param, config)


def update(
    theta: Mapping[str, Tensor],
    grad: Tensor,
    state: Mapping[str, Tensor],
    step: Tensor | float,
    config: ScaledRNNpropConfig,
    *,
    param: Tensor,
    options: Mapping[str, Any],
) -> tuple[Tensor, dict[str, Tensor]]:
    """Pure per-tensor update at 1-based ``step``: ``D = s · d + weight_decay · param`` and the new state."""
    dtype = theta["output.weight"].dtype
    numel = grad.numel()
    # RNNprop's own (*features, numel) layout, as the coordinatewise engine runs it.
    flat_grad = grad.reshape(numel).to(dtype)
    flat_state = {key: value.reshape(*value.shape[: value.dim() - grad.dim()], numel) for key, value in state.items()}
    # A non-finite gradient coordinate neither moves nor enters the state or the statistics, as in
    # every coordinatewise architecture's step (base.LearnedOptimizer._update_parameter).
    finite = torch.isfinite(flat_grad)
    flat_grad = torch.where(finite, flat_grad, 0.0)
    direction, new_flat = rnnprop.update(dict(theta), flat_grad, flat_state, step, config)
    if torch.compiler.is_compiling():
        # Compiled into one kernel with the LSTM, this mask gives wrong LSTM states (Inductor,
        # torch 2.14, a compiled training step; tests/test_compile.py): compile it apart.
        torch._dynamo.graph_break()
    new_flat = {key: torch.where(finite, value, flat_state[key]) for key, value in new_flat.items()}
    momentum = new_flat["exp_avg"]  # the statistics read tensors flat
    statistics = celo2_step_scale.statistics(param.to(dtype), flat_grad, momentum, momentum, step, adamw=False)
    scale = celo2_step_scale.step_scale(theta, statistics)
    direction = torch.where(finite, direction * scale, 0.0).reshape(grad.shape)
    if options["weight_decay"] != 0:
        direction = direction + options["weight_decay"] * param.to(dtype)
    return direction, {key: value.reshape(state[key].shape) for key, value in new_flat.items()}


class ScaledRNNprop(LearnedOptimizer):
    __doc__ = __doc__
    architecture = "scaled-rnnprop"
    extends = "rnnprop"  # RNNprop weights start it (meta-training's initial_weights), the scale fresh
    Config = ScaledRNNpropConfig
    per_tensor = True
    init_theta = staticmethod(init_theta)
    init_state = staticmethod(init_state)
    update = staticmethod(update)

"""Celo2's learned step transcribed as the reference (PyLO's ``CELO2_naive``) computes it.

The oracle that ``tests/test_celo2.py`` holds the package's blocked ``celo2.learned_step`` to, in
float64: 30 feature rows, each normalised over the tensor's last two axes, then the MLP on every
coordinate, then Newton–Schulz and the final normalisation, each a full-size pass.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from learned_optim.optimizers.celo2 import (
    Celo2Config,
    _decays,
    _last_two_axes,
    _rsqrt_floored,
    factored_dims,
    newton_schulz,
)


def normalize_second_moment(x: Tensor, axes: tuple[int, ...], eps: float = 1e-9) -> Tensor:
    """``x / √(mean(x²) + eps)``, the mean over ``axes``."""
    return x * torch.rsqrt(eps + (x * x).mean(dim=axes, keepdim=True))


def network(theta: Mapping[str, Tensor], features: Tensor, config: Celo2Config) -> Tensor:
    """The split-input MLP on feature-major inputs ``(in, n)``: returns ``(output_size, n)``.

    The split first layer Σ_i x_i W_i is one product with the stacked W_i (the leading groups only
    when there are fewer features).
    """
    activation = torch.relu if config.activation == "relu" else torch.tanh
    width = features.shape[0]
    first = torch.cat([theta[f"w0.{i}"] for i in range(len(config.feature_dims))])[:width]
    hidden = activation(first.T @ features + theta["b0"].unsqueeze(1))
    for index in range(config.ff_hidden_layers):
        hidden = theta[f"dense_w.{index}"].T @ hidden + theta[f"dense_b.{index}"].unsqueeze(1)
        if index != config.ff_hidden_layers - 1:
            hidden = activation(hidden)
    return hidden


def learned_step(
    theta: Mapping[str, Tensor],
    param: Tensor,
    grad: Tensor,
    state: Mapping[str, Tensor],
    config: Celo2Config,
    options: Mapping[str, Any],
) -> tuple[Tensor, dict[str, Tensor]]:
    """The learned path's normalised step u (before weight decay) and new accumulators, written as
    the reference computes them: 30 normalised feature rows, then the MLP. The package's
    ``celo2.learned_step`` computes the same numbers (to float rounding) faster; the tests hold it
    to this transcription."""
    shape, ndim = param.shape, param.dim()
    g = grad.unsqueeze(0)
    beta_m = _decays(config.initial_momentum_decays, g, ndim)
    beta_r = _decays(config.initial_rms_decays, g, ndim).clamp(0.0, 1.0)
    beta_f = _decays(config.initial_adafactor_decays, g, ndim).clamp(0.0, 1.0)
    momentum = state["momentum"] * beta_m + (1 - beta_m) * g
    rms = state["rms"] * beta_r + (1 - beta_r) * (g * g)
    g_rep = g.expand(beta_f.shape[0], *shape)
    grad_sq = g_rep * g_rep + 1e-30
    new_state = {"momentum": momentum, "rms": rms}
    dims = factored_dims(shape)
    if dims is None:
        factored = beta_f * state["factored"] + (1 - beta_f) * grad_sq
        fac_g = g_rep * _rsqrt_floored(factored + 1e-9)
        new_state["factored"] = factored
    else:
        rows, cols = dims
        reduced = beta_f.view(-1, *[1] * (ndim - 1))
        row = reduced * state["factored_row"] + (1 - reduced) * grad_sq.mean(dim=cols + 1)
        col = reduced * state["factored_col"] + (1 - reduced) * grad_sq.mean(dim=rows + 1)
        rows_in_row = 1 + (rows - 1 if rows > cols else rows)
        row_factor = _rsqrt_floored(row / (row.mean(dim=rows_in_row, keepdim=True) + 1e-9)).unsqueeze(cols + 1)
        col_factor = _rsqrt_floored(col).unsqueeze(rows + 1)
        fac_g = g_rep * row_factor * col_factor
        new_state["factored_row"], new_state["factored_col"] = row, col
    rsqrt = torch.rsqrt(rms + 1e-8)
    features = [g, g.clamp(-0.1, 0.1), param.unsqueeze(0), momentum, rms, momentum * rsqrt, rsqrt, fac_g, g * rsqrt]
    if dims is not None:
        full = (-1, *shape)
        row_feature = row.unsqueeze(cols + 1).expand(full)
        col_feature = col.unsqueeze(rows + 1).expand(full)
        features += [
            row_feature,
            col_feature,
            torch.rsqrt(row_feature + 1e-8),
            torch.rsqrt(col_feature + 1e-8),
            momentum * row_factor * col_factor,
        ]
    axes = _last_two_axes(g, ndim)
    inputs = torch.cat([normalize_second_moment(x, axes) for x in features])
    output = network(theta, inputs.reshape(inputs.shape[0], -1), config)
    direction, magnitude = output[0].view(shape), output[1].view(shape)
    scale = torch.exp(magnitude * options["exp_mult"])
    if options["param_scale_mult"]:
        scale = torch.sqrt((param * param).mean() + 1e-9) * scale
    step = direction * scale
    if options["orthogonalize"] and ndim >= 2:
        step = newton_schulz(step, config.ns_coeffs, config.ns_iters, config.ns_eps)
    step = normalize_second_moment(step, _last_two_axes(step, ndim)) * options["rmsmult"]
    return step, new_state

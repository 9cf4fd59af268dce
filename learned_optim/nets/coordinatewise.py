"""A linear layer and a stacked LSTM applied independently to every coordinate.

LSTM cell (Hochreiter & Schmidhuber 1997, gate order i, f, g, o as in ``torch.nn.LSTM``)::

    [i, f, g, o] = x W_ihᵀ + h W_hhᵀ + b
    c' = σ(f) ⊙ c + σ(i) ⊙ tanh(g)
    h' = σ(o) ⊙ tanh(c')
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

Hidden = list[tuple[Tensor, Tensor]]


def _uniform(shape: tuple[int, ...], bound: float, generator: torch.Generator | None) -> Tensor:
    return (torch.rand(shape, generator=generator, dtype=torch.float32) * 2 - 1) * bound


def init_linear(
    prefix: str, in_features: int, out_features: int, generator: torch.Generator | None
) -> dict[str, Tensor]:
    """Weights of ``linear`` under ``prefix``, drawn like ``torch.nn.Linear``'s default."""
    bound = 1.0 / math.sqrt(in_features)
    return {
        f"{prefix}.weight": _uniform((out_features, in_features), bound, generator),
        f"{prefix}.bias": _uniform((out_features,), bound, generator),
    }


def linear(theta: dict[str, Tensor], prefix: str, x: Tensor) -> Tensor:
    """``x Wᵀ + b`` with the weights stored under ``prefix``."""
    return torch.addmm(theta[f"{prefix}.bias"], x, theta[f"{prefix}.weight"].t())


def init_lstm(
    prefix: str,
    input_size: int,
    hidden_size: int,
    num_layers: int,
    generator: torch.Generator | None,
    forget_bias: float = 1.0,
) -> dict[str, Tensor]:
    """Weights of a ``num_layers`` LSTM; the forget-gate bias starts at ``forget_bias`` so the
    cell remembers by default (Gers et al. 2000)."""
    bound = 1.0 / math.sqrt(hidden_size)
    theta: dict[str, Tensor] = {}
    for layer in range(num_layers):
        layer_input = input_size if layer == 0 else hidden_size
        bias = _uniform((4 * hidden_size,), bound, generator)
        bias[hidden_size : 2 * hidden_size] += forget_bias
        theta[f"{prefix}.{layer}.weight_ih"] = _uniform((4 * hidden_size, layer_input), bound, generator)
        theta[f"{prefix}.{layer}.weight_hh"] = _uniform((4 * hidden_size, hidden_size), bound, generator)
        theta[f"{prefix}.{layer}.bias"] = bias
    return theta


def lstm(theta: dict[str, Tensor], prefix: str, x: Tensor, hidden: Hidden) -> tuple[Tensor, Hidden]:
    """Run one time step of the stacked LSTM on ``x`` of shape ``(N, input_size)``.

    ``hidden`` holds ``(h, c)`` of shape ``(N, hidden_size)`` per layer; returns the top layer's
    output and the new ``(h, c)`` per layer.
    """
    new_hidden: Hidden = []
    for layer, (h, c) in enumerate(hidden):
        gates = torch.addmm(theta[f"{prefix}.{layer}.bias"], x, theta[f"{prefix}.{layer}.weight_ih"].t())
        gates = torch.addmm(gates, h, theta[f"{prefix}.{layer}.weight_hh"].t())
        i, f, g, o = gates.chunk(4, dim=-1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        new_hidden.append((h, c))
        x = h
    return x, new_hidden

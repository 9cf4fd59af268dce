"""A linear layer and a stacked LSTM applied independently to every coordinate.

LSTM cell (Hochreiter & Schmidhuber 1997, gate order i, f, g, o as in ``torch.nn.LSTM``)::

    [i; f; g; o] = [W_ih W_hh] [x; h] + b        (feature-major: x is (input, N), h and c are (H, N))
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
    """``W x + b`` for feature-major ``x`` of shape ``(in_features, N)``."""
    return torch.addmm(theta[f"{prefix}.bias"].unsqueeze(1), theta[f"{prefix}.weight"], x)


def init_lstm(
    prefix: str,
    input_size: int,
    hidden_size: int,
    num_layers: int,
    generator: torch.Generator | None,
    forget_bias: float = 1.0,
) -> dict[str, Tensor]:
    """Weights of a ``num_layers`` LSTM; the forget-gate bias starts at ``forget_bias`` so the
    cell remembers by default (Gers et al. 2000).

    Each layer stores ``[W_ih  W_hh]`` as one ``(4H, input + H)`` matrix: one matrix product per
    layer and step is several times faster than two for these thin shapes.
    """
    bound = 1.0 / math.sqrt(hidden_size)
    theta: dict[str, Tensor] = {}
    for layer in range(num_layers):
        layer_input = input_size if layer == 0 else hidden_size
        bias = _uniform((4 * hidden_size,), bound, generator)
        bias[hidden_size : 2 * hidden_size] += forget_bias
        theta[f"{prefix}.{layer}.weight"] = _uniform((4 * hidden_size, layer_input + hidden_size), bound, generator)
        theta[f"{prefix}.{layer}.bias"] = bias
    return theta


def tanh(x: Tensor) -> Tensor:
    """``tanh``; on the CPU computed as ``2σ(2x) − 1``, the same function, because ATen's CPU
    tanh is several times slower than its sigmoid on common x86 CPUs."""
    if x.device.type == "cpu":
        return torch.sigmoid(x * 2) * 2 - 1
    return torch.tanh(x)


def lstm(theta: dict[str, Tensor], prefix: str, x: Tensor, hidden: Hidden) -> tuple[Tensor, Hidden]:
    """Run one time step of the stacked LSTM on feature-major ``x`` of shape ``(input_size, N)``.

    ``hidden`` holds ``(h, c)`` of shape ``(hidden_size, N)`` per layer; returns the top layer's
    output and the new ``(h, c)`` per layer.
    """
    new_hidden: Hidden = []
    for layer, (h, c) in enumerate(hidden):
        size = h.shape[0]
        weight, bias = theta[f"{prefix}.{layer}.weight"], theta[f"{prefix}.{layer}.bias"]
        gates = torch.addmm(bias.unsqueeze(1), weight, torch.cat((x, h)))
        # split, not slicing: its backward is one concatenation instead of a zero-filled copy per slice.
        # (Splitting a sigmoid of two gates' block again gives wrong meta-gradients under torch.compile
        # in torch 2.14's Inductor; tests/test_meta.py checks compiled against eager.)
        input_gate, forget_gate, cell, output = gates.split(size)
        c = torch.sigmoid(forget_gate) * c + torch.sigmoid(input_gate) * tanh(cell)
        h = torch.sigmoid(output) * tanh(c)
        new_hidden.append((h, c))
        x = h
    return x, new_hidden


def zero_lstm_state(shape: tuple[int, ...], hidden_size: int, num_layers: int, **tensor_kwargs) -> dict[str, Tensor]:
    """Per-coordinate ``h{layer}``, ``c{layer}`` states, feature-major: ``(hidden_size, *shape)``."""
    state = {}
    for layer in range(num_layers):
        state[f"h{layer}"] = torch.zeros((hidden_size, *shape), **tensor_kwargs)
        state[f"c{layer}"] = torch.zeros((hidden_size, *shape), **tensor_kwargs)
    return state


def unpack_lstm_state(state: dict[str, Tensor], hidden_size: int, num_layers: int, numel: int) -> Hidden:
    """``(h, c)`` per layer as ``(hidden_size, numel)`` matrices, for :func:`lstm`."""
    return [
        (state[f"h{layer}"].reshape(hidden_size, numel), state[f"c{layer}"].reshape(hidden_size, numel))
        for layer in range(num_layers)
    ]


def pack_lstm_state(hidden: Hidden, like: dict[str, Tensor]) -> dict[str, Tensor]:
    """The new ``h{layer}``, ``c{layer}`` entries, shaped like those of ``like``."""
    state = {}
    for layer, (h, c) in enumerate(hidden):
        state[f"h{layer}"] = h.reshape(like[f"h{layer}"].shape)
        state[f"c{layer}"] = c.reshape(like[f"c{layer}"].shape)
    return state

"""Coordinatewise networks shared by several learned optimizers.

Every function here is pure: weights come in as a ``dict[str, Tensor]`` (``theta``), no module
state, no in-place ops, so the same code runs in ``Optimizer.step`` and under ``torch.func``.
Inputs are feature-major ``(features, N)`` matrices: one column per optimizee coordinate, weights
shared by all columns. Feature-major keeps every gate a contiguous block, which makes the
elementwise activations several times faster than on ``(N, features)`` slices.
"""

from learned_optim.nets.coordinatewise import (
    init_linear,
    init_lstm,
    linear,
    lstm,
    pack_lstm_state,
    tanh,
    unpack_lstm_state,
    zero_lstm_state,
)

__all__ = [
    "init_linear",
    "init_lstm",
    "linear",
    "lstm",
    "pack_lstm_state",
    "tanh",
    "unpack_lstm_state",
    "zero_lstm_state",
]

"""Coordinatewise networks shared by several learned optimizers.

Every function here is pure: weights come in as a ``dict[str, Tensor]`` (``theta``), no module
state, no in-place ops, so the same code runs in ``Optimizer.step`` and under ``torch.func``.
Inputs are ``(N, features)`` matrices: one row per optimizee coordinate, weights shared by all rows.
"""

from learned_optim.nets.coordinatewise import init_linear, init_lstm, linear, lstm

__all__ = ["init_linear", "init_lstm", "linear", "lstm"]

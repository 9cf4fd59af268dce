"""Coordinates that have never seen a nonzero gradient stay where they are.

A learned network maps a zero input to a nonzero output through its biases, so without this a
coordinate whose gradient is zero would still move by a constant step. A user who freezes rows by
zeroing their gradients, an embedding row never looked up and the weights of a dead ReLU unit
expect what SGD and Adam do: no move. Every update therefore returns a zero direction (and keeps
its initial state) where the gradient has been exactly zero since the first step. A coordinate
that has seen a nonzero gradient keeps moving on zero gradients, as Adam's momentum does.
"""

from __future__ import annotations

from collections.abc import Iterable

from torch import Tensor


def untouched(grad: Tensor, history: Iterable[Tensor]) -> Tensor:
    """True where ``grad`` (flat, ``(N,)``) is exactly zero and every ``history`` tensor — state that
    starts at zero and stays zero only on zero gradients, shaped ``(N,)`` or feature-major
    ``(k, N)`` — is still zero at that coordinate."""
    mask = grad == 0
    for tensor in history:
        zero = tensor == 0
        mask = mask & (zero if zero.dim() == 1 else zero.all(dim=0))
    return mask

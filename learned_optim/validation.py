"""Argument checks with ``torch.optim``'s wording, shared by every optimizer's config.

A bad value is refused where it is given (the config's constructor), not after a step has
turned parameters into NaN.
"""

from __future__ import annotations


def check_beta(index: int, value: float) -> None:
    """An EMA decay: 0 ≤ β < 1 (β = 1 never forgets its zero start, so bias correction divides by 0)."""
    if not 0.0 <= value < 1.0:
        raise ValueError(f"Invalid beta parameter at index {index}: {value}")


def check_epsilon(value: float) -> None:
    """ε > 0: a coordinate whose gradients were all zero divides 0 by ε."""
    if not value > 0.0:
        raise ValueError(f"Invalid epsilon value: {value}")


def check_positive(name: str, value: float) -> None:
    if not value > 0:
        raise ValueError(f"Invalid {name} value: {value}")


def check_non_negative(name: str, value: float) -> None:
    if not value >= 0:
        raise ValueError(f"Invalid {name} value: {value}")

"""Figures over seeds: mean, sample standard deviation and the two-standard-error verdict.

A diverged seed counts as infinite loss, so the mean of a list holding one is infinite.
"""

from __future__ import annotations

import math


def mean(values: list[float]) -> float:
    return sum(values) / len(values) if values and all(map(math.isfinite, values)) else math.inf


def std(values: list[float]) -> float:
    if len(values) < 2 or not all(map(math.isfinite, values)):
        return math.nan
    m = mean(values)
    return (sum((v - m) ** 2 for v in values) / (len(values) - 1)) ** 0.5


def verdict(candidate: list[float], reference: list[float]) -> str:
    """``better``, ``worse`` or ``tie`` for losses (lower is better), by the 2-standard-error rule."""
    c, r = mean(candidate), mean(reference)
    if math.isinf(c) or math.isinf(r):
        return "tie" if math.isinf(c) and math.isinf(r) else ("worse" if math.isinf(c) else "better")
    standard_error = math.sqrt(std(candidate) ** 2 / len(candidate) + std(reference) ** 2 / len(reference))
    if c < r - 2 * standard_error:
        return "better"
    return "worse" if c > r + 2 * standard_error else "tie"

"""Choosing a baseline's learning rate: the one rule every benchmark protocol applies.

A rate's score is a loss (lower is better) per seed; the chosen rate has the lowest mean score,
and a rate with a diverged seed scores infinite (``stats.mean``), so it is never chosen over one
that trained. On equal scores the first rate offered wins. Protocols differ only in what they
score — the validation loss at a step (``suites``, ``real_suite``), the mean training loss over a
horizon (``l2o_eval``, as in the learned-optimization literature), f on a quadratic
(``quadratic_eval``) — and pass that in. A chosen rate at either end of its grid is flagged:
the best rate may lie beyond it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import TypeVar

from .stats import mean

Candidate = TypeVar("Candidate")


def best(candidates: Iterable[Candidate], scores: Callable[[Candidate], Sequence[float]]) -> Candidate | None:
    """The candidate (a rate, or a cell holding one) whose per-seed ``scores`` have the lowest mean."""
    return min(candidates, key=lambda candidate: mean(list(scores(candidate))), default=None)


def at_grid_edge(lr: float, grid: Sequence[float]) -> bool:
    """Whether ``lr`` is the largest or the smallest rate of ``grid``."""
    return bool(grid) and lr in (max(grid), min(grid))

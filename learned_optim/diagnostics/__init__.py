"""Symmetry diagnostics: Neural-Mechanics conservation laws for any optimizer."""

from learned_optim.diagnostics.monitor import SymmetryMonitor
from learned_optim.diagnostics.symmetry import (
    Structure,
    conserved,
    deviations,
    find_symmetries,
    relative_deviations,
    symmetry_penalty,
    theory_sgd_weight_decay,
)

__all__ = [
    "Structure",
    "SymmetryMonitor",
    "conserved",
    "deviations",
    "find_symmetries",
    "relative_deviations",
    "symmetry_penalty",
    "theory_sgd_weight_decay",
]

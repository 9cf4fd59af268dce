"""Diagnostics for any optimizer: Neural-Mechanics conservation laws, and how much it amplifies rounding."""

from learned_optim.diagnostics.monitor import SymmetryMonitor
from learned_optim.diagnostics.rounding import ROUNDING_SENSITIVITY_LIMIT, rounding_sensitivity
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
    "ROUNDING_SENSITIVITY_LIMIT",
    "Structure",
    "SymmetryMonitor",
    "conserved",
    "deviations",
    "find_symmetries",
    "relative_deviations",
    "rounding_sensitivity",
    "symmetry_penalty",
    "theory_sgd_weight_decay",
]

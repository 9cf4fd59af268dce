"""One module per learned optimizer; ``ARCHITECTURES`` maps a config's architecture name to its class."""

from __future__ import annotations

from learned_optim.base import LearnedOptimizer
from learned_optim.errors import UnknownArchitectureError
from learned_optim.optimizers.celo2 import Celo2, Celo2Config
from learned_optim.optimizers.hamiltonian import Hamiltonian, HamiltonianConfig
from learned_optim.optimizers.lstm import LSTMConfig, LSTMOptimizer
from learned_optim.optimizers.rnnprop import RNNprop, RNNpropConfig
from learned_optim.optimizers.scaled_rnnprop import ScaledRNNprop, ScaledRNNpropConfig
from learned_optim.optimizers.symbolic import BUILTIN_RULES, Symbolic, SymbolicConfig

ARCHITECTURES: dict[str, type[LearnedOptimizer]] = {
    cls.architecture: cls for cls in (LSTMOptimizer, RNNprop, ScaledRNNprop, Hamiltonian, Symbolic, Celo2)
}


def get_architecture(name: str, source: str = "config") -> type[LearnedOptimizer]:
    """The optimizer class registered under ``name``."""
    try:
        return ARCHITECTURES[name]
    except (KeyError, TypeError):
        raise UnknownArchitectureError(
            f"{source}: unknown architecture {name!r}; this version of learned_optim provides "
            f"{sorted(ARCHITECTURES)} (a newer release may provide it)"
        ) from None


__all__ = [
    "ARCHITECTURES",
    "BUILTIN_RULES",
    "Celo2",
    "Celo2Config",
    "Hamiltonian",
    "HamiltonianConfig",
    "LSTMConfig",
    "LSTMOptimizer",
    "RNNprop",
    "RNNpropConfig",
    "ScaledRNNprop",
    "ScaledRNNpropConfig",
    "Symbolic",
    "SymbolicConfig",
    "get_architecture",
]

"""learned_optim: pretrained learned optimizers for PyTorch.

import learned_optim as lo
opt = lo.load("rnnprop-mnist", model.parameters())   # was: torch.optim.Adam(model.parameters())
"""

from learned_optim.base import LearnedOptimizer
from learned_optim.errors import DatasetUnavailableError, UnknownArchitectureError, WeightsError
from learned_optim.hub import (
    Pretrained,
    WeightsNotFoundError,
    from_pretrained,
    list_pretrained,
    load,
    push_to_hub,
    save_pretrained,
)
from learned_optim.optimizers import (
    ARCHITECTURES,
    Celo2,
    Celo2Config,
    Hamiltonian,
    HamiltonianConfig,
    LSTMConfig,
    LSTMOptimizer,
    RNNprop,
    RNNpropConfig,
    Symbolic,
    SymbolicConfig,
)

__version__ = "0.1.0"

__all__ = [
    "ARCHITECTURES",
    "Celo2",
    "Celo2Config",
    "DatasetUnavailableError",
    "Hamiltonian",
    "HamiltonianConfig",
    "LSTMConfig",
    "LSTMOptimizer",
    "LearnedOptimizer",
    "Pretrained",
    "RNNprop",
    "RNNpropConfig",
    "Symbolic",
    "SymbolicConfig",
    "UnknownArchitectureError",
    "WeightsError",
    "WeightsNotFoundError",
    "from_pretrained",
    "list_pretrained",
    "load",
    "push_to_hub",
    "save_pretrained",
]

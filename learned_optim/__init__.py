"""learned_optim: pretrained learned optimizers for PyTorch.

import learned_optim as lo
opt = lo.load("celo2-small-tasks", model.parameters())   # was: torch.optim.Adam(model.parameters())
"""

from learned_optim import optimizers
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

# Every registered architecture's class and config (``lo.RNNprop``, ``lo.RNNpropConfig``, …) and
# ``ARCHITECTURES``: learned_optim.optimizers is where an architecture is registered, once.
from learned_optim.optimizers import *  # noqa: F403

__version__ = "0.2.0.dev0"

__all__ = [
    *(name for name in optimizers.__all__ if name not in ("BUILTIN_RULES", "get_architecture")),
    "DatasetUnavailableError",
    "LearnedOptimizer",
    "Pretrained",
    "UnknownArchitectureError",
    "WeightsError",
    "WeightsNotFoundError",
    "from_pretrained",
    "list_pretrained",
    "load",
    "push_to_hub",
    "save_pretrained",
]

"""Random rescaling of a task's parameters, an augmentation from Lv et al. 2017.

Each instance draws one factor c = exp(u), u ~ U(−a, a), per parameter tensor and optimizes
θ' = θ / c on f(c · θ'): the same problem, with gradients scaled by c and a starting point scaled
by 1/c, so the learned optimizer cannot rely on one gradient scale.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

_PREFIX = "rescale."


@dataclass
class RescaledTask:
    task: Any
    log_range: float

    @property
    def name(self) -> str:
        return self.task.name

    @property
    def parameter_names(self) -> list[str]:
        return self.task.parameter_names

    def init(self, generator: torch.Generator) -> dict[str, Tensor]:
        params = self.task.init(generator)
        for name in self.parameter_names:
            scale = torch.exp((torch.rand((), generator=generator) * 2 - 1) * self.log_range)
            params[_PREFIX + name] = scale
            params[name] = params[name] / scale
        return params

    def sample(self, generator: torch.Generator, split: str = "train") -> Any:
        return self.task.sample(generator, split)

    def loss(self, params: dict[str, Tensor], batch: Any) -> Tensor:
        inner = {k: v for k, v in params.items() if not k.startswith(_PREFIX)}
        for name in self.parameter_names:
            inner[name] = params[name] * params[_PREFIX + name]
        return self.task.loss(inner, batch)

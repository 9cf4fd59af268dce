"""Random quadratics of Andrychowicz et al. 2016: f(θ) = ‖Wθ − y‖², W ~ N(0,1)^{d×d}, y ~ N(0,1)^d, θ0 = 0.

Each task instance draws its own W and y (kept as buffers beside θ); there is no data batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor


@dataclass
class QuadraticTask:
    name: str = "quadratic"
    dim: int = 10
    description: str = "f(θ) = ‖Wθ − y‖², W ~ N(0,1)^{10×10}, y ~ N(0,1)^10, θ0 = 0"

    @property
    def parameter_names(self) -> list[str]:
        return ["theta"]

    def init(self, generator: torch.Generator) -> dict[str, Tensor]:
        return {
            "theta": torch.zeros(self.dim),
            "W": torch.randn(self.dim, self.dim, generator=generator),
            "y": torch.randn(self.dim, generator=generator),
        }

    def sample(self, generator: torch.Generator, split: str = "train") -> Any:
        return None

    def loss(self, params: dict[str, Tensor], batch: Any) -> Tensor:
        residual = params["W"] @ params["theta"] - params["y"]
        return (residual * residual).sum()

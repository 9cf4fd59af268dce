"""Gradient preprocessing of Andrychowicz et al. 2016, appendix A.

Gradients span many orders of magnitude, so each coordinate g becomes two inputs::

    (log|g| / p, sign(g))    if |g| ≥ e^(-p)
    (-1, e^p · g)            otherwise

which is continuous in g at |g| = e^(-p) and bounded for small g.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def log_sign(grad: Tensor, p: float = 10.0) -> Tensor:
    """Preprocess a flat gradient of shape ``(N,)`` into feature-major inputs of shape ``(2, N)``."""
    threshold = math.exp(-p)
    magnitude = grad.abs()
    large = magnitude >= threshold
    # Clamping keeps log finite on the small branch, whose value torch.where discards anyway.
    log_part = torch.where(large, torch.log(magnitude.clamp_min(threshold)) / p, -1.0)
    sign_part = torch.where(large, torch.sign(grad), grad * math.exp(p))
    return torch.stack((log_part, sign_part))

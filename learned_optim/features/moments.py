"""Exponential moving averages and Adam-normalised gradient features (Kingma & Ba 2015)::

m_t = β1 m_{t-1} + (1 − β1) g_t,          v_t = β2 v_{t-1} + (1 − β2) g_t²
m̂_t = m_t / (1 − β1^t),                   v̂_t = v_t / (1 − β2^t)
m̃_t = m̂_t / (√v̂_t + ε),                   g̃_t = g_t / (√v̂_t + ε)
"""

from __future__ import annotations

from torch import Tensor


def ema(average: Tensor, value: Tensor, decay: float) -> Tensor:
    """``decay · average + (1 − decay) · value``."""
    return average * decay + value * (1.0 - decay)


def adam_normalized(
    grad: Tensor, m: Tensor, v: Tensor, step: Tensor | float, beta1: float, beta2: float, eps: float
) -> tuple[Tensor, Tensor]:
    """``(m̃, g̃)`` from already-updated moments ``m``, ``v`` at 1-based ``step``."""
    bias_correction1 = 1.0 - beta1**step
    bias_correction2 = 1.0 - beta2**step
    denom = (v / bias_correction2).sqrt() + eps
    return (m / bias_correction1) / denom, grad / denom

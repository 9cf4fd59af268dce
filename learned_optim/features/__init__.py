"""Gradient preprocessing and accumulators shared by the learned optimizers (pure functions)."""

from learned_optim.features.moments import adam_normalized, ema
from learned_optim.features.preprocess import log_sign

__all__ = ["adam_normalized", "ema", "log_sign"]

"""Gradient preprocessing and accumulators shared by the learned optimizers (pure functions)."""

from learned_optim.features.moments import adam_normalized, bias_correction, ema, rms_denominator
from learned_optim.features.preprocess import log_sign
from learned_optim.features.untouched import untouched

__all__ = ["adam_normalized", "bias_correction", "ema", "log_sign", "rms_denominator", "untouched"]

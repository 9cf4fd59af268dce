"""Celo2's network config and the accumulators one learned step hands its network.

Apart from ``celo2.py`` so that the network's implementations (``celo2_kernel``, ``celo2_pointwise``)
can name these types without importing the optimizer that imports them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import Tensor

from learned_optim.validation import check_epsilon, check_non_negative, check_positive

FEATURE_DIMS = (1, 1, 1, 3, 1, 3, 1, 3, 1, 3, 3, 3, 3, 3)
UNFACTORED_FEATURES = 9  # the leading feature groups; factored tensors add 5 more
ACTIVATIONS = ("relu", "tanh")


@dataclass(frozen=True)
class Celo2Config:
    """The network (the reference's ``config.json``) and the accumulators it was trained with."""

    feature_dims: tuple = FEATURE_DIMS
    ff_hidden_size: int = 8
    ff_hidden_layers: int = 2
    output_size: int = 3
    activation: str = "relu"
    initial_momentum_decays: tuple = (0.9, 0.99, 0.999)
    initial_rms_decays: tuple = (0.95,)
    initial_adafactor_decays: tuple = (0.9, 0.99, 0.999)
    ns_coeffs: tuple = (3.4445, -4.7750, 2.0315)
    ns_iters: int = 5
    ns_eps: float = 1e-8
    # Hidden units of the per-tensor step-scale network (celo2_step_scale); 0: none, the reference.
    step_scale_hidden: int = 0

    def __post_init__(self) -> None:
        for name in ("feature_dims", "initial_momentum_decays", "initial_rms_decays", "initial_adafactor_decays"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        object.__setattr__(self, "ns_coeffs", tuple(float(c) for c in self.ns_coeffs))
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"Invalid MLP activation: {self.activation}")
        check_positive("ff_hidden_size", self.ff_hidden_size)
        check_positive("ff_hidden_layers", self.ff_hidden_layers)
        # Two outputs at least: the direction and the magnitude.
        if not self.output_size >= 2:
            raise ValueError(f"Invalid output_size value: {self.output_size}")
        # β = 1 would keep an accumulator at its zero start forever; the reference's clamp to [0, 1]
        # hid that, so refuse it here instead.
        for name in ("initial_momentum_decays", "initial_rms_decays", "initial_adafactor_decays"):
            for index, decay in enumerate(getattr(self, name)):
                if not 0.0 <= decay < 1.0:  # check_beta's test, with the field named
                    raise ValueError(f"Invalid beta parameter at index {index} of {name}: {decay}")
        for coefficient in self.ns_coeffs:
            if not math.isfinite(coefficient):
                raise ValueError(f"Invalid ns_coeffs value: {self.ns_coeffs}")
        check_non_negative("ns_iters", self.ns_iters)
        check_non_negative("step_scale_hidden", self.step_scale_hidden)
        # ε > 0: an all-zero step (every coordinate untouched) divides 0 by ‖0‖ + ε.
        check_epsilon(self.ns_eps)
        expected = (
            1,
            1,
            1,
            len(self.initial_momentum_decays),
            len(self.initial_rms_decays),
            len(self.initial_momentum_decays),
            len(self.initial_rms_decays),
            len(self.initial_adafactor_decays),
            len(self.initial_rms_decays),
            *[len(self.initial_adafactor_decays)] * 4,
            len(self.initial_momentum_decays),
        )
        if self.feature_dims != expected:
            raise ValueError(f"feature_dims {self.feature_dims} do not match the accumulators' features {expected}")
        if len(self.ns_coeffs) != 3:
            raise ValueError(f"ns_coeffs must be 3 numbers, got {self.ns_coeffs}")


@dataclass
class Accumulators:
    """The new accumulators of one learned step and what the network reads of them besides."""

    grad: Tensor  # the gradient with a leading feature axis, (1, *shape)
    momentum: Tensor  # (momenta, *shape)
    rms: Tensor  # (rms decays, *shape)
    new_state: dict[str, Tensor]
    weight: Tensor  # the first layer's rows of the per-coordinate features, (features, hidden)
    broadcast: tuple[Tensor, ...]  # first-layer terms computed below full size (bias included)
    row_factor: Tensor | None  # Adafactor's factors, broadcastable to (decays, *shape); None unfactored
    col_factor: Tensor | None
    fac_g: Tensor | None  # unfactored tensors: g / √(V + 1e-9), full size

r"""Celo2's learned step as elementwise multiply-adds, for ``torch.compile`` to fuse (``fused=True``).

The same math as :func:`learned_optim.optimizers.celo2.learned_step` (its docstring has it), in a
form a compiler turns into two loops over the coordinates instead of dozens of full-size passes:

1. **Statistics** (one reduction loop): the new momenta and RMS accumulator are written, and the
   18 per-coordinate features' second moments n_k² = mean(x_k²) over each matrix are summed in
   the same pass. The features are recomputed from the accumulators, never stored.
2. **Network** (one pointwise loop with a reduction): for each coordinate the features are rebuilt
   in registers and the MLP runs as explicit multiply-adds with the normalisations folded into the
   first layer's weights, h_j = b_j + r_j + c_j + Σ_k (W_kj / n_k) x_k (r_j, c_j: the Adafactor row
   and column features' terms, computed at the row's and column's size and broadcast); the step's
   second moment over each matrix is summed in the same loop.

The per-tensor reductions of the Adafactor moments (a row and a column vector per decay) and the
last normalisation's scale are small separate passes. Nothing here is eager-only, so the same code
runs through Inductor's C++ backend on a CPU and its Triton backend on a GPU.

Tensors of two or more axes take this path; 0-D and 1-D tensors (which reach the network only with
``use_adamw_for_1d=False``) keep the blocked eager step.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

if TYPE_CHECKING:
    from learned_optim.optimizers.celo2_config import Accumulators, Celo2Config


def _matrix_mean(x: Tensor) -> Tensor:
    """Mean over the last two axes, kept as size-1 axes (one number per matrix)."""
    return x.mean(dim=(x.dim() - 2, x.dim() - 1), keepdim=True)


def network_step(
    theta: Mapping[str, Tensor],
    param: Tensor,
    grad: Tensor,
    moments: Accumulators,
    config: Celo2Config,
    options: Mapping[str, Any],
) -> Tensor:
    """The network's raw step d · exp(exp_mult · s) for a factored tensor (2 or more axes), from
    the step's accumulators (``celo2.accumulators``); ``celo2.finish_step`` normalises it."""
    momenta = list(moments.new_state["momentum"].unbind(0))
    rms = moments.new_state["rms"][0]
    rho = torch.rsqrt(rms + 1e-8)
    factors = [moments.row_factor[k] * moments.col_factor[k] for k in range(moments.row_factor.shape[0])]

    def features() -> list[Tensor]:
        """The 18 per-coordinate features of the first layer's ``weight`` rows, in their order."""
        return [
            grad,
            grad.clamp(-0.1, 0.1),
            param,
            *momenta,
            rms,
            *(m * rho for m in momenta),
            rho,
            *(grad * f for f in factors),
            grad * rho,
            *(m * f for m, f in zip(momenta, factors, strict=True)),
        ]

    # Pass 1: n_k per matrix. Pass 2 rebuilds the features rather than read them back.
    inverse = [torch.rsqrt(1e-9 + _matrix_mean(x * x)) for x in features()]
    weight = moments.weight  # (18, hidden)
    activation = torch.relu if config.activation == "relu" else torch.tanh
    row_term, col_term = moments.broadcast
    scaled = [[weight[k, j] * inverse[k] for j in range(config.ff_hidden_size)] for k in range(len(inverse))]
    hidden = []
    for j in range(config.ff_hidden_size):
        total = row_term[j] + col_term[j]
        for k, x in enumerate(features()):
            total = total + scaled[k][j] * x
        hidden.append(activation(total))
    outputs = 1 if options["exp_mult"] == 0 else 2  # only the direction and magnitude are read
    layers = config.ff_hidden_layers
    for index in range(layers):
        layer_weight, layer_bias = theta[f"dense_w.{index}"], theta[f"dense_b.{index}"]
        last = index == layers - 1
        next_hidden = []
        for j in range(outputs if last else layer_weight.shape[1]):
            total = layer_bias[j] + layer_weight[0, j] * hidden[0]
            for i in range(1, len(hidden)):
                total = total + layer_weight[i, j] * hidden[i]
            next_hidden.append(total if last else activation(total))
        hidden = next_hidden
    step = hidden[0]
    if outputs == 2:
        step = step * torch.exp(hidden[1] * options["exp_mult"])
    return step

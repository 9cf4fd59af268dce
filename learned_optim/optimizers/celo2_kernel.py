r"""Celo2's learned network on the CPU as one compiled C++ kernel (``fused=True``).

The same math as :func:`learned_optim.optimizers.celo2.learned_step` (its docstring has it) for a
tensor of two or more axes, in two passes over the coordinates (``celo2_kernel.cpp``), each
holding eight coordinates' 18 features and hidden units in vector registers:

1. **Statistics**: Σ x_k² of each feature over each matrix (the tensor's last two axes), from
   the step's new accumulators; no pass where every matrix is one coordinate (a 1×1 convolution's
   weight), as there x_k / n_k = x_k / √(x_k² + 1e-9).
2. **Network**: the features again, each times 1/n_k of its matrix, through the MLP; only the raw
   step d · exp(exp_mult · s) is written.

The accumulators' update, the Adafactor rows and columns and the first layer's terms of the
Adafactor features (computed at a row's or column's size) stay in torch (``celo2.accumulators``),
as does the step's last normalisation (``celo2.finish_step``). The kernel is built on first use
with the C++ compiler ``torch.compile`` uses on CPUs (``torch.utils.cpp_extension``, about a
minute, cached), for the machine it runs on (``-march=native``).

It runs where its numbers are the eager step's to float32 rounding and no gradient flows: CPU
tensors computed in float32 (float32, bfloat16 and float16 parameters), the reference's
accumulator counts (3 momenta, 1 RMS, 3 Adafactor decays) and 8-unit hidden layers, outside
autograd (meta-training differentiates the torch path).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

if TYPE_CHECKING:
    from learned_optim.optimizers.celo2_config import Accumulators, Celo2Config

_BUILT: dict[str, Any] = {}


def extension() -> Any | None:
    """The compiled kernel module, built on first call; None (with one warning) where it cannot be built."""
    if "module" not in _BUILT:
        try:
            from torch.utils.cpp_extension import load

            _BUILT["module"] = load(
                name="learned_optim_celo2_kernel",
                sources=[str(Path(__file__).with_name("celo2_kernel.cpp"))],
                extra_cflags=["-O3", "-march=native", "-fno-math-errno", "-ffp-contract=fast", "-fopenmp"],
                extra_ldflags=["-fopenmp"],
                verbose=False,
            )
        except Exception as error:  # no compiler, or one that rejects the flags: the torch path runs
            warnings.warn(
                f"Celo2's CPU kernel could not be built ({error}); fused=True runs the eager step", stacklevel=2
            )
            _BUILT["module"] = None
    return _BUILT["module"]


def applies(param: Tensor, config: Celo2Config) -> bool:
    """Whether the kernel computes this tensor's step (the conditions of the module docstring)."""
    return (
        param.device.type == "cpu"
        and param.dim() >= 2
        # the update computes in float32 (and the engine hands it the network in that dtype)
        and torch.promote_types(param.dtype, torch.float32) == torch.float32
        and not torch.is_grad_enabled()
        and len(config.initial_momentum_decays) == 3
        and len(config.initial_rms_decays) == 1
        and len(config.initial_adafactor_decays) == 3
        and config.ff_hidden_size == 8
        and _BUILT.get("module") is not None  # built by extension(), which Celo2.kernel_update calls
    )


def step_scale(
    theta: Mapping[str, Tensor],
    param: Tensor,
    grad: Tensor,
    fast: Tensor,
    slow: Tensor,
    step: Tensor | float,
    adamw: bool,
) -> float:
    """``celo2_step_scale``'s s for one tensor, outside autograd: its statistics in one pass (sums in
    double), then the network, in one call (the torch ops cost far more in per-call overhead than in
    arithmetic on the small tensors of most models). Float32 CPU operands; call once ``extension()`` is built."""
    weights = [theta[key].contiguous() for key in ("scale_w0", "scale_b0", "scale_w1", "scale_b1")]
    tensors = [x.contiguous() for x in (param, grad, fast, slow)]
    return _BUILT["module"].step_scale(*tensors, float(step), adamw, *weights)


def _axis_order(shape: torch.Size, factored: tuple[int, int]) -> list[int]:
    """The axes in the order the kernel walks them: as they are, unless the last axis is neither
    factored axis and the matrices hold several coordinates (a 3×3 convolution's weight, whose rows
    of 3 would fill few lanes); then the largest factored axis goes innermost, and an axis that
    numbers matrices (the other factored one where it does) outermost, so that runs of rows hold
    matrices of their own (``_rows_per_group``)."""
    ndim = len(shape)
    rows, cols = factored
    if ndim < 3 or ndim - 1 in factored or shape[-1] * shape[-2] == 1:
        return list(range(ndim))
    rest = [axis for axis in range(ndim) if axis != cols]
    grid = [axis for axis in rest if axis < ndim - 2]
    outer = rows if rows in grid else (grid[0] if grid else rest[0])
    return [outer] + [axis for axis in rest if axis != outer] + [cols]


def _rows_per_group(shape: torch.Size, order: list[int]) -> int:
    """How many consecutive rows of the walk share their matrices with no other rows: those of one
    index of the outermost axis, where that axis numbers matrices and the innermost does too; else
    0 (rows share matrices across the walk)."""
    ndim = len(shape)
    if order == list(range(ndim)) or order[0] >= ndim - 2 or order[-1] >= ndim - 2:
        return 0
    return math.prod(shape) // (shape[order[0]] * shape[order[-1]])


def _matrix_strides(shape: torch.Size, order: list[int]) -> tuple[list[int], int]:
    """Strides over the walked axes that number each coordinate's matrix (0 along its last two
    axes), contiguous over the other axes in walking order; and the number of matrices."""
    ndim = len(shape)
    strides, stride = [0] * ndim, 1
    for position in range(ndim - 1, -1, -1):
        if order[position] < ndim - 2:
            strides[position] = stride
            stride *= shape[order[position]]
    return strides, stride


def network_step(
    theta: Mapping[str, Tensor],
    param: Tensor,
    grad: Tensor,
    moments: Accumulators,
    config: Celo2Config,
    options: Mapping[str, Any],
    factored: tuple[int, int],
) -> tuple[Tensor, Tensor]:
    """The network's raw step for a tensor of 2 or more axes, from the step's accumulators
    (``celo2.accumulators``), which ``celo2.finish_step`` normalises, and where every momentum is
    still exactly zero (the coordinates that stay put). ``factored``: the Adafactor axes (rows,
    columns), ``celo2.factored_dims``. Call where ``applies``."""
    module = extension()
    shape = param.shape
    order = _axis_order(shape, factored)
    walked = [shape[axis] for axis in order]
    permuted = order != list(range(len(shape)))

    def arranged(x: Tensor, channels: bool) -> Tensor:
        """``x`` in walking order, contiguous (a copy where the order differs); channels lead."""
        x = x.permute(0, *(axis + 1 for axis in order)) if channels else x.permute(order)
        return x.contiguous()

    full = (-1, *walked)
    matrix_strides, matrices = _matrix_strides(shape, order)
    operands = (
        arranged(grad, False),
        arranged(param, False),
        arranged(moments.momentum, True),
        arranged(moments.rms, True),
        arranged(moments.row_factor, True).expand(full),
        arranged(moments.col_factor, True).expand(full),
        *(arranged(term, True).expand(full) for term in moments.broadcast),
        matrix_strides,
    )
    if shape[-1] * shape[-2] == 1:
        inverse = param.new_empty(0)  # each feature normalised by its own magnitude, in the kernel
    else:
        sums = module.feature_square_sums(*operands, matrices, _rows_per_group(shape, order))
        inverse = torch.rsqrt(1e-9 + sums / (shape[-1] * shape[-2]))
    layers = [theta[f"{name}.{index}"] for index in range(config.ff_hidden_layers) for name in ("dense_w", "dense_b")]
    outputs = 1 if options["exp_mult"] == 0 else 2  # only the direction and magnitude are read
    step, untouched = module.network_step(
        *operands, inverse, moments.weight, layers, config.activation == "relu", outputs, float(options["exp_mult"])
    )
    if permuted:  # back to the parameter's axes (views; the step's normalisation reads any strides)
        back = [order.index(axis) for axis in range(len(shape))]
        step, untouched = step.permute(back), untouched.permute(back)
    return step, untouched

r"""Celo2 of Moudgil et al. 2026: a per-tensor learned optimizer with orthogonalised updates.

"Celo2" (ICLR 2026, arXiv:2602.19142), as its reference PyTorch implementation (``CELO2_naive``
in PyLO, checked by its authors against their optax code) has it. Published weights:
``DiamondXL/celo2`` (see ``docs/per-tensor-contract.md``).

**Routing.** 1-D (and 0-D) parameters, and every parameter of a group flagged
``is_embedding=True``, are updated by AdamW with moments of their own (``use_adamw_for_1d``);
every other tensor by the learned network.

**Learned path**, for a tensor p with gradient g (clipped elementwise to ±``grad_clip_val``),
accumulators at decays β (momentum at three, RMS at one, Adafactor at three)::

    m_β  = β m_β + (1 − β) g                                 momenta, β ∈ (0.9, 0.99, 0.999)
    r    = β_r r + (1 − β_r) g²                              RMS, β_r = 0.95
    ρ    = 1 / √(r + 1e-8)

Adafactor moments over the tensor's two largest axes a (rows) and b (columns), ĝ² = g² + 1e-30::

    R_β = β R_β + (1 − β) mean_a(ĝ²)            C_β = β C_β + (1 − β) mean_b(ĝ²)
    f_R = 1 / √(R_β / (mean_b R_β + 1e-9))      f_C = 1 / √C_β            (1/√ clamps at 1e-9)
    fac_g = g · f_R · f_C                        fac_m = m_β · f_R · f_C

(a tensor with one axis keeps an unfactored V_β = β V_β + (1 − β) ĝ², fac_g = g / √(V_β + 1e-9)).
The 30 input features, in order,

    g, clip(g, ±0.1), p, m (3), r, m ρ (3), ρ, fac_g (3), g ρ,
    R (3), C (3), 1/√(R + 1e-8) (3), 1/√(C + 1e-8) (3), fac_m (3)      (factored tensors only)

are each normalised by their second moment over the tensor's last two axes,
x ← x / √(mean(x²) + 1e-9), and feed a split-input MLP (one 1st-layer weight per feature, ReLU,
hidden 8, two hidden layers, 3 outputs) that runs on every coordinate::

    (d, s, ·) = MLP(features)
    u = d · exp(exp_mult · s)                                 (· √(mean p² + 1e-9) if param_scale_mult)
    u ← NewtonSchulz(u)                                       if orthogonalize, on the last two axes
                                                              (its products in ``ns_dtype``):
            X ← u / (‖u‖_F + ε);  5 × { A = X Xᵀ;  X ← a X + (b A + c A²) X }    (a, b, c) = ns_coeffs
    u ← rmsmult · u / √(mean(u²) + 1e-9)                      over the last two axes
    p ← p − lr · (u + weight_decay · p)

**AdamW path** (t counts this parameter's steps, (β1, β2) = ``adam_betas``)::

    m = β1 m + (1 − β1) g,   v = β2 v + (1 − β2) g²
    p ← p − adam_lr_mult · lr · (m/(1 − β1^t) / (√(v/(1 − β2^t)) + adam_eps) + adam_weight_decay · p)

**Learned step scale** (``step_scale_hidden`` > 0, off by default and in the published network): a
second network of tensor-level statistics multiplies D by a per-tensor scale s ∈ [0.01, 100],
exactly 1 when fresh (``celo2_step_scale`` has its math): p ← p − lr · (s · D + weight_decay · p).

lr comes from the param group (default 1e-3), so LR schedulers drive it. ``orthogonalize=False``
is the paper's "celo2-base". Optional global-norm clipping (``clip_grad``) scales every gradient
by ``clip_norm / max(‖g‖, clip_norm)`` first.

Per-tensor contract (``docs/per-tensor-contract.md``): the update reads the parameter and
statistics of the whole tensor, so every engine hands it whole tensors. Non-finite gradients: the
coordinate is left unchanged and its per-coordinate state is not advanced; the tensor's other
coordinates update, with the non-finite entries counted as 0 in the tensor's statistics.

Untouched coordinates (the torch contract, as every ``learned_optim`` optimizer keeps it): a
coordinate whose gradient has been exactly zero since the first step does not move — the learned
path's step is zeroed where all momenta are still exactly zero, after the tensor's normalisations, so
every other coordinate gets the reference's numbers; the AdamW path's step is zero there already.
Weight decay still applies to such a coordinate, as in ``torch.optim.AdamW``. (The reference moves
them: its normalisation and orthogonalisation spread the step over the whole tensor.)
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor
from torch.optim.optimizer import ParamsT

from learned_optim.base import LearnedOptimizer, compute_dtype_for, config_from_dict
from learned_optim.optimizers import celo2_kernel, celo2_pointwise, celo2_step_scale
from learned_optim.optimizers.celo2_config import (
    UNFACTORED_FEATURES,
    Accumulators,
    Celo2Config,
)
from learned_optim.validation import check_beta, check_non_negative, check_positive

# Per-group options the update reads, with the reference's names and defaults.
DEFAULT_OPTIONS: dict[str, Any] = {
    "weight_decay": 0.0,
    "adam_lr_mult": 1.0,
    "adam_weight_decay": None,  # None: the group's weight_decay
    "adam_betas": (0.9, 0.95),
    "adam_eps": 1e-8,
    "use_adamw_for_1d": True,
    "orthogonalize": True,
    "clip_grad": False,
    "clip_norm": 1.0,
    "exp_mult": 0.0,
    "rmsmult": 1.0,
    "param_scale_mult": False,
    "grad_clip_val": 1000.0,
    "is_embedding": False,
    "ns_dtype": "float32",  # or "bfloat16": Newton–Schulz's products where bfloat16 matrix units are fast
}
NS_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def init_theta(config: Celo2Config, generator: torch.Generator | None = None) -> dict[str, Tensor]:
    """Fresh network weights under the reference's names, stored (in, out) as Haiku does."""

    def trunc_normal(rows: int, cols: int, std: float) -> Tensor:
        weight = torch.empty(rows, cols)
        if generator is None:
            return weight.zero_()
        normal = torch.randn(rows, cols, generator=generator)
        while (outside := normal.abs() > 2).any():  # resample beyond two standard deviations
            normal = torch.where(outside, torch.randn(rows, cols, generator=generator), normal)
        return normal * std

    total_in = sum(config.feature_dims)
    theta = {
        f"w0.{i}": trunc_normal(dim, config.ff_hidden_size, total_in**-0.5) for i, dim in enumerate(config.feature_dims)
    }
    theta["b0"] = torch.zeros(config.ff_hidden_size)
    sizes = [config.ff_hidden_size] * config.ff_hidden_layers + [config.output_size]
    for index, (fan_in, fan_out) in enumerate(itertools.pairwise(sizes)):
        theta[f"dense_w.{index}"] = trunc_normal(fan_in, fan_out, fan_in**-0.5)
        theta[f"dense_b.{index}"] = torch.zeros(fan_out)
    if config.step_scale_hidden:
        theta.update(celo2_step_scale.init_scale_theta(config.step_scale_hidden, generator))
    return theta


def factored_dims(shape: tuple[int, ...] | torch.Size) -> tuple[int, int] | None:
    """(second largest, largest) axis of ``shape`` — ties in axis order — or None below 2 axes."""
    if len(shape) < 2:
        return None

    def above(a: int, b: int) -> bool:  # a after b in a stable ascending sort by size
        return shape[a] > shape[b] or (shape[a] == shape[b] and a > b)

    # Comparisons, not sorted(): torch.compile traces comparisons of symbolic sizes (as guards) but
    # breaks its graph on a sort keyed by them.
    largest, second = (1, 0) if above(1, 0) else (0, 1)
    for axis in range(2, len(shape)):
        if above(axis, largest):
            largest, second = axis, largest
        elif above(axis, second):
            second = axis
    return second, largest


def uses_adamw(param: Tensor, options: Mapping[str, Any]) -> bool:
    """Whether ``param`` takes the AdamW path under ``options``."""
    return bool(options["use_adamw_for_1d"]) and (param.dim() <= 1 or bool(options["is_embedding"]))


def init_state(param: Tensor, config: Celo2Config, options: Mapping[str, Any] | None = None) -> dict[str, Tensor]:
    """Zero accumulators: AdamW moments, or the learned path's, feature-major ``(k, *param.shape)``.

    The factored moments ``factored_row`` / ``factored_col`` are per-tensor state: shaped like the
    parameter without its largest / second-largest axis.
    """
    options = {**DEFAULT_OPTIONS, **(options or {})}
    dtype = compute_dtype_for(param.dtype)
    shape = tuple(param.shape)

    def zeros(*size: int) -> Tensor:
        return torch.zeros(size, dtype=dtype, device=param.device)

    if uses_adamw(param, options):
        return {"exp_avg": zeros(*shape), "exp_avg_sq": zeros(*shape)}
    state = {
        "momentum": zeros(len(config.initial_momentum_decays), *shape),
        "rms": zeros(len(config.initial_rms_decays), *shape),
    }
    factors = len(config.initial_adafactor_decays)
    dims = factored_dims(shape)
    if dims is None:
        state["factored"] = zeros(factors, *shape)
    else:
        rows, cols = dims
        state["factored_row"] = zeros(factors, *(n for axis, n in enumerate(shape) if axis != cols))
        state["factored_col"] = zeros(factors, *(n for axis, n in enumerate(shape) if axis != rows))
    return state


# The reference network's constructor arguments (its config.json) → our config's names.
_REFERENCE_NAMES = {"hidden_size": "ff_hidden_size", "hidden_layers": "ff_hidden_layers"}
TENSOR_STATE = frozenset({"factored_row", "factored_col"})


def _decays(values: tuple, like: Tensor, trailing: int) -> Tensor:
    """Decays as a ``(k, 1, …, 1)`` tensor in ``like``'s dtype, broadcasting over ``trailing`` axes."""
    return torch.tensor(values, dtype=torch.float32).to(like.dtype).to(like.device).view(-1, *[1] * trailing)


def _rsqrt_floored(x: Tensor) -> Tensor:
    return torch.rsqrt(x.clamp_min(1e-9))


def _last_two_axes(x: Tensor, param_dim: int) -> tuple[int, ...]:
    """The axes of the tensor's last two (or fewer) axes; all axes for a 0-D tensor."""
    if param_dim == 0:
        return tuple(range(x.dim()))
    return tuple(range(x.dim() - min(param_dim, 2), x.dim()))


def newton_schulz(x: Tensor, coeffs: tuple[float, float, float], steps: int, eps: float) -> Tensor:
    """Approximate orthogonalisation of the matrices on ``x``'s last two axes (quintic Newton–Schulz).

    Each iteration is two fused multiply-adds (``addmm``, batched over leading axes as ``baddbmm``)
    and one Gram product, in ``x``'s dtype (float32 for float32 parameters, as the reference).
    """
    transposed = x.shape[-2] > x.shape[-1]
    if transposed:
        x = x.mT
    x = x / (torch.linalg.norm(x, dim=(-2, -1), keepdim=True) + eps)
    a, b, c = coeffs
    shape = x.shape
    batched = x.dim() > 2
    if batched:
        x = x.reshape(-1, *shape[-2:])
    multiply_add = torch.baddbmm if batched else torch.addmm
    for _ in range(steps):
        gram = x @ x.mT
        x = multiply_add(x, multiply_add(gram, gram, gram, beta=b, alpha=c), x, beta=a)  # a X + (b A + c A²) X
    x = x.reshape(shape)
    return x.mT if transposed else x


def _feature_rows(config: Celo2Config, groups: range | list[int]) -> list[int]:
    """The first layer's rows (indices into the stacked ``w0.*``) of the feature groups ``groups``."""
    offsets = [0, *itertools.accumulate(config.feature_dims)]
    return [row for group in groups for row in range(offsets[group], offsets[group + 1])]


def _group_means(squares: Tensor, config: Celo2Config) -> Tensor:
    """A 0-D tensor's feature rows ``(k,)`` share their group's mean square: the reference normalises
    a 0-D tensor's features over all axes of the feature, its group's rows included."""
    sizes = list(config.feature_dims[:UNFACTORED_FEATURES])  # a 0-D tensor is never factored
    means = [part.mean().expand(part.shape[0]) for part in torch.split(squares, sizes)]
    return torch.cat(means)


def _broadcast_hidden(weight: Tensor, features: Tensor, param_dim: int) -> Tensor:
    """First-layer pre-activations ``(hidden, …)`` of features constant along one axis of the
    tensor (Adafactor's row or column moments, kept at their reduced shape ``(k, …, 1, …)``): each
    row normalised by its second moment over the tensor's last two axes — the mean of a broadcast
    copy equals the mean over the axes it has — then multiplied into the weights."""
    squares = (features * features).mean(dim=_last_two_axes(features, param_dim), keepdim=True)
    normalised = features * torch.rsqrt(1e-9 + squares)
    return torch.tensordot(weight, normalised, dims=([0], [0]))


def accumulators(
    theta: Mapping[str, Tensor], param: Tensor, grad: Tensor, state: Mapping[str, Tensor], config: Celo2Config
) -> Accumulators:
    """The accumulators' update and the network's inputs that do not depend on the coordinate."""
    shape, ndim = param.shape, param.dim()
    g = grad.unsqueeze(0)
    beta_m = _decays(config.initial_momentum_decays, g, ndim)
    beta_r = _decays(config.initial_rms_decays, g, ndim)
    beta_f = _decays(config.initial_adafactor_decays, g, ndim)
    grad_sq = g * g
    momentum = torch.lerp(g, state["momentum"], beta_m)  # β m + (1 − β) g in one pass
    rms = torch.lerp(grad_sq, state["rms"], beta_r)
    new_state = {"momentum": momentum, "rms": rms}
    dims = factored_dims(shape)
    first = torch.cat([theta[f"w0.{i}"] for i in range(len(config.feature_dims))])
    groups = list(range(UNFACTORED_FEATURES))
    row_factor = col_factor = fac_g = None
    if dims is None:
        factored = torch.lerp(grad_sq + 1e-30, state["factored"], beta_f)
        fac_g = g * _rsqrt_floored(factored + 1e-9)
        new_state["factored"] = factored
        broadcast: tuple[Tensor, ...] = (theta["b0"].view(-1, *[1] * ndim),)
    else:
        rows, cols = dims
        reduced = beta_f.view(-1, *[1] * (ndim - 1))
        # mean(g² + 1e-30) as mean(g²) + 1e-30: one full-size pass fewer, equal to float rounding.
        row = torch.lerp(grad_sq.mean(dim=cols + 1) + 1e-30, state["factored_row"], reduced)
        col = torch.lerp(grad_sq.mean(dim=rows + 1) + 1e-30, state["factored_col"], reduced)
        rows_in_row = 1 + (rows - 1 if rows > cols else rows)
        row_factor = _rsqrt_floored(row / (row.mean(dim=rows_in_row, keepdim=True) + 1e-9)).unsqueeze(cols + 1)
        col_factor = _rsqrt_floored(col).unsqueeze(rows + 1)
        new_state["factored_row"], new_state["factored_col"] = row, col
        groups.append(len(config.feature_dims) - 1)
        row_feature = row.unsqueeze(cols + 1)
        col_feature = col.unsqueeze(rows + 1)
        row_weight = first[_feature_rows(config, [9, 11])]
        col_weight = first[_feature_rows(config, [10, 12])]
        broadcast = (
            _broadcast_hidden(row_weight, torch.cat([row_feature, torch.rsqrt(row_feature + 1e-8)]), ndim)
            + theta["b0"].view(-1, *[1] * ndim),
            _broadcast_hidden(col_weight, torch.cat([col_feature, torch.rsqrt(col_feature + 1e-8)]), ndim),
        )
    weight = first[_feature_rows(config, groups)]
    return Accumulators(g, momentum, rms, new_state, weight, broadcast, row_factor, col_factor, fac_g)


def finish_step(step: Tensor, param: Tensor, ndim: int, config: Celo2Config, options: Mapping[str, Any]) -> Tensor:
    """The network's step scaled by the parameter's size, orthogonalised and RMS-normalised."""
    if options["param_scale_mult"]:
        step = torch.sqrt((param * param).mean() + 1e-9) * step
    if options["orthogonalize"] and ndim >= 2:
        dtype = NS_DTYPES[options["ns_dtype"]] if step.dtype == torch.float32 else step.dtype  # float64 stays
        step = newton_schulz(step.to(dtype), config.ns_coeffs, config.ns_iters, config.ns_eps).to(step.dtype)
    axes = _last_two_axes(step, ndim)
    scale = torch.rsqrt(1e-9 + (step * step).mean(dim=axes, keepdim=True))
    if options["rmsmult"] != 1:
        scale = scale * options["rmsmult"]
    return step * scale


# Coordinates per block of the learned path: a block's ~40 feature and hidden rows (about 2.5 MiB in
# float32) stay in cache, where full-size rows would stream through memory once per operation.
BLOCK_ELEMENTS = 1 << 14


def _block_rows(x: Tensor, start: int, stop: int) -> Tensor:
    """Rows ``start:stop`` of the parameter's first axis of a feature-major ``x`` (axis 1), or ``x``
    itself where it is broadcast along that axis (size 1)."""
    return x if x.dim() < 2 or x.shape[1] == 1 else x[:, start:stop]


def learned_step(
    theta: Mapping[str, Tensor],
    param: Tensor,
    grad: Tensor,
    state: Mapping[str, Tensor],
    config: Celo2Config,
    options: Mapping[str, Any],
    block_elements: int = BLOCK_ELEMENTS,
) -> tuple[Tensor, dict[str, Tensor]]:
    """The learned path's normalised step u (before weight decay) and new accumulators.

    The tests hold it, in float64, to a plain transcription of the reference
    (``tests/celo2_transcription.py``); this one avoids the transcription's full-size passes. The
    accumulators are updated full-size (they are the new state); the features and the network run
    in blocks of whole rows of the parameter's first axis (``block_elements`` coordinates or one
    row), twice: a first pass sums each feature row's squares per matrix, a second builds the
    features again and runs the MLP (one pass where each matrix is a single coordinate, as in a 1×1
    convolution's weight: there a feature's mean square is its own square). The first layer is linear in
    each normalised feature row x_k / n_k (n_k its root mean square over the last two axes): for a
    matrix, n_k is one number, so it scales the weight row instead of the feature, Σ_k (W_k / n_k) x_k
    (tensors with more axes have one n_k per matrix and scale their rows). The 12 Adafactor row and
    column features are constant along one axis: their first-layer terms are computed at the row's
    or column's size and broadcast into each block.
    """
    scalar = param.dim() == 0
    if scalar:  # a 0-D tensor runs as one coordinate of a 1-D one; only its normalisation differs
        param, grad = param.view(1), grad.view(1)
        state = {key: value.unsqueeze(-1) for key, value in state.items()}
    shape, ndim = param.shape, param.dim()
    numel = param.numel()
    moments = accumulators(theta, param, grad, state, config)
    g, momentum, rms, new_state = moments.grad, moments.momentum, moments.rms, moments.new_state
    row_factor, col_factor = moments.row_factor, moments.col_factor
    broadcast, weight = moments.broadcast, moments.weight
    fac_g_full = moments.fac_g
    hidden_size = config.ff_hidden_size

    def features(start: int, stop: int) -> Tensor:
        """The per-coordinate feature rows of the block, unnormalised: ``(count, stop − start, …)``."""
        g_block, m_block = g[:, start:stop], momentum[:, start:stop]
        rsqrt = torch.rsqrt(rms[:, start:stop] + 1e-8)
        if row_factor is None:
            fac_g = fac_g_full[:, start:stop]
        else:
            factor = _block_rows(row_factor, start, stop) * _block_rows(col_factor, start, stop)
            fac_g = g_block * factor
        per_coordinate = [
            g_block,
            g_block.clamp(-0.1, 0.1),
            param[start:stop].unsqueeze(0),
            m_block,
            rms[:, start:stop],
            m_block * rsqrt,
            rsqrt,
            fac_g,
            g_block * rsqrt,
        ]
        if row_factor is not None:
            per_coordinate.append(m_block * factor)
        return torch.cat(per_coordinate)

    if numel == 0:
        return torch.zeros_like(param), new_state
    # Blocks of whole rows of the first axis; each holds whole matrices, so per-matrix sums split.
    per_row = numel // shape[0]
    step_rows = max(1, block_elements // per_row)
    blocks = [(start, min(start + step_rows, shape[0])) for start in range(0, shape[0], step_rows)]
    matrix = math.prod(shape[-2:])
    matrices_per_row = per_row // matrix if ndim >= 3 else 1

    # Pass 1: one mean square per feature row and matrix, (count, matrices). Where every matrix is
    # one coordinate (1×1 convolutions), a feature's mean square is its own square: pass 2 takes it
    # from the block it builds anyway, and there is no first pass.
    unit_matrices = ndim >= 3 and matrix == 1
    inverse = scaled_weight = None
    if scalar:
        squares = _group_means(features(0, 1).reshape(-1) ** 2, config).unsqueeze(1)
    elif not unit_matrices:
        sums = []
        # Means over each small matrix as a product with a column of 1/matrix: ~2.5x faster than a
        # reduction over an inner axis of 9 (a 3×3 kernel) on the CPU.
        averaging = param.new_full((matrix, 1), 1 / matrix) if ndim >= 3 else None
        for start, stop in blocks:
            block = features(start, stop)
            if averaging is None:
                sums.append(torch.linalg.vector_norm(block.reshape(block.shape[0], 1, -1), dim=-1).square())
            else:
                squared = block * block
                sums.append((squared.reshape(block.shape[0], -1, matrix) @ averaging).squeeze(-1))
        squares = torch.cat(sums, dim=1) if len(sums) > 1 else sums[0]
        if ndim <= 2:
            squares = squares.sum(dim=1, keepdim=True) / matrix
    if not unit_matrices:
        inverse = torch.rsqrt(1e-9 + squares)
        scaled_weight = (weight * inverse).T if inverse.shape[1] == 1 else None

    # Pass 2: the network, block by block.
    activation = torch.relu if config.activation == "relu" else torch.tanh
    outputs = 1 if options["exp_mult"] == 0 else 2  # only the direction and magnitude are read
    steps = []
    for start, stop in blocks:
        block = features(start, stop)
        count, block_shape = block.shape[0], block.shape[1:]
        if scaled_weight is not None:
            hidden = scaled_weight @ block.reshape(count, -1)
        elif unit_matrices:
            flat = block.reshape(count, -1)
            hidden = weight.T @ (flat * torch.rsqrt(1e-9 + flat * flat))
        else:
            block_inverse = inverse[:, start * matrices_per_row : stop * matrices_per_row].unsqueeze(-1)
            hidden = weight.T @ (block.reshape(count, -1, matrix) * block_inverse).reshape(count, -1)
        hidden = hidden.view(hidden_size, *block_shape)
        for term in broadcast:
            hidden = hidden + _block_rows(term, start, stop)
        hidden = activation(hidden).reshape(hidden_size, -1)
        for index in range(config.ff_hidden_layers):
            layer_weight, layer_bias = theta[f"dense_w.{index}"], theta[f"dense_b.{index}"]
            if index == config.ff_hidden_layers - 1:
                layer_weight, layer_bias = layer_weight[:, :outputs], layer_bias[:outputs]
            hidden = torch.addmm(layer_bias.unsqueeze(1), layer_weight.T, hidden)
            if index != config.ff_hidden_layers - 1:
                hidden = activation(hidden)
        block_step = hidden[0]
        if outputs == 2:  # exp(0 · magnitude) is exactly 1 for the network's finite outputs
            block_step = block_step * torch.exp(hidden[1] * options["exp_mult"])
        steps.append(block_step)
    step = (torch.cat(steps) if len(steps) > 1 else steps[0]).view(shape)
    if scalar:
        step, ndim = step.view(()), 0
        new_state = {key: value.squeeze(-1) for key, value in new_state.items()}
    return finish_step(step, param, ndim, config, options), new_state


_OUTSIDE_GRAPHS: dict[str, Callable[..., tuple[Tensor, dict[str, Tensor]]]] = {}


def _outside_graphs(step_fn: Callable[..., tuple[Tensor, dict[str, Tensor]]]) -> Callable[..., Any]:
    """``step_fn`` run eagerly even while torch.compile traces the update (fused=True, compiled
    meta-training): traced, its block loop would unroll into the graph; the rest of the update
    compiles around it.

    Wrapped on first use, not at import: ``torch.compiler.disable`` imports torch._dynamo (and
    sympy), which ``import learned_optim`` must not. The first trace breaks its graph once here to
    build the wrapper; later traces find it built.
    """
    wrapped = _OUTSIDE_GRAPHS.get(step_fn.__name__)
    if wrapped is None:
        wrapped = _OUTSIDE_GRAPHS[step_fn.__name__] = torch.compiler.disable(step_fn)
    return wrapped


def kernel_learned_step(
    theta: Mapping[str, Tensor],
    param: Tensor,
    grad: Tensor,
    state: Mapping[str, Tensor],
    config: Celo2Config,
    options: Mapping[str, Any],
) -> tuple[Tensor, dict[str, Tensor]]:
    """``learned_step`` with the network in the CPU kernel (``celo2_kernel``), where it applies;
    its step is already zero where a coordinate has never had a gradient (the kernel finds them)."""
    moments = accumulators(theta, param, grad, state, config)
    factored = factored_dims(param.shape)
    assert factored is not None  # the kernel takes tensors of 2 or more axes
    step, untouched = celo2_kernel.network_step(theta, param, grad, moments, config, options, factored)
    step = finish_step(step, param, param.dim(), config, options)
    return step.masked_fill_(untouched, 0.0), moments.new_state


kernel_learned_step.zeroes_untouched = True  # type: ignore[attr-defined]


def compiled_learned_step(
    theta: Mapping[str, Tensor],
    param: Tensor,
    grad: Tensor,
    state: Mapping[str, Tensor],
    config: Celo2Config,
    options: Mapping[str, Any],
) -> tuple[Tensor, dict[str, Tensor]]:
    """``learned_step`` for torch.compile to trace: on an accelerator, tensors of 2 or more axes
    through the pointwise network (``celo2_pointwise``, which Inductor fuses); on a CPU and for
    0-D and 1-D tensors the eager blocked step, outside the graph (on a CPU Inductor's fusion of
    the network measured slower than the eager blocks, and took minutes to compile with dynamic
    shapes; the CPU's fast path is the kernel, ``kernel_learned_step``)."""
    if param.dim() < 2 or param.device.type == "cpu":
        return _outside_graphs(learned_step)(theta, param, grad, state, config, options)
    moments = accumulators(theta, param, grad, state, config)
    step = celo2_pointwise.network_step(theta, param, grad, moments, config, options)
    return finish_step(step, param, param.dim(), config, options), moments.new_state


def adamw_step(
    param: Tensor, grad: Tensor, state: Mapping[str, Tensor], step: Tensor | float, options: Mapping[str, Any]
) -> tuple[Tensor, dict[str, Tensor]]:
    """AdamW's bias-corrected step (before weight decay) and new moments."""
    beta1, beta2 = (float(b) for b in options["adam_betas"])
    exp_avg = state["exp_avg"] * beta1 + grad * (1 - beta1)
    exp_avg_sq = state["exp_avg_sq"] * beta2 + (1 - beta2) * (grad * grad)
    t = torch.as_tensor(step, dtype=torch.float64)
    bias1 = (1 - beta1**t).to(grad.dtype)
    bias2 = (1 - beta2**t).to(grad.dtype)
    direction = (exp_avg / bias1) / (torch.sqrt(exp_avg_sq / bias2) + options["adam_eps"])
    if options["adam_eps"] == 0:  # 0 / 0 where the gradient has been zero: such a coordinate stays
        direction = torch.where(exp_avg == 0, 0.0, direction)
    return direction, {"exp_avg": exp_avg, "exp_avg_sq": exp_avg_sq}


def _under_transform(tensor: Tensor) -> bool:
    """Whether ``tensor`` is wrapped by a torch.func transform (vmap, grad), where reading its
    values into a Python ``bool`` is impossible."""
    return torch._C._functorch.is_functorch_wrapped_tensor(tensor)


def _scale(
    theta: Mapping[str, Tensor],
    param: Tensor,
    grad: Tensor,
    new_state: Mapping[str, Tensor],
    step: Tensor | float,
    *,
    adamw: bool,
    native: bool = False,
) -> Tensor | float:
    """The learned per-tensor step scale s (``celo2_step_scale``) from the new first moments;
    ``native``: in the CPU kernel's one call (eager, outside autograd, the kernel built)."""
    if adamw:
        fast = slow = new_state["exp_avg"]
    else:
        fast, slow = new_state["momentum"][0], new_state["momentum"][-1]
    if native:
        return celo2_kernel.step_scale(theta, param, grad, fast, slow, step, adamw)
    if not (torch.is_grad_enabled() or torch.compiler.is_compiling() or _under_transform(grad)):
        return celo2_step_scale.step_scale_outside_autograd(theta, param, grad, fast, slow, step, adamw)
    features = celo2_step_scale.statistics(param, grad, fast, slow, step, adamw)
    return celo2_step_scale.step_scale(theta, features).to(grad.dtype)


def update(
    theta: Mapping[str, Tensor],
    grad: Tensor,
    state: Mapping[str, Tensor],
    step: Tensor | float,
    config: Celo2Config,
    *,
    param: Tensor,
    options: Mapping[str, Any] | None = None,
    learned: Callable[..., tuple[Tensor, dict[str, Tensor]]] | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Pure per-tensor update at 1-based ``step``: the direction D, weight decay included
    (p ← p − lr · D), and the new state. ``grad`` is already scaled by any global-norm clip.
    ``learned``: the learned path's step function (default ``learned_step``, or its compiled
    form while torch.compile traces; ``kernel_learned_step`` for the CPU kernel)."""
    options = {**DEFAULT_OPTIONS, **(options or {})}
    dtype = theta["b0"].dtype
    # Contiguous, so a transposed parameter gets the same reductions (bit for bit) as its copy.
    param = param.to(dtype).contiguous()
    grad = grad.to(dtype).contiguous()
    # Masking non-finite gradients costs full passes over the gradient, step and state. Eager on
    # the CPU, skip it when every gradient is finite (a finite sum proves it; an overflowing sum
    # only masks needlessly), as the coordinatewise engine does; compiled, or on an accelerator
    # (where reading the sum would wait for the device), always mask: the result is the same.
    mask = (
        torch.compiler.is_compiling()
        or grad.device.type != "cpu"
        or _under_transform(grad)
        or not bool(torch.isfinite(grad.sum()))
    )
    if mask:
        finite = torch.isfinite(grad)
        grad = torch.where(finite, grad, 0.0)
    g = grad.clamp(-options["grad_clip_val"], options["grad_clip_val"])
    native = learned is kernel_learned_step  # the scale runs in the kernel too (same conditions)
    if uses_adamw(param, options):
        direction, new_state = adamw_step(param, g, state, step, options)
        decay = options["adam_weight_decay"]
        decay = options["weight_decay"] if decay is None else decay
        if config.step_scale_hidden:
            direction = direction * _scale(theta, param, g, new_state, step, adamw=True, native=native)
        direction = options["adam_lr_mult"] * (direction + decay * param)
    else:
        step_fn = learned or (compiled_learned_step if torch.compiler.is_compiling() else learned_step)
        direction, new_state = step_fn(theta, param, g, state, config, options)
        # The normalisations spread the step over every coordinate; one whose momenta are all
        # still exactly zero has never seen a gradient and stays put (learned_optim/features/
        # untouched.py). Other coordinates keep the reference's numbers: no statistic changes.
        if not getattr(step_fn, "zeroes_untouched", False):
            direction = torch.where((new_state["momentum"] == 0).all(dim=0), 0.0, direction)
        if config.step_scale_hidden:
            direction = direction * _scale(theta, param, g, new_state, step, adamw=False, native=native)
        if options["weight_decay"] != 0:
            direction = direction + options["weight_decay"] * param
    if mask:
        direction = torch.where(finite, direction, 0.0)
        for key, value in new_state.items():
            if key not in TENSOR_STATE:
                new_state[key] = torch.where(finite, value, state[key])
    return direction, new_state


def forward_update(
    theta: Mapping[str, Tensor],
    grad: Tensor,
    state: Mapping[str, Tensor],
    step: Tensor | float,
    config: Celo2Config,
    *,
    param: Tensor,
    options: Mapping[str, Any] | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """``update`` for engines that never differentiate it (PES's perturbed copies): the network in
    the CPU kernel wherever it applies (``celo2_kernel.applies``: 2 or more axes, float32, outside
    autograd), the eager step elsewhere. Same math, another order of float operations."""
    kernel = celo2_kernel.extension() is not None and celo2_kernel.applies(param, config)
    return update(
        theta, grad, state, step, config, param=param, options=options, learned=kernel_learned_step if kernel else None
    )


def global_clip_scale(grads: list[Tensor], clip_norm: float) -> float:
    """``clip_norm / max(‖g‖, clip_norm)`` over all gradients (optax's clip_by_global_norm)."""
    if not grads:
        return 1.0
    total = sum(g.detach().float().pow(2).sum().to("cpu") for g in grads)
    norm = math.sqrt(float(total))
    return clip_norm / max(norm, clip_norm) if norm > 0 or clip_norm > 0 else 1.0


def _check_options(options: Mapping[str, Any]) -> None:
    """torch.optim's validation messages for the per-group options."""
    check_non_negative("weight_decay", options["weight_decay"])
    if options["adam_weight_decay"] is not None:
        check_non_negative("adam_weight_decay", options["adam_weight_decay"])
    betas = tuple(options["adam_betas"])
    if len(betas) != 2:
        raise ValueError(f"adam_betas must be two numbers, got {betas}")
    for index, beta in enumerate(betas):
        check_beta(index, beta)
    # torch.optim.Adam accepts ε = 0; so do we (an untouched coordinate is masked, never 0/0).
    if not options["adam_eps"] >= 0.0:
        raise ValueError(f"Invalid epsilon value: {options['adam_eps']}")
    check_non_negative("adam_lr_mult", options["adam_lr_mult"])
    check_positive("clip_norm", options["clip_norm"])
    check_positive("grad_clip_val", options["grad_clip_val"])
    if options["ns_dtype"] not in NS_DTYPES:
        raise ValueError(f"Invalid ns_dtype value: {options['ns_dtype']} (one of {', '.join(NS_DTYPES)})")
    for name in ("exp_mult", "rmsmult"):
        if not math.isfinite(options[name]):
            raise ValueError(f"Invalid {name} value: {options[name]}")


class Celo2(LearnedOptimizer):
    __doc__ = __doc__
    architecture = "celo2"
    Config = Celo2Config
    per_tensor = True
    tensor_state = TENSOR_STATE
    group_options = DEFAULT_OPTIONS
    init_theta = staticmethod(init_theta)
    init_state = staticmethod(init_state)
    update = staticmethod(update)
    forward_update = staticmethod(forward_update)

    def __init__(
        self,
        params: ParamsT,
        lr: float | Tensor = 1e-3,
        *,
        weight_decay: float = 0.0,
        adam_lr_mult: float = 1.0,
        adam_weight_decay: float | None = None,
        adam_betas: tuple[float, float] = (0.9, 0.95),
        adam_eps: float = 1e-8,
        use_adamw_for_1d: bool = True,
        orthogonalize: bool = True,
        clip_grad: bool = False,
        clip_norm: float = 1.0,
        exp_mult: float = 0.0,
        rmsmult: float = 1.0,
        param_scale_mult: bool = False,
        grad_clip_val: float = 1000.0,
        ns_dtype: str = "float32",
        ff_hidden_size: int | None = None,
        ff_hidden_layers: int | None = None,
        initial_momentum_decays: tuple[float, ...] | None = None,
        initial_rms_decays: tuple[float, ...] | None = None,
        initial_adafactor_decays: tuple[float, ...] | None = None,
        ns_coeffs: tuple[float, float, float] | None = None,
        ns_iters: int | None = None,
        ns_eps: float | None = None,
        feature_dims: tuple[int, ...] | None = None,
        output_size: int | None = None,
        activation: str | None = None,
        step_scale_hidden: int | None = None,
        maximize: bool = False,
        config: Celo2Config | Mapping[str, Any] | None = None,
        theta: Mapping[str, Tensor] | None = None,
        seed: int = 0,
        chunk_size: int | None = None,
        fused: bool = False,
    ) -> None:
        options = {
            "adam_lr_mult": adam_lr_mult,
            "adam_weight_decay": adam_weight_decay,
            "adam_betas": tuple(adam_betas),
            "adam_eps": adam_eps,
            "use_adamw_for_1d": use_adamw_for_1d,
            "orthogonalize": orthogonalize,
            "clip_grad": clip_grad,
            "clip_norm": clip_norm,
            "exp_mult": exp_mult,
            "rmsmult": rmsmult,
            "param_scale_mult": param_scale_mult,
            "grad_clip_val": grad_clip_val,
            "is_embedding": False,
            "ns_dtype": ns_dtype,
        }
        _check_options({**options, "weight_decay": weight_decay})
        self._options = options
        network = {
            "ff_hidden_size": ff_hidden_size,
            "ff_hidden_layers": ff_hidden_layers,
            "initial_momentum_decays": initial_momentum_decays,
            "initial_rms_decays": initial_rms_decays,
            "initial_adafactor_decays": initial_adafactor_decays,
            "ns_coeffs": ns_coeffs,
            "ns_iters": ns_iters,
            "ns_eps": ns_eps,
            "feature_dims": feature_dims,
            "output_size": output_size,
            "activation": activation,
            "step_scale_hidden": step_scale_hidden,
        }
        overrides = {key: tuple(v) if isinstance(v, list) else v for key, v in network.items() if v is not None}
        super().__init__(
            params,
            lr,
            weight_decay=weight_decay,
            maximize=maximize,
            config=config,
            theta=theta,
            seed=seed,
            chunk_size=chunk_size,
            fused=fused,
            **overrides,
        )

    @classmethod
    def config_from_reference(cls, document: Mapping[str, Any], source: str) -> Celo2Config | None:
        """The config of a folder in the reference's format (``PyTorchModelHubMixin``: the network's
        constructor arguments as ``config.json``, e.g. ``DiamondXL/celo2``); None for another format."""
        network_keys = {"feature_dims", "hidden_size", "hidden_layers", "output_size", "activation"}
        if "feature_dims" not in document or not set(document) <= network_keys:
            return None
        renamed = {_REFERENCE_NAMES.get(key, key): value for key, value in document.items()}
        return config_from_dict(Celo2Config, renamed, source)

    def kernel_update(self, param: Tensor) -> Callable[..., tuple[Tensor, dict[str, Tensor]]] | None:
        """``fused=True``'s update of ``param`` with the network in the CPU kernel (``celo2_kernel``),
        run eagerly around it; None where the kernel does not apply (the compiled update runs)."""
        if param.device.type != "cpu" or param.dim() < 2 or celo2_kernel.extension() is None:
            return None
        if not celo2_kernel.applies(param, self.config):
            return None
        return functools.partial(update, learned=kernel_learned_step)

    def _extra_group_defaults(self) -> dict[str, Any]:
        return dict(self._options)

    def gradient_scales(self, groups: list[dict[str, Any]]) -> dict[int, float]:
        """Global-norm clipping: one scale over every gradient, for the groups with ``clip_grad``."""
        clipped = {id(group): group for group in groups if group["clip_grad"]}
        if not clipped:
            return {}
        grads = [p.grad for group in self.param_groups for p in group["params"] if p.grad is not None]
        return {key: global_clip_scale(grads, group["clip_norm"]) for key, group in clipped.items()}

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        _check_options(self.param_groups[-1])

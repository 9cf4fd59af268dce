r"""Celo2's learned per-tensor step scale: how far each tensor moves, learned from tensor statistics.

``ScaledRNNprop`` (``scaled_rnnprop.py``) multiplies RNNprop's direction by the same scale.

Celo2 normalises every matrix's step to root mean square 1, so each moves by ``lr`` in RMS per
step whatever the task needs. With ``Celo2Config(step_scale_hidden=H)`` (H > 0) a second, tiny
network reads nine statistics of the whole tensor and multiplies its direction D by a scale s::

    z = (ln ‖p‖ₘ, ln ‖g‖ₘ, ln(‖m_f‖ₘ/‖g‖ₘ), ln(‖m_s‖ₘ/‖g‖ₘ), cos(m_f, g), cos(m_s, g),
         ln t, ln n, [AdamW path])                         ‖x‖ₘ = √(mean x² + 1e-30)
    o = w₁ · relu(W₀ z / 8 + b₀) + b₁
    s = exp(L · tanh(o / L)),   L = ln 100                  (so 0.01 ≤ s ≤ 100)
    p ← p − lr · (s · D + weight_decay · p)

with m_f, m_s the fastest and slowest momentum (β 0.9 and 0.999 on the learned path; AdamW's one
first moment on the AdamW path), t the step count and n the tensor's size. The logarithms make
the statistics scale-free where it matters: a task whose gradients are 100× larger shifts z₂ by a
constant, and the ratios and cosines (how consistent the gradient is: large when a bigger step
would pay) do not move at all. ``ln t`` lets it anneal late in long runs, as tuned schedules do.

``w₁`` and ``b₁`` start at zero, so o = 0 and s = exp(0) = 1 exactly: fresh, the scale network
leaves the reference Celo2's numbers bit for bit; meta-training moves it from there. The soft
bound keeps any weights from scaling a step by more than 100× or less than 1/100×.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import Tensor

FEATURES = 9
LOG_LIMIT = math.log(100.0)
INPUT_SCALE = 1 / 8  # the log statistics span about ±20; keep the first layer's inputs near ±2
KEYS = ("scale_w0", "scale_b0", "scale_w1", "scale_b1")


def init_scale_theta(hidden: int, generator: torch.Generator | None) -> dict[str, Tensor]:
    """The scale network's weights: a random first layer, a zero output layer (s = 1)."""
    w0 = torch.zeros(FEATURES, hidden)
    if generator is not None:
        w0 = torch.randn(FEATURES, hidden, generator=generator).clamp(-2, 2) * FEATURES**-0.5
    return {
        "scale_w0": w0,
        "scale_b0": torch.zeros(hidden),
        "scale_w1": torch.zeros(hidden, 1),
        "scale_b1": torch.zeros(1),
    }


def _mean_square(x: Tensor) -> Tensor:
    flat = x.reshape(-1)
    return torch.dot(flat, flat) / max(flat.numel(), 1)


def statistics(param: Tensor, grad: Tensor, fast: Tensor, slow: Tensor, step: Tensor | float, adamw: bool) -> Tensor:
    """The nine tensor-level inputs z (see the module docstring), as one vector."""
    g = grad.reshape(-1)
    gg = torch.dot(g, g)
    count = max(g.numel(), 1)
    tiny = 1e-30
    fast_flat, slow_flat = fast.reshape(-1), slow.reshape(-1)
    ff, ss = torch.dot(fast_flat, fast_flat), torch.dot(slow_flat, slow_flat)
    fg, sg = torch.dot(fast_flat, g), torch.dot(slow_flat, g)
    log_g = 0.5 * torch.log(gg / count + tiny)
    step_tensor = torch.as_tensor(step, dtype=g.dtype, device=g.device)
    return torch.stack(
        [
            0.5 * torch.log(_mean_square(param) + tiny),
            log_g,
            0.5 * torch.log(ff / count + tiny) - log_g,
            0.5 * torch.log(ss / count + tiny) - log_g,
            fg * torch.rsqrt(ff * gg + tiny),
            sg * torch.rsqrt(ss * gg + tiny),
            torch.log(step_tensor.clamp_min(1.0)),
            torch.full_like(log_g, math.log(count)),
            torch.full_like(log_g, 1.0 if adamw else 0.0),
        ]
    )


def step_scale_outside_autograd(
    theta: Mapping[str, Tensor],
    param: Tensor,
    grad: Tensor,
    fast: Tensor,
    slow: Tensor,
    step: Tensor | float,
    adamw: bool,
) -> float:
    """``step_scale(theta, statistics(...))`` with the statistics' scalar math in Python floats: for
    an eager step outside autograd, where each torch op on a scalar costs far more than its arithmetic."""
    p, g, f, s = (x.reshape(-1) for x in (param, grad, fast, slow))
    pp, gg, ff, ss, fg, sg = torch.stack((p @ p, g @ g, f @ f, s @ s, f @ g, s @ g)).double().tolist()
    count, tiny = max(g.numel(), 1), 1e-30
    log_g = 0.5 * math.log(gg / count + tiny)
    features = [
        0.5 * math.log(pp / count + tiny),
        log_g,
        0.5 * math.log(ff / count + tiny) - log_g,
        0.5 * math.log(ss / count + tiny) - log_g,
        fg / math.sqrt(ff * gg + tiny),
        sg / math.sqrt(ss * gg + tiny),
        math.log(max(float(step), 1.0)),
        math.log(count),
        1.0 if adamw else 0.0,
    ]
    return step_scale(theta, torch.tensor(features, dtype=theta["scale_w0"].dtype)).item()


def step_scale(theta: Mapping[str, Tensor], features: Tensor) -> Tensor:
    """s = exp(L · tanh(o / L)) for the statistics ``features``: a 0-D tensor."""
    hidden = torch.relu((features * INPUT_SCALE) @ theta["scale_w0"] + theta["scale_b0"])
    output = (hidden @ theta["scale_w1"] + theta["scale_b1"]).reshape(())
    return torch.exp(LOG_LIMIT * torch.tanh(output / LOG_LIMIT))

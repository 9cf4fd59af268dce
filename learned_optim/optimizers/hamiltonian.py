r"""A port-Hamiltonian learned optimizer: damped, driven dynamics with a learned energy.

Optimization as a physical system with position θ and momentum p (one pair per coordinate) and
energy H(θ, p) = f(θ) + Σ K_φ(p), with f the training loss. In continuous time::

    dθ/dt =  b ∂H/∂p                          b = b_φ(x) ≥ 0    learned input port (a metric)
    dp/dt = −b ∂H/∂θ − R ∂H/∂p                R = R_φ(x) ≥ 0    learned dissipation

i.e. ż = (J − R̃) ∇H with J = b [[0, 1], [−1, 0]] skew-symmetric, so for any b and R

    dH/dt = −R (∂K/∂p)² ≤ 0                   the energy can only decrease.

Learned kinetic energy, convex and even in p (a quadratic term plus relativistic terms, whose
velocity ∂K/∂p is bounded, which gives Adam-like bounded steps)::

    K(p)     = a₀ p²/2 + Σ_j a_j s_j² (√(1 + (p/s_j)²) − 1)          a_j, s_j > 0 (softplus)
    ∂K/∂p    = κ(p) · p,   κ(p) = a₀ + Σ_j a_j / √(1 + (p/s_j)²) > 0

Features x = (g̃, σ(p)) with g̃ = g / (√v̂ + ε), v the EMA of g² (β = 0.99, bias-corrected) and
σ(p) = tanh p, or the softsign p / (1 + |p|) (``momentum_feature``; as bounded, and no transcendental
function to evaluate); a small MLP gives R = softplus(·) and b = step_scale · softplus(·) · (√v̂ + ε)^(−1/2).
With ``hidden_size=0`` the MLP is a single linear map from x: the compact variant, a handful of
elementwise operations per coordinate instead of a hidden layer, for large models. The port b
enters the step twice (through p and through θ̇; lr · b² in the heavy-ball limit below), so this
last factor, applied when ``normalize``, gives Adam's g / √v̂ scaling.

Discretisation (semi-implicit, symplectic Euler; the damping is integrated exactly for frozen κ
so a large R cannot flip the momentum)::

    p_{t+1} = exp(−R κ(p_t)) p_t − b g_t
    θ_{t+1} = θ_t + lr · b ∂K/∂p(p_{t+1})          direction d_t = −b ∂K/∂p(p_{t+1})

With K = p²/2, constant R and b (``normalize=False``) this is heavy-ball momentum: momentum
μ = e^{−R} and learning rate lr · b². State per coordinate: p and v, as many numbers as Adam.

A coordinate whose gradient has been exactly zero since the start keeps p = 0 and so d_t = 0:
frozen rows stay frozen, as with SGD and Adam.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn import functional

from learned_optim.base import LearnedOptimizer, compute_dtype_for
from learned_optim.features import bias_correction, ema
from learned_optim.nets import init_linear, linear
from learned_optim.validation import check_beta, check_epsilon, check_non_negative, check_positive

MOMENTUM_FEATURES = {"tanh": torch.tanh, "softsign": functional.softsign}


@dataclass(frozen=True)
class HamiltonianConfig:
    """Architecture hyperparameters of :class:`Hamiltonian`."""

    hidden_size: int = 16
    kinetic_terms: int = 2
    beta: float = 0.99
    eps: float = 1e-8
    step_scale: float = 0.03
    normalize: bool = True
    momentum_feature: str = "tanh"

    def __post_init__(self) -> None:
        if self.momentum_feature not in MOMENTUM_FEATURES:
            raise ValueError(f"momentum_feature must be one of {sorted(MOMENTUM_FEATURES)}: {self.momentum_feature!r}")
        check_non_negative("hidden_size", self.hidden_size)
        check_non_negative("kinetic_terms", self.kinetic_terms)
        check_beta(0, self.beta)
        check_epsilon(self.eps)
        check_positive("step_scale", self.step_scale)


def _inverse_softplus(value: float) -> float:
    return math.log(math.expm1(value))


def init_theta(config: HamiltonianConfig, generator: torch.Generator | None = None) -> dict[str, Tensor]:
    """Fresh weights that start close to heavy-ball momentum (μ ≈ 0.9, quadratic K)."""
    theta = init_linear("features", 2, config.hidden_size, generator) if config.hidden_size else {}
    theta.update(init_linear("output", config.hidden_size or 2, 2, generator))
    theta["output.weight"] = theta["output.weight"] * 0.1
    theta["output.bias"] = torch.tensor([_inverse_softplus(0.1), _inverse_softplus(1.0)])  # R ≈ 0.1, b gain ≈ 1
    theta["kinetic.quadratic"] = torch.tensor([_inverse_softplus(1.0)])
    theta["kinetic.weights"] = torch.full((config.kinetic_terms,), _inverse_softplus(1e-3))
    theta["kinetic.scales"] = torch.linspace(0.0, 2.0, config.kinetic_terms) if config.kinetic_terms else torch.zeros(0)
    return theta


def init_state(param: Tensor, config: HamiltonianConfig) -> dict[str, Tensor]:
    """Zero momentum p and gradient second moment v, shaped like ``param``."""
    dtype = compute_dtype_for(param.dtype)
    return {
        "momentum": torch.zeros(param.shape, dtype=dtype, device=param.device),
        "exp_avg_sq": torch.zeros(param.shape, dtype=dtype, device=param.device),
    }


def _kinetic_coefficients(theta: dict[str, Tensor]) -> tuple[Tensor, list[tuple[Tensor, Tensor]]]:
    """a₀ and the (a_j, s_j) pairs, as scalars: each term stays elementwise, so fused steps are one loop."""
    weights = functional.softplus(theta["kinetic.weights"])
    scales = functional.softplus(theta["kinetic.scales"])
    return functional.softplus(theta["kinetic.quadratic"])[0], list(zip(weights.unbind(), scales.unbind(), strict=True))


def kinetic_energy(theta: dict[str, Tensor], momentum: Tensor) -> Tensor:
    """K(p) per coordinate."""
    quadratic, terms = _kinetic_coefficients(theta)
    energy = quadratic * momentum**2 / 2
    for weight, scale in terms:
        energy = energy + weight * scale**2 * (torch.sqrt(1 + (momentum / scale) ** 2) - 1)
    return energy


def _stiffness(coefficients: tuple[Tensor, list[tuple[Tensor, Tensor]]], momentum: Tensor) -> Tensor:
    """κ(p) = (∂K/∂p) / p, positive; ``coefficients`` from ``_kinetic_coefficients``."""
    quadratic, terms = coefficients
    stiffness = quadratic.expand(momentum.shape)
    for weight, scale in terms:
        stiffness = stiffness + weight * torch.rsqrt(1 + (momentum / scale) ** 2)
    return stiffness


def _dissipation_and_port_gain(
    theta: dict[str, Tensor], features: list[Tensor], config: HamiltonianConfig
) -> tuple[Tensor, ...]:
    """softplus of the network's two outputs: R and b's gain (before step_scale and normalisation)."""
    if config.hidden_size:
        hidden = functional.elu(linear(theta, "features", torch.stack(features)))
        return functional.softplus(linear(theta, "output", hidden)).unbind()
    # No hidden layer: the affine map written elementwise (not a matmul), so fused steps are one loop.
    weight, bias = theta["output.weight"], theta["output.bias"]
    return tuple(
        functional.softplus(bias[row] + sum(weight[row, k] * x for k, x in enumerate(features))) for row in range(2)
    )


def update(
    theta: dict[str, Tensor], grad: Tensor, state: dict[str, Tensor], step: Tensor | float, config: HamiltonianConfig
) -> tuple[Tensor, dict[str, Tensor]]:
    """Pure update at 1-based ``step``: returns the direction d_t and the new state."""
    numel = grad.numel()
    g = grad.reshape(numel).to(theta["output.weight"].dtype)
    p = state["momentum"].reshape(numel)
    exp_avg_sq = ema(state["exp_avg_sq"].reshape(numel), g * g, config.beta)
    scale = (exp_avg_sq / bias_correction(config.beta, step)).sqrt() + config.eps
    features = [g / scale, MOMENTUM_FEATURES[config.momentum_feature](p)]
    dissipation, gain = _dissipation_and_port_gain(theta, features, config)
    port = gain * config.step_scale
    if config.normalize:
        port = port * scale.rsqrt()
    kinetic = _kinetic_coefficients(theta)  # once: κ is evaluated at p_t and at p_{t+1}
    p = torch.exp(-dissipation * _stiffness(kinetic, p)) * p - port * g
    direction = -port * _stiffness(kinetic, p) * p
    return direction.reshape(grad.shape), {
        "momentum": p.reshape(grad.shape),
        "exp_avg_sq": exp_avg_sq.reshape(grad.shape),
    }


class Hamiltonian(LearnedOptimizer):
    __doc__ = __doc__
    architecture = "hamiltonian"
    Config = HamiltonianConfig
    init_theta = staticmethod(init_theta)
    init_state = staticmethod(init_state)
    update = staticmethod(update)

    @classmethod
    def default_chunk_size(cls, config: HamiltonianConfig, fused: bool) -> int:
        # Without a hidden layer a step's temporaries are a few vectors per coordinate, so larger
        # chunks only save calls (at 10M on the 2-core CPU: eager 650 → 260 ms, fused 150 → 90 ms).
        if config.hidden_size == 0:
            return 1 << 18 if fused else 1 << 16
        return super().default_chunk_size(config, fused)

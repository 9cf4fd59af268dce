r"""Symbolic: a closed-form update rule, as distilled from a learned optimizer (Zheng et al. 2022).

"Symbolic Learning to Optimize: Towards Interpretability and Scalability" (ICLR 2022,
arXiv:2203.06578). A rule is a formula d_t = R_c(x_t) over named per-coordinate inputs x_t with
constants c (``learned_optim.expression``); the parameter moves by θ_{t+1} = θ_t − lr · d_t. The
inputs, for a coordinate with gradient g_t at step t (β1, β2, ε from the config)::

    g            g_t
    m_hat        m̂_t = m_t / (1 − β1^t),             m_t = β1 m_{t−1} + (1 − β1) g_t
    m_tilde      m̃_t = m̂_t / (√v̂_t + ε),            v̂_t = v_t / (1 − β2^t),  v_t = β2 v_{t−1} + (1 − β2) g_t²
    g_tilde      g̃_t = g_t / (√v̂_t + ε)
    m_0.5, m_0.9, m_0.99    bias-corrected averages of g_t with decay 0.5, 0.9, 0.99
    g_lag1, g_lag2          g_{t−1}, g_{t−2} (zero before the first steps)
    inv_step     1/t, the same for every coordinate: lets a rule change over the first steps, as a
                 recurrent teacher does while its hidden state fills, and fade to a fixed rule

A coordinate whose gradient has been exactly zero since the start (every accumulator still 0) has
d_t = 0 whatever the rule's constant terms (``learned_optim.features.untouched``): frozen rows stay
frozen, as with SGD and Adam.

Only the accumulators the rule reads are kept: a rule of m̃ alone keeps m and v, the same two
numbers per coordinate as Adam. Built-in rules (``BUILTIN_RULES``)::

    adam            d = 0.001 · m̃                              β1 = 0.9, β2 = 0.999 (Adam, lr 1e-3)
    rnnprop-paper   d = 0.01 · tanh(tanh(sinh((1.99234 m̃)³) − 0.0248))     β1 = β2 = 0.95

The second is the RNNprop rule published by Zheng et al., tanh(tanh(0.0248 + sinh((−1.99234 m̃)³)))
· 0.01, which they add to θ; the sign is flipped here because we subtract the direction.

The constants are the optimizer's learned weights (``theta["constants"]``, depth-first order), so
the meta-trainer tunes them like any network's weights.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from torch.optim.optimizer import ParamsT

from learned_optim.base import LearnedOptimizer, compute_dtype_for
from learned_optim.expression import Rule, const, op, var
from learned_optim.features import adam_normalized, bias_correction, ema, untouched
from learned_optim.validation import check_beta, check_epsilon

SymbolicState = dict[str, Tensor]
MOMENTUM_DECAYS = (0.5, 0.9, 0.99)


@dataclass(frozen=True)
class Input:
    """A named rule input: the accumulators it reads and how it is computed from them."""

    accumulators: tuple[str, ...]
    compute: Callable[[Tensor, SymbolicState, SymbolicState, Tensor | float, Any], Tensor]
    latex: str
    odd: bool = True  # flips sign when every gradient does (all but the step count)


def _bias_corrected(name: str, decay: float) -> Callable[..., Tensor]:
    return lambda g, new, old, step, config: new[name] / bias_correction(decay, step)


def _ema_of_grad(decay: float) -> Callable[..., Tensor]:
    return lambda old, g, config: ema(old[f"ema_{decay}"], g, decay)


def _normalized(index: int) -> Callable[..., Tensor]:
    def compute(g: Tensor, new: SymbolicState, old: SymbolicState, step: Tensor | float, config: Any) -> Tensor:
        pair = adam_normalized(g, new["exp_avg"], new["exp_avg_sq"], step, config.beta1, config.beta2, config.eps)
        return pair[index]

    return compute


# How each accumulator advances from the previous state (old) with the gradient g.
ACCUMULATORS: dict[str, Callable[[SymbolicState, Tensor, Any], Tensor]] = {
    "exp_avg": lambda old, g, config: ema(old["exp_avg"], g, config.beta1),
    "exp_avg_sq": lambda old, g, config: ema(old["exp_avg_sq"], g * g, config.beta2),
    **{f"ema_{decay}": _ema_of_grad(decay) for decay in MOMENTUM_DECAYS},
    "grad_lag1": lambda old, g, config: g,
    # A copy: the optimizer writes new state over old in place, and lag1 is written first.
    "grad_lag2": lambda old, g, config: old["grad_lag1"].clone(),
}

INPUTS: dict[str, Input] = {
    "g": Input((), lambda g, new, old, step, config: g, "g_t"),
    "m_hat": Input(
        ("exp_avg",),
        lambda g, new, old, step, config: new["exp_avg"] / bias_correction(config.beta1, step),
        r"\hat{m}_t",
    ),
    "m_tilde": Input(("exp_avg", "exp_avg_sq"), _normalized(0), r"\tilde{m}_t"),
    "g_tilde": Input(("exp_avg", "exp_avg_sq"), _normalized(1), r"\tilde{g}_t"),
    **{
        f"m_{decay}": Input((f"ema_{decay}",), _bias_corrected(f"ema_{decay}", decay), rf"m^{{({decay})}}_t")
        for decay in MOMENTUM_DECAYS
    },
    "g_lag1": Input(("grad_lag1",), lambda g, new, old, step, config: old["grad_lag1"], "g_{t-1}"),
    "g_lag2": Input(("grad_lag1", "grad_lag2"), lambda g, new, old, step, config: old["grad_lag2"], "g_{t-2}"),
    # A 0-dim tensor, broadcast by the rule's operators: no per-coordinate memory or traffic.
    "inv_step": Input((), lambda g, new, old, step, config: g.new_ones(()) / step, "t^{-1}", odd=False),
}

ADAM_RULE = op("mul", const(0.001), var("m_tilde"))
RNNPROP_PAPER_RULE = op(
    "mul",
    op(
        "tanh",
        op(
            "tanh",
            op("sub", op("sinh", op("powi", op("mul", const(1.99234), var("m_tilde")), exponent=3)), const(0.0248)),
        ),
    ),
    const(0.01),
)
BUILTIN_RULES: dict[str, dict[str, Any]] = {
    "adam": {"rule": ADAM_RULE, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8},
    "rnnprop-paper": {"rule": RNNPROP_PAPER_RULE, "beta1": 0.95, "beta2": 0.95, "eps": 1e-8},
}


@dataclass(frozen=True)
class SymbolicConfig:
    """A rule (JSON expression tree over ``INPUTS``) and the decays of the moments its inputs use."""

    rule: dict[str, Any] = field(default_factory=lambda: ADAM_RULE)
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8

    def __post_init__(self) -> None:
        check_beta(0, self.beta1)
        check_beta(1, self.beta2)
        check_epsilon(self.eps)
        # Validated once here; the update reads the parsed rule (not a dataclass field).
        object.__setattr__(self, "_parsed", Rule.from_json(self.rule, INPUTS, "SymbolicConfig.rule"))

    @property
    def parsed(self) -> Rule:
        return self._parsed  # type: ignore[attr-defined]

    def accumulators(self) -> tuple[str, ...]:
        """The state tensors this rule needs, in a fixed order."""
        needed = {name for input_name in self.parsed.inputs for name in INPUTS[input_name].accumulators}
        return tuple(name for name in ACCUMULATORS if name in needed)

    def __repr__(self) -> str:
        return f"SymbolicConfig(rule='{self.parsed.infix()}', beta1={self.beta1}, beta2={self.beta2}, eps={self.eps})"


def init_theta(config: SymbolicConfig, generator: torch.Generator | None = None) -> dict[str, Tensor]:
    """The rule's constants as the learnable weights (the generator is unused: nothing is random)."""
    return {"constants": torch.tensor(config.parsed.constants, dtype=torch.float32)}


def init_state(param: Tensor, config: SymbolicConfig) -> dict[str, Tensor]:
    """Zero accumulators shaped like ``param``, only those the rule reads."""
    dtype = compute_dtype_for(param.dtype)
    return {name: torch.zeros(param.shape, dtype=dtype, device=param.device) for name in config.accumulators()}


def advance(
    grad: Tensor, state: SymbolicState, step: Tensor | float, config: Any, names: tuple[str, ...]
) -> tuple[dict[str, Tensor], SymbolicState]:
    """The inputs ``names`` at this step and the advanced accumulators (those in ``state``)."""
    new = {name: ACCUMULATORS[name](state, grad, config) for name in state}
    inputs = {name: INPUTS[name].compute(grad, new, state, step, config) for name in names}
    return inputs, new


def update(
    theta: dict[str, Tensor], grad: Tensor, state: SymbolicState, step: Tensor | float, config: SymbolicConfig
) -> tuple[Tensor, SymbolicState]:
    """Pure update at 1-based ``step``: returns the direction ``d_t`` and the new state."""
    g = grad.to(theta["constants"].dtype)
    inputs, new_state = advance(g, state, step, config, config.parsed.inputs)
    direction = torch.broadcast_to(config.parsed.evaluate(inputs, theta["constants"]), grad.shape)
    # A rule's constant term would move a coordinate that has only seen zero gradients; hold it.
    # (Accumulators start at zero and stay zero on zero gradients, so they need no holding.)
    still = untouched(g.reshape(-1), (accumulator.reshape(-1) for accumulator in state.values()))
    return torch.where(still.reshape(grad.shape), 0.0, direction), new_state


class Symbolic(LearnedOptimizer):
    __doc__ = __doc__
    architecture = "symbolic"
    Config = SymbolicConfig
    init_theta = staticmethod(init_theta)
    init_state = staticmethod(init_state)
    update = staticmethod(update)
    # Elementwise rules need few temporaries: larger chunks than the networks'.
    chunk_sizes = (1 << 16, 1 << 20)

    def __init__(
        self,
        params: ParamsT,
        lr: float | Tensor = 1.0,
        *,
        rule: str | Mapping[str, Any] | None = None,
        weight_decay: float = 0.0,
        maximize: bool = False,
        config: Any = None,
        theta: Mapping[str, Tensor] | None = None,
        seed: int = 0,
        chunk_size: int | None = None,
        fused: bool = False,
        **config_overrides: Any,
    ) -> None:
        """``rule``: a built-in rule's name (``BUILTIN_RULES``) or a JSON expression tree; the other
        arguments as for :class:`~learned_optim.LearnedOptimizer`."""
        if rule is not None:
            if config is not None:
                raise TypeError("give either rule or config, not both")
            if isinstance(rule, str):
                if rule not in BUILTIN_RULES:
                    raise ValueError(f"unknown built-in rule {rule!r}; choose from {sorted(BUILTIN_RULES)}")
                config = dict(BUILTIN_RULES[rule])
            else:
                config = {**dataclasses.asdict(SymbolicConfig()), "rule": dict(rule)}
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
            **config_overrides,
        )

    def export_config(self) -> dict[str, Any]:
        """The config with the current (possibly meta-tuned) constants written into the rule."""
        parsed, tuned = self.config.parsed, self.theta["constants"].tolist()
        # theta is float32: keep the rule's own number wherever theta is just its float32 rounding.
        same = [torch.tensor(c, dtype=torch.float32).item() == t for c, t in zip(parsed.constants, tuned, strict=True)]
        constants = [c if keep else t for c, t, keep in zip(parsed.constants, tuned, same, strict=True)]
        return {**dataclasses.asdict(self.config), "rule": dict(parsed.with_constants(constants).tree)}

    @property
    def rule(self) -> Rule:
        """The rule with this optimizer's (possibly meta-tuned) constants."""
        return self.config.parsed.with_constants(self.theta["constants"].tolist())

"""Optimizers by name, for benchmarks, diagnostics and the command line.

    make_optimizer("adam", params, lr=1e-3)
    make_optimizer("rnnprop-mnist", params)        # pretrained weights (lr 1 = the trained step)
    make_optimizer("lstm", params)                 # a fresh, untrained network of that architecture
    make_optimizer("sgd-momentum@0.1", params)     # name@lr sets the learning rate
    make_optimizer("symbolic+fused", params)       # +fused: a learned optimizer with fused=True

Hand-designed names: ``sgd``, ``sgd-momentum`` (momentum 0.9), ``sgd-wd`` (weight decay 5e-4),
``adam``, ``adam-foreach``, ``adam-fused``, ``rmsprop``. Any other name is an architecture or
pretrained weights.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

HAND_DESIGNED: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "sgd": lambda params, lr: torch.optim.SGD(params, lr=lr),
    "sgd-momentum": lambda params, lr: torch.optim.SGD(params, lr=lr, momentum=0.9),
    "sgd-wd": lambda params, lr: torch.optim.SGD(params, lr=lr, weight_decay=5e-4),
    "adam": lambda params, lr: torch.optim.Adam(params, lr=lr),
    "adam-foreach": lambda params, lr: torch.optim.Adam(params, lr=lr, foreach=True),
    "adam-fused": lambda params, lr: torch.optim.Adam(params, lr=lr, fused=True),
    "rmsprop": lambda params, lr: torch.optim.RMSprop(params, lr=lr),
}
DEFAULT_LR = {"sgd": 0.1, "sgd-momentum": 0.01, "sgd-wd": 0.1, "rmsprop": 1e-3}
DEFAULT_LR.update({name: 1e-3 for name in ("adam", "adam-foreach", "adam-fused")})
FUSED_SUFFIX = "+fused"


def make_optimizer(spec: str, params: Iterable[Any], lr: float | None = None) -> torch.optim.Optimizer:
    """The optimizer named by ``spec`` (``name`` or ``name@lr``) over ``params``.

    The learning rate is, in order: ``lr``, the ``@lr`` suffix, the name's default (for a learned
    optimizer its class's: 1.0, the step it was trained with, or Celo2's 1e-3).
    """
    name, _, lr_text = spec.partition("@")
    if lr is None and lr_text:
        lr = float(lr_text)
    fused = name.endswith(FUSED_SUFFIX)
    name = name.removesuffix(FUSED_SUFFIX)
    if name in HAND_DESIGNED:
        if fused:
            raise ValueError(f"{spec!r}: {FUSED_SUFFIX} is for learned optimizers (torch's fused Adam: adam-fused)")
        return HAND_DESIGNED[name](params, DEFAULT_LR[name] if lr is None else lr)
    import learned_optim as lo

    options: dict[str, Any] = {"fused": fused} | ({} if lr is None else {"lr": lr})
    if name in lo.ARCHITECTURES:
        return lo.ARCHITECTURES[name](params, **options)
    return lo.load(name, params, **options)


def default_lr(name: str) -> float:
    """The learning rate ``make_optimizer(name, params)`` uses when given none."""
    probe = torch.nn.Parameter(torch.zeros(1))
    lr = make_optimizer(name, [probe]).param_groups[0]["lr"]
    return float(lr)

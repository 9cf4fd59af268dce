"""How much an optimizer amplifies rounding: the perturbation probe.

Floating-point sums depend on their order, so the same training step rounds differently on one
process and under DDP, on a CPU and on a GPU. A well-behaved optimizer keeps such differences at
the size of the rounding; a chaotic one amplifies them until runs that should agree do not. The
probe trains a small ReLU MLP twice from the same start, once with every gradient multiplied by
(1 + δ), δ = 1e-6 (a relative change the size of float32 rounding, times ten), and reports the
largest parameter difference after ``steps`` steps::

    sensitivity = max_i |θ_i(steps) − θ̃_i(steps)|

For SGD, Adam and a smooth learned optimizer this stays near δ · |θ| (a few 1e-6 at most); a shipped
optimizer must stay below ``ROUNDING_SENSITIVITY_LIMIT``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

ROUNDING_SENSITIVITY_LIMIT = 1e-4


def _probe_model() -> nn.Module:
    return nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 10))


def rounding_sensitivity(
    build: Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer],
    *,
    steps: int = 20,
    relative_perturbation: float = 1e-6,
    seed: int = 0,
) -> float:
    """Largest parameter difference after ``steps`` steps between an unperturbed run and one whose
    gradients are all scaled by ``1 + relative_perturbation`` (see the module docstring).

    ``build`` makes the optimizer from parameters, e.g. ``lambda params: lo.load("rnnprop-mnist", params)``.
    """
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(64, 20, generator=generator)
    targets = torch.randint(0, 10, (64,), generator=generator)
    finals = []
    for scale in (1.0, 1.0 + relative_perturbation):
        torch.manual_seed(seed)
        model = _probe_model()
        optimizer = build(model.parameters())
        for _ in range(steps):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(inputs), targets).backward()
            for p in model.parameters():
                p.grad.mul_(scale)
            optimizer.step()
        finals.append(torch.cat([p.detach().reshape(-1) for p in model.parameters()]))
    return (finals[0] - finals[1]).abs().max().item()

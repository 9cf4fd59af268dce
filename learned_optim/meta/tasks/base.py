"""What a task is: an optimizee model used functionally, plus a sampler of batches.

    params = task.init(generator)                    # dict of tensors: parameters and buffers
    batch = task.sample(generator, split="train")    # whatever ``loss`` takes
    loss = task.loss(params, batch)                  # differentiable in params

Buffers (e.g. BatchNorm running statistics) are part of ``params`` under their module names;
``task.parameter_names`` tells which entries the optimizer updates.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

SPLITS = ("train", "valid", "test")


@dataclass
class ModuleTask:
    """A task built from an ``nn.Module`` template and a batch sampler.

    ``make_module(generator)`` builds the model with freshly initialised weights; the template
    (built once) is only used to run ``functional_call``.
    """

    name: str
    make_module: Callable[[torch.Generator], nn.Module]
    sampler: Callable[[torch.Generator, str], Any]
    loss_fn: Callable[[Any, Any], Tensor]
    description: str = ""
    # The whole split as (inputs, targets), inputs shaped as the model takes them; for evaluation.
    split_data: Callable[[str], tuple[Tensor, Tensor]] | None = None
    _template: nn.Module | None = field(default=None, init=False, repr=False)

    @property
    def template(self) -> nn.Module:
        if self._template is None:
            self._template = self.make_module(torch.Generator().manual_seed(0))
        return self._template

    @property
    def parameter_names(self) -> list[str]:
        return [name for name, _ in self.template.named_parameters()]

    def init(self, generator: torch.Generator) -> dict[str, Tensor]:
        module = self.make_module(generator)
        state = {name: p.detach().clone() for name, p in module.named_parameters()}
        state.update({name: b.detach().clone() for name, b in module.named_buffers()})
        return state

    def sample(self, generator: torch.Generator, split: str = "train") -> Any:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; choose from {SPLITS}")
        return self.sampler(generator, split)

    @property
    def buffer_names(self) -> list[str]:
        return [name for name, _ in self.template.named_buffers()]

    def loss(self, params: dict[str, Tensor], batch: Any) -> Tensor:
        """Loss of ``params`` on ``batch``; pure: BatchNorm updates copies of the running statistics."""
        inputs, targets = batch
        tensors = {**params, **{name: params[name].clone() for name in self.buffer_names}}
        return self.loss_fn(functional_call(self.template, tensors, (inputs,)), targets)


def seeded_init(make: Callable[[], nn.Module], generator: torch.Generator) -> nn.Module:
    """Build ``make()`` with its default initialisation drawn from ``generator``.

    torch's initialisers draw from the global generator, so we seed it from ``generator`` and
    restore it afterwards: a task instance depends only on its own seed.
    """
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return make()

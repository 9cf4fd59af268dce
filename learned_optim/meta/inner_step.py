"""One inner step of a learned optimizer in the functional engines: the single place they call its update.

The unroll, the coordinate-split unroll, imitation and distillation recording see the optimized
coordinates of a task as one flat vector (``flat_parameters`` order) and the optimizer's state as
one dict of tensors. How the update meets them depends on the architecture:

* coordinatewise: the whole flat vector is one input, so the shared network runs once per step;
* per-tensor (``architecture.per_tensor``): each parameter tensor is handed whole, shaped, with its
  value and the options, exactly as ``Optimizer.step`` hands it; the state keys are
  ``"<parameter name>/<state key>"``, so no statistic ever spans two tensors or a slice of one.

Either way ``θ_{k+1} = θ_k − lr · d_k`` with the flat direction returned here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

SEPARATOR = "/"


def is_per_tensor(architecture: Any) -> bool:
    return bool(getattr(architecture, "per_tensor", False))


def default_options(architecture: Any, options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A per-tensor architecture's group options: its defaults, no weight decay, then ``options``."""
    return {"weight_decay": 0.0, **getattr(architecture, "group_options", {}), **(options or {})}


def init_optimizer_state(
    architecture: Any,
    config: Any,
    names: Sequence[str],
    params: Mapping[str, Tensor],
    options: Mapping[str, Any] | None = None,
) -> dict[str, Tensor]:
    """A zero optimizer state for the parameters ``names`` of ``params`` (flat or per tensor)."""
    if not is_per_tensor(architecture):
        return architecture.init_state(torch.cat([params[name].reshape(-1) for name in names]), config)
    options = default_options(architecture, options)
    state = {}
    for name in names:
        for key, value in architecture.init_state(params[name], config, options).items():
            state[f"{name}{SEPARATOR}{key}"] = value
    return state


def state_of(opt_state: Mapping[str, Tensor], name: str) -> dict[str, Tensor]:
    """The per-tensor state of parameter ``name`` (its keys without the prefix)."""
    prefix = f"{name}{SEPARATOR}"
    return {key[len(prefix) :]: value for key, value in opt_state.items() if key.startswith(prefix)}


def optimizer_step(
    architecture: Any,
    theta: Mapping[str, Tensor],
    config: Any,
    flat_grad: Tensor,
    opt_state: Mapping[str, Tensor],
    step: Tensor,
    *,
    names: Sequence[str] = (),
    params: Mapping[str, Tensor] | None = None,
    options: Mapping[str, Any] | None = None,
    update: Callable[..., tuple[Tensor, dict[str, Tensor]]] | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """The flat direction d (θ ← θ − lr · d) and the new state, for the coordinates of ``names``.

    ``flat_grad`` holds the gradients of the parameters ``names`` of ``params``, in that order;
    a coordinatewise architecture needs neither. ``update``: the architecture's update function
    to call (default ``architecture.update``; e.g. its ``forward_update`` where nothing is differentiated).
    """
    update = update or architecture.update
    if not is_per_tensor(architecture):
        return update(theta, flat_grad, opt_state, step, config)
    if params is None:
        raise ValueError("a per-tensor architecture needs the parameters and their names")
    options = default_options(architecture, options)
    pieces, new_state = [], {}
    grads = flat_grad.reshape(-1).split([params[name].numel() for name in names])
    for name, grad in zip(names, grads, strict=True):
        param = params[name]
        direction, state = update(
            theta, grad.view(param.shape), state_of(opt_state, name), step, config, param=param, options=options
        )
        pieces.append(direction.reshape(-1))
        new_state.update({f"{name}{SEPARATOR}{key}": value for key, value in state.items()})
    return torch.cat(pieces), new_state

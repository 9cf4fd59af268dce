"""Several instances of one task as one unroll: their tensors stacked on a leading instance axis.

``tasks_per_step`` instances of the same task (same parameter names and shapes, same loss; only
their initialisation and batches differ) are independent problems, so they can share each inner
step's kernels instead of running one after another:

* the losses are ``vmap(task.loss)`` over the stacked parameters and the stacked batches, and one
  backward pass of their sum gives every instance its own gradient (the instances share no
  tensor, so the other instances' terms contribute exactly zero);
* a coordinatewise update is elementwise over a flat vector, so the instances' flat vectors are
  joined into one (instance-major) and the shared network runs once for all of them; its state
  keeps the same layout, the instances joined along the coordinate (last) axis;
* a per-tensor update (``architecture.per_tensor``) takes statistics over each whole tensor, so a
  stacked tensor would mix the instances: it runs under ``vmap`` over the instance axis, each
  instance's tensors whole.

The batches are sampled outside ``vmap``, in the order the sequential unrolls draw them (each
instance's ``num_steps + 1`` batches in turn), so both paths see the same batches from the same
generator and a resumed run draws what the uninterrupted one drew.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.func import vmap
from torch.utils import _pytree as pytree

from learned_optim.meta.inner_step import is_per_tensor, optimizer_step
from learned_optim.meta.unroll import InnerState


@dataclass
class StackedInnerState:
    """Where ``instances`` trajectories of one task stand, as one set of tensors.

    ``params`` maps each name to ``(instances, *shape)``. ``opt_state`` is laid out for the
    update: coordinatewise, the instances' flat states joined along the last (coordinate) axis;
    per tensor, each instance's state stacked on a leading axis.
    """

    params: dict[str, Tensor]
    opt_state: dict[str, Tensor]
    instances: int
    step: int = 0

    def detached(self) -> StackedInnerState:
        return StackedInnerState(
            {k: v.detach() for k, v in self.params.items()},
            {k: v.detach() for k, v in self.opt_state.items()},
            self.instances,
            self.step,
        )


def stack_inner_states(architecture: Any, config: Any, inners: list[InnerState]) -> StackedInnerState:
    """The fresh states ``inners`` (one per instance, same shapes, same step) as one stacked state."""
    if len({inner.step for inner in inners}) != 1:
        raise ValueError("stacked instances must stand at the same step")
    params = {name: torch.stack([inner.params[name] for inner in inners]) for name in inners[0].params}
    if is_per_tensor(architecture):
        opt_state = {key: torch.stack([inner.opt_state[key] for inner in inners]) for key in inners[0].opt_state}
    else:
        opt_state = {key: torch.cat([inner.opt_state[key] for inner in inners], dim=-1) for key in inners[0].opt_state}
        # The join assumes the coordinate is the state's last axis; check against the layout the
        # architecture gives a flat vector of all the instances' coordinates.
        for key in list(opt_state)[:1]:
            coordinates = sum(inner.opt_state[key].shape[-1] for inner in inners)
            expected = architecture.init_state(torch.zeros(coordinates), config)
            if {k: v.shape for k, v in expected.items()} != {k: v.shape for k, v in opt_state.items()}:
                raise ValueError(f"{architecture.__name__}'s state does not keep its coordinates on the last axis")
    return StackedInnerState(params, opt_state, len(inners), inners[0].step)


def stack_batches(batches: list[Any]) -> Any:
    """Per-instance batches (tensors, tuples of them, or None) as one batch with a leading instance axis."""
    leaves, spec = zip(*(pytree.tree_flatten(batch) for batch in batches), strict=True)
    if any(other != spec[0] for other in spec[1:]):
        raise ValueError("stacked instances must sample batches of the same structure")
    stacked = [None if values[0] is None else torch.stack(values) for values in zip(*leaves, strict=True)]
    return pytree.tree_unflatten(stacked, spec[0])


def _flat(names: list[str], tensors: dict[str, Tensor], instances: int) -> Tensor:
    """Each instance's coordinates in ``names`` order: ``(instances, coordinates)``."""
    return torch.cat([tensors[name].reshape(instances, -1) for name in names], dim=1)


def _stacked_direction(
    architecture: Any,
    theta: dict[str, Tensor],
    config: Any,
    names: list[str],
    params: dict[str, Tensor],
    grads: dict[str, Tensor],
    opt_state: dict[str, Tensor],
    step: Tensor,
    instances: int,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Every instance's flat direction, ``(instances, coordinates)``, and the new stacked state."""
    flat_grads = _flat(names, grads, instances)
    if not is_per_tensor(architecture):
        direction, new_state = optimizer_step(architecture, theta, config, flat_grads.reshape(-1), opt_state, step)
        return direction.view(instances, -1), new_state

    def one_instance(flat_grad: Tensor, state: dict[str, Tensor], instance_params: dict[str, Tensor]) -> Any:
        return optimizer_step(architecture, theta, config, flat_grad, state, step, names=names, params=instance_params)

    return vmap(one_instance)(flat_grads, opt_state, {name: params[name] for name in names})


def stacked_unroll(
    architecture: Any,
    theta: dict[str, Tensor],
    config: Any,
    task: Any,
    inner: StackedInnerState,
    generator: torch.Generator,
    num_steps: int,
    *,
    lr: float = 1.0,
    split: str = "train",
    second_order: bool = False,
) -> tuple[Tensor, StackedInnerState]:
    """``unroll`` for every stacked instance at once: the losses ``(num_steps, instances)`` and the new state.

    Instance i's column is what ``unroll`` returns for instance i alone, given the same batches
    (float rounding aside); the losses and the state carry the graph back to ``theta``.
    """
    names = list(task.parameter_names)
    instances = inner.instances
    per_instance = [[task.sample(generator, split) for _ in range(num_steps + 1)] for _ in range(instances)]
    batches = [stack_batches([drawn[k] for drawn in per_instance]) for k in range(num_steps + 1)]
    # A batch may hold None (a task without data): vmap must be told not to map over it.
    batch_dims = pytree.tree_map(lambda leaf: None if leaf is None else 0, batches[0])
    losses_of = vmap(task.loss, in_dims=(0, batch_dims))
    params = dict(inner.params)
    for name in names:
        if not params[name].requires_grad:
            params[name] = params[name].detach().requires_grad_()
    opt_state = inner.opt_state
    losses = losses_of(params, batches[0])
    history = []
    for k in range(num_steps):
        # The instances share no tensor: the gradient of the sum is each instance's own gradient.
        grads = torch.autograd.grad(
            losses.sum(), [params[name] for name in names], retain_graph=True, create_graph=second_order
        )
        step = torch.tensor(float(inner.step + k + 1))
        direction, opt_state = _stacked_direction(
            architecture, theta, config, names, params, dict(zip(names, grads, strict=True)), opt_state, step, instances
        )
        pieces = direction.split([params[name][0].numel() for name in names], dim=1)
        params = dict(params)
        for name, piece in zip(names, pieces, strict=True):
            params[name] = params[name] - lr * piece.view_as(params[name])
        losses = losses_of(params, batches[k + 1])
        history.append(losses)
    return torch.stack(history), StackedInnerState(params, opt_state, instances, inner.step + num_steps)

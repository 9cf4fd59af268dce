"""The runtime engine of per-tensor architectures: every update sees a whole tensor.

A per-tensor architecture (``LearnedOptimizer.per_tensor``) has the pure update::

    update(theta, grad, state, step, config, *, param, options) -> (D, new_state)
    p ← p − lr · D                                   (D includes any weight decay)

where ``param`` is the parameter's value, ``options`` the param group's options
(``LearnedOptimizer.options_of``) and the state may hold per-tensor statistics (named in
``tensor_state``, not shaped like the parameter). The engine never chunks, concatenates or slices
such a tensor: chunk size and fused grouping cannot change its numbers. Under FSDP2 a sharded
parameter is gathered whole (``DTensor.full_tensor``), every rank runs the same deterministic update
on it, and each keeps its own shard of the result; its state is kept whole (replicated) on every rank.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

FUSED_VARIANT_LIMIT = 256


def _is_dtensor(tensor: Tensor) -> bool:
    if not torch.distributed.is_available():
        return False
    from torch.distributed.tensor import DTensor

    return isinstance(tensor, DTensor)


def _whole(tensor: Tensor) -> Tensor:
    """The whole tensor of a sharded DTensor (gathered from every rank), any other tensor itself."""
    return tensor.full_tensor() if _is_dtensor(tensor) else tensor


def init_state(optimizer: Any, p: Tensor, group: dict[str, Any]) -> dict[str, Tensor]:
    """Fresh state for the whole of ``p`` (a sharded parameter's state is kept whole on every rank)."""
    whole = torch.empty(p.shape, dtype=p.dtype, device=_whole_device(p)) if _is_dtensor(p) else p
    return optimizer.init_state(whole, optimizer.config, optimizer.options_of(group))


def _whole_device(p: Tensor) -> torch.device:
    return p.to_local().device


def _with_config(update: Callable[..., Any], config: Any) -> Callable[..., tuple[Tensor, dict[str, Tensor]]]:
    """``update`` with the architecture's config bound: ``(theta, grad, state, step, param, options)``."""

    def run(theta: Any, grad: Tensor, state: Any, step: Tensor, param: Tensor, options: Any) -> Any:
        return update(theta, grad, state, step, config, param=param, options=options)

    return run


def compiled_update(optimizer: Any) -> Callable[..., tuple[Tensor, dict[str, Tensor]]]:
    """The architecture's update through ``torch.compile`` (built once per optimizer and config)."""
    if optimizer._compiled_step is None:
        compiled = torch.compile(_with_config(optimizer.update, optimizer.config), dynamic=True)

        def guarded(*args: Any) -> Any:
            with torch._dynamo.config.patch(recompile_limit=FUSED_VARIANT_LIMIT):
                return compiled(*args)

        optimizer._compiled_step = guarded
    return optimizer._compiled_step


def fused_update(optimizer: Any, param: Tensor) -> Callable[..., tuple[Tensor, dict[str, Tensor]]]:
    """What a fused step runs for ``param``: the architecture's compiled kernel where it has one
    that applies (``kernel_update(param)``, e.g. Celo2's CPU kernel), else the ``torch.compile``d update."""
    kernel_update = getattr(optimizer, "kernel_update", None)
    update = kernel_update(param) if kernel_update is not None else None
    if update is None:
        return compiled_update(optimizer)
    return _with_config(update, optimizer.config)


def step_whole_tensors(optimizer: Any, work: list[tuple[dict[str, Any], Tensor, dict[str, Tensor]]]) -> None:
    """One step of every ``(group, parameter, state)`` in ``work``, each on its whole tensor."""
    scales = optimizer.gradient_scales([group for group, _, _ in work])
    for group, p, state in work:
        grad = _whole(p.grad)
        if group["maximize"]:
            grad = -grad
        scale = scales.get(id(group), 1.0)
        if scale != 1.0:
            grad = grad * scale
        step_tensor(optimizer, p, grad, state, group)


def step_tensor(optimizer: Any, p: Tensor, grad: Tensor, state: dict[str, Tensor], group: dict[str, Any]) -> None:
    """``p ← p − lr · D`` with the architecture's update on the whole tensor; the state is written in place."""
    if p.numel() == 0:
        return
    sharded = _is_dtensor(p)
    param = p.full_tensor() if sharded else p
    compute_dtype = torch.promote_types(p.dtype, torch.float32)
    theta = optimizer._theta_for(param.device, compute_dtype)
    tensors = {key: value for key, value in state.items() if key != "step"}
    step = state["step"].to(device=param.device)
    options = optimizer.options_of(group)
    if group.get("fused", False):
        direction, new_state = fused_update(optimizer, param)(theta, grad, tensors, step, param, options)
    else:
        direction, new_state = optimizer.update(
            theta, grad, tensors, step, optimizer.config, param=param, options=options
        )
    for key, value in new_state.items():
        tensors[key].copy_(value)
    lr = group["lr"]
    if isinstance(lr, Tensor):  # any one-element shape, as torch.optim allows
        lr = lr.reshape(()).to(device=direction.device, dtype=direction.dtype)
    step_taken = direction * lr  # one rounding whether lr is a float or a tensor
    if sharded:
        from torch.distributed.tensor import distribute_tensor

        p.to_local().sub_(distribute_tensor(step_taken, p.device_mesh, p.placements).to_local())
    else:
        p.sub_(step_taken)

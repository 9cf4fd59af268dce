"""Multi-process meta-training on ``torch.distributed``: each rank unrolls its own task instances.

    torchrun --nproc_per_node 2 -m learned_optim meta-train configs/rnnprop-mnist.json --distributed

Every rank holds the same φ and the same shared random generator. For each meta-step the ranks
draw ``world_size`` seeds from the shared generator and rank r trains the task instance of seed r;
the meta-gradients are averaged with an all-reduce, so every rank takes the same outer Adam step
and φ stays identical everywhere (a meta-step is skipped on all ranks when any rank's meta-loss is
not finite). Rank 0 alone writes checkpoints, metrics and plots; all ranks resume from them.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import torch
import torch.distributed as dist
from torch import Tensor


def initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if initialized() else 1


def init_from_environment() -> None:
    """Join the process group ``torchrun`` describes (gloo on CPUs, NCCL with GPUs)."""
    if initialized():
        return
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        raise ValueError("--distributed needs a torchrun launch: torchrun --nproc_per_node N -m learned_optim ...")
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")


def shutdown() -> None:
    """Leave the process group, as every rank must before it exits (``destroy_process_group``).

    A barrier first, so that no rank closes its connections while another is still in a collective.
    """
    if initialized():
        dist.barrier()
        dist.destroy_process_group()


def average_gradients(params: Iterable[Tensor]) -> None:
    """Replace each parameter's gradient by its mean over the ranks."""
    if world_size() == 1:
        return
    grads = [p.grad for p in params if p.grad is not None]
    flat = torch.cat([g.reshape(-1) for g in grads])  # one collective instead of one per tensor
    dist.all_reduce(flat)
    flat /= world_size()
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def all_finite(value: Tensor) -> bool:
    """Whether ``value`` is finite on every rank."""
    finite = torch.tensor(float(torch.isfinite(value).all()))
    if world_size() > 1:
        dist.all_reduce(finite, op=dist.ReduceOp.MIN)
    return bool(finite)


def sum_over_ranks(value: float) -> float:
    if world_size() == 1:
        return value
    total = torch.tensor(value, dtype=torch.float64)
    dist.all_reduce(total)
    return float(total)


def mean_over_ranks(value: float) -> float:
    return sum_over_ranks(value) / world_size()


def rank_generator(shared: torch.Generator) -> torch.Generator:
    """This rank's generator for one trajectory, drawn from the generator all ranks share.

    With one process this is ``shared`` itself, so single-process recipes keep their numbers.
    """
    if world_size() == 1:
        return shared
    seeds = torch.randint(0, 2**62, (world_size(),), generator=shared)
    return torch.Generator().manual_seed(int(seeds[rank()]))

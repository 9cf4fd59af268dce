"""Workers for tests/test_distributed.py, launched with ``torchrun --nproc_per_node 2``.

    torchrun --nproc_per_node 2 tests/distributed_workers.py ddp lstm,celo2 OUT
    torchrun --nproc_per_node 2 tests/distributed_workers.py fsdp rnnprop OUT [--resume]
    torchrun --nproc_per_node 2 tests/distributed_workers.py meta lstm OUT

One launch runs every optimizer named (a launch costs seconds; the runs, milliseconds). Each rank
trains on its half of a global batch; rank r writes ``OUT/<mode>-<optimizer>-rank<r>.pt`` with the
full parameters after every step. FSDP saves a distributed checkpoint per optimizer in
``OUT/checkpoint-<optimizer>``, which ``--resume`` loads to run the remaining steps.
"""

from __future__ import annotations

import argparse
import faulthandler
import os
from pathlib import Path

import torch
import torch.distributed as dist

import learned_optim as lo
from learned_optim.meta import distributed

STEPS = 20
GLOBAL_BATCH = 16


def model_and_batches():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 10), torch.nn.Tanh(), torch.nn.Linear(10, 3))
    generator = torch.Generator().manual_seed(1)
    batches = []
    for _ in range(STEPS):
        x = torch.randn(GLOBAL_BATCH, 6, generator=generator)
        batches.append((x, torch.randn(GLOBAL_BATCH, 3, generator=generator)))
    return model, batches


def unroll_gradient(name: str, seed: int, run_dir: Path) -> dict[str, torch.Tensor]:
    """The meta-gradient of one 5-step unroll on the quadratic task instance drawn from ``seed``."""
    from learned_optim.meta.trainer import MetaTrainConfig, MetaTrainer
    from learned_optim.meta.unroll import meta_loss, start, unroll

    config = MetaTrainConfig(architecture=name, task="quadratic", horizons=[10], unroll=5, inner_lr=0.1)
    trainer = MetaTrainer(config, run_dir)
    generator = torch.Generator().manual_seed(seed)
    inner = start(trainer.architecture, trainer.optimizer_config, trainer.task, generator)
    losses, _ = unroll(
        trainer.architecture, trainer.theta, trainer.optimizer_config, trainer.task, inner, generator, 5, lr=0.1
    )
    assert trainer.meta_gradient(meta_loss(losses, config.weighting))
    return {k: v.grad.clone() for k, v in trainer.theta.items()}


def build_optimizer(name: str, params):
    return lo.ARCHITECTURES[name](params, seed=0)


def full_parameters(model) -> list[torch.Tensor]:
    return [(p.full_tensor() if hasattr(p, "full_tensor") else p).detach().clone() for p in model.parameters()]


def run(mode: str, name: str, out: Path, checkpoint_at: int, resume: bool) -> None:
    rank, world = dist.get_rank(), dist.get_world_size()
    if mode == "meta":  # rank r unrolls the task instance of seed 100 + r
        gradient = unroll_gradient(name, 100 + rank, out / f"run-{name}-{rank}")
        torch.save(gradient, out / f"meta-{name}-rank{rank}.pt")
        return
    model, batches = model_and_batches()
    if mode == "ddp":
        model = torch.nn.parallel.DistributedDataParallel(model)
    else:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh("cpu", (world,))
        for layer in model:
            if isinstance(layer, torch.nn.Linear):
                fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
    optimizer = build_optimizer(name, model.parameters())
    checkpoint = str(out / f"checkpoint-{name}")
    first = 0
    if resume:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

        model_state, optimizer_state = get_state_dict(model, optimizer)
        state = {"model": model_state, "optimizer": optimizer_state}
        dcp.load(state, checkpoint_id=checkpoint)
        set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
        first = checkpoint_at
    history = []
    share = GLOBAL_BATCH // world
    for step in range(first, STEPS):
        x, y = batches[step]
        x, y = x[rank * share : (rank + 1) * share], y[rank * share : (rank + 1) * share]
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        optimizer.step()
        history.append(full_parameters(model))
        if mode == "fsdp" and not resume and step + 1 == checkpoint_at:
            import torch.distributed.checkpoint as dcp
            from torch.distributed.checkpoint.state_dict import get_state_dict

            model_state, optimizer_state = get_state_dict(model, optimizer)
            dcp.save({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=checkpoint)
    suffix = "-resumed" if resume else ""
    torch.save(history, out / f"{mode}-{name}{suffix}-rank{rank}.pt")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["ddp", "fsdp", "meta"])
    parser.add_argument("optimizers", help="comma-separated architecture names")
    parser.add_argument("out", type=Path)
    parser.add_argument("--checkpoint-at", type=int, default=10, help="fsdp: save a distributed checkpoint here")
    parser.add_argument("--resume", action="store_true", help="fsdp: load the checkpoints, run the remaining steps")
    args = parser.parse_args()
    names = args.optimizers.split(",")
    unknown = sorted(set(names) - set(lo.ARCHITECTURES))
    if unknown:
        parser.error(f"unknown optimizers {unknown}")
    dist.init_process_group("gloo")
    for name in names:
        run(args.mode, name, args.out, args.checkpoint_at, args.resume)
    distributed.shutdown()


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    faulthandler.enable(all_threads=True)  # an abort in C++ (SIGABRT) still prints every thread's Python stack
    main()

"""Throughput of multi-process meta-training: meta-steps per second for 1 and N processes.

    torchrun --nproc_per_node 1 -m tools.meta_distributed --threads 2
    torchrun --nproc_per_node 2 -m tools.meta_distributed --threads 1

Each process runs ``--trajectories`` LSTM trajectories on ``mnist-mlp`` (horizon 100, unrolls of
20: 5 meta-steps each) after one warm-up trajectory. A distributed meta-step averages one unroll
from every rank, so it consumes ``world_size`` unrolls: the figure that matters is unrolls (task
instances × K steps) per second, printed by rank 0 with the machine.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import torch

from learned_optim.meta import distributed
from learned_optim.meta.trainer import MetaTrainConfig, MetaTrainer
from learned_optim.provenance import environment


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trajectories", type=int, default=4, help="timed trajectories per process")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--compile", action="store_true", help="torch.compile the inner update")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    distributed.init_from_environment()
    config = MetaTrainConfig(architecture="lstm", task="mnist-mlp", horizons=[100], unroll=20, compile=args.compile)
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = MetaTrainer(config, run_dir)
        trainer.meta_trajectory(100)  # warm-up: data loading, allocator
        torch.distributed.barrier()
        started = time.perf_counter()
        for _ in range(args.trajectories):
            trainer.meta_trajectory(100)
        seconds = time.perf_counter() - started
    meta_steps = args.trajectories * 100 // config.unroll
    if distributed.rank() == 0:
        world = distributed.world_size()
        print(
            json.dumps(
                {
                    "processes": world,
                    "threads_per_process": args.threads,
                    "compile": args.compile,
                    "meta_steps_per_second": meta_steps / seconds,
                    "unrolls_per_second": meta_steps * world / seconds,
                    "seconds": seconds,
                    "environment": environment(),
                }
            )
        )
    distributed.shutdown()


if __name__ == "__main__":
    main()

"""Meta-training throughput on a task distribution: meta-steps and inner steps per second, per estimator.

    python -m tools.meta_throughput                               # configs/celo2-small-tasks.json, 20 s each
    python -m tools.meta_throughput --seconds 60 --estimators pes --threads 2
    python -m tools.meta_throughput --recipe configs/other.json --json results.json
    torchrun --nproc_per_node 2 -m tools.meta_throughput --distributed --estimators pes   # both cores

For each estimator the recipe runs (with only ``estimator`` changed) whole meta-trajectories at
its first horizon for about ``--seconds``, after one warm-up trajectory that loads the datasets.
A meta-step is one unroll and one outer Adam step. Two inner-step rates are printed:

* *trajectory steps/s*: steps the optimizees advance along their trajectories
  (``tasks_per_step`` × K per meta-step), the rate that decides how long a recipe takes;
* *computed steps/s*: inner steps actually run; PES runs 2 × ``pes_particles`` copies of each
  instance, so this is larger by that factor, and shows the cost of one inner step.

With ``--distributed`` (under ``torchrun``) every rank runs its own trajectories and the ranks
average their meta-gradients each meta-step, as ``learned-optim meta-train --distributed`` does;
the rates printed are the whole machine's (all ranks together).

Task instances differ in cost (a 28×28 CNN costs more than a 14×14 MLP), so the rates are
averages over the instances the run happened to draw; longer runs average over more of them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path

import torch

from learned_optim.meta import distributed
from learned_optim.meta.tasks.distributions import IMAGE_DATASETS, IMAGE_SIZES, images_at, normalised_pixel_range
from learned_optim.meta.tasks.text import stdlib_text_splits
from learned_optim.meta.trainer import ESTIMATORS, MetaTrainConfig, MetaTrainer
from learned_optim.provenance import environment


def load_every_dataset(data_root: str | None) -> None:
    """Datasets load once per process, on first use: load them before timing anything."""
    for dataset in IMAGE_DATASETS:
        for size in IMAGE_SIZES:
            images_at(dataset, size, data_root)
        normalised_pixel_range(dataset, data_root)
    stdlib_text_splits()


def keep_going(decision: bool) -> bool:
    """Rank 0's decision, on every rank: the ranks must run the same number of meta-steps."""
    if distributed.world_size() == 1:
        return decision
    flag = torch.tensor(float(decision))
    torch.distributed.broadcast(flag, src=0)
    return bool(flag)


def measure(config: MetaTrainConfig, seconds: float) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = MetaTrainer(config, run_dir)
        horizon = config.horizons[0]
        load_every_dataset(trainer.data_root)
        trainer.meta_trajectory(config.unroll)  # warm-up: first allocations
        trajectories = 0
        started = time.perf_counter()
        while keep_going(time.perf_counter() - started < seconds):
            trainer.meta_trajectory(horizon)
            trajectories += 1
        elapsed = time.perf_counter() - started
    meta_steps = trajectories * horizon // config.unroll
    trajectory_steps = meta_steps * config.tasks_per_step * config.unroll * distributed.world_size()
    copies = 2 * config.pes_particles if config.estimator == "pes" else 1
    return {
        "seconds": elapsed,
        "trajectories": trajectories,
        "meta_steps_per_second": meta_steps / elapsed,
        "trajectory_steps_per_second": trajectory_steps / elapsed,
        "computed_steps_per_second": trajectory_steps * copies / elapsed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="configs/celo2-small-tasks.json")
    parser.add_argument("--seconds", type=float, default=20.0, help="timed seconds per estimator")
    parser.add_argument("--estimators", nargs="+", default=list(ESTIMATORS), choices=ESTIMATORS)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--json", type=Path, help="also write the rows, recipe and machine here")
    parser.add_argument("--distributed", action="store_true", help="one rank per process under torchrun")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.distributed:
        distributed.init_from_environment()
    report = distributed.rank() == 0
    recipe = MetaTrainConfig.from_file(args.recipe)
    show = print if report else (lambda *_: None)
    show(
        f"{args.recipe}: task {recipe.task}, K = {recipe.unroll}, horizon {recipe.horizons[0]}, "
        f"tasks_per_step {recipe.tasks_per_step}, pes_particles {recipe.pes_particles}, "
        f"{distributed.world_size()} process(es) of {args.threads} thread(s)"
    )
    header = ("meta-steps/s", "trajectory steps/s", "computed steps/s", "trajectories")
    show(f"{'estimator':<10} {header[0]:>13} {header[1]:>19} {header[2]:>17} {header[3]:>13}")
    rows = {}
    for estimator in args.estimators:
        row = measure(dataclasses.replace(recipe, estimator=estimator), args.seconds)
        rows[estimator] = row
        show(
            f"{estimator:<10} {row['meta_steps_per_second']:>13.3f} {row['trajectory_steps_per_second']:>19.1f} "
            f"{row['computed_steps_per_second']:>17.1f} {row['trajectories']:>13d}"
        )
    if args.json and report:
        record = {
            "recipe": dataclasses.asdict(recipe),
            "threads": args.threads,
            "processes": distributed.world_size(),
            "rows": rows,
            **environment(),
        }
        args.json.write_text(json.dumps(record, indent=2) + "\n")
    distributed.shutdown()


if __name__ == "__main__":
    main()

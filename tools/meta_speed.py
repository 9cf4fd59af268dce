"""Meta-training speed: seconds per meta-step against the unroll length K, and one meta-epoch.

    python -m tools.meta_speed                 # K = 5, 10, 20, 40 and the classic meta-epoch
    python -m tools.meta_speed --no-epoch      # only the K sweep
    python -m tools.meta_speed --compile       # with the inner update torch.compile'd (config "compile")
    python -m tools.meta_speed --compile --coordinate-threads 2   # coordinates split over 2 one-core threads
    python -m tools.meta_speed --architecture symbolic   # the floor: a one-constant rule instead of the LSTM
    python -m tools.meta_speed --epochs 3 --json F        # three meta-epochs; rows, commit and machine to F

A meta-step is one unroll of K inner steps of the LSTM optimizer on ``mnist-mlp`` followed by
one backward pass and one outer Adam step. With truncated BPTT done in one backward pass per
unroll the cost grows linearly in K (the column "per inner step" stays flat). The classic
meta-epoch of Andrychowicz et al. is 20 trajectories × 100 steps with K = 20. With
``--architecture symbolic`` the optimizer is the rule d = c · m̃ (one learnable constant): what is
left is the cost of everything but the network (the task, its gradients, autograd).

This CPU's speed drifts from day to day by more than any change to the code (the same compiled
meta-epoch: 24.9 s one day, 39.6–41.8 s another), so the script prints the machine's current matrix
product and memory speed (``tools.machine_speed``) before and after its timings, and records
each epoch's trajectory times and the LSTM-shaped product's speed just before it
(``python -m tools.meta_speed_plot`` draws them).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from learned_optim.meta.trainer import MetaTrainConfig, MetaTrainer
from learned_optim.optimizers.symbolic import BUILTIN_RULES
from learned_optim.provenance import environment
from tools.machine_speed import describe, lstm_matmul_gflops, machine_speed


def _config(architecture: str, **settings) -> MetaTrainConfig:
    # A symbolic optimizer needs a rule; the Adam-like built-in has one constant to meta-train.
    rule = dict(BUILTIN_RULES["adam"]) if architecture == "symbolic" else {}
    return MetaTrainConfig(architecture=architecture, optimizer_config=rule, **settings)


def seconds_per_meta_step(
    architecture: str, unroll: int, repeats: int, compile: bool, coordinate_threads: int = 1
) -> float:
    config = _config(architecture, horizons=[unroll], unroll=unroll, compile=compile)
    trainer = MetaTrainer(config, "/tmp", coordinate_threads=coordinate_threads)
    for _ in range(2):  # warm-up: data loading, allocator, and both compiles (fresh state, state with a graph)
        trainer.meta_trajectory(unroll)
    started = time.perf_counter()
    for _ in range(repeats):
        trainer.meta_trajectory(unroll)
    return (time.perf_counter() - started) / repeats


def time_meta_epochs(
    architecture: str, compile: bool, epochs: int = 1, coordinate_threads: int = 1
) -> list[dict[str, Any]]:
    """``epochs`` classic meta-epochs timed one after another, after one warm-up trajectory.

    Each comes back as a row: its wall-clock seconds, each trajectory's seconds, and the GFLOP/s
    of the LSTM-shaped product measured just before it. That product's speed swings by 2× within
    minutes on a shared CPU while a square product's stays put, and trajectory times follow it.
    With ``coordinate_threads`` > 1 each inner step's coordinates are split over that many threads
    of one core each (``learned_optim.meta.coordinate_split``).
    """
    config = _config(architecture, horizons=[100], unroll=20, trajectories_per_epoch=20, compile=compile)
    trainer = MetaTrainer(config, "/tmp", coordinate_threads=coordinate_threads)
    trainer.meta_trajectory(40)
    rows = []
    for _ in range(epochs):
        product_gflops = round(lstm_matmul_gflops(), 1)
        trajectories = []
        for _ in range(config.trajectories_per_epoch):
            started = time.perf_counter()
            trainer.meta_trajectory(100)
            trajectories.append(time.perf_counter() - started)
        rows.append(
            {
                "compile": compile,
                "coordinate_threads": coordinate_threads,
                "meta_epoch_seconds": sum(trajectories),
                "lstm_matmul_gflops_before": product_gflops,
                "trajectory_seconds": [round(seconds, 4) for seconds in trajectories],
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--architecture", default="lstm")
    parser.add_argument("--unrolls", nargs="*", type=int, default=[5, 10, 20, 40])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-epoch", action="store_true")
    parser.add_argument("--epochs", type=int, default=1, help="meta-epochs to time, one after another")
    parser.add_argument("--compile", action="store_true", help="torch.compile the inner update")
    parser.add_argument(
        "--coordinate-threads", type=int, default=1, help="split each inner step's coordinates over N one-core threads"
    )
    parser.add_argument("--json", type=Path, help="also write the rows, commit and machine speed here")
    args = parser.parse_args()
    if args.epochs < 1:
        parser.error("--epochs must be at least 1")
    if args.coordinate_threads < 1:
        parser.error("--coordinate-threads must be at least 1")
    if args.json and not args.json.parent.is_dir():  # refuse now, not after minutes of timing
        parser.error(f"--json: folder {args.json.parent} does not exist")
    rows = []
    machine = platform.processor() or platform.machine()
    mode = "compiled update" if args.compile else "eager"
    if args.coordinate_threads > 1:
        threads = f"coordinates split over {args.coordinate_threads} threads of one core each"
    else:
        threads = f"{torch.get_num_threads()} threads"
    print(f"{args.architecture} on mnist-mlp, {mode}, {threads}, {machine}")
    speed_before = machine_speed()
    print(describe(speed_before))
    print("| K | s / meta-step | ms / inner step |\n|---:|---:|---:|")
    for unroll in args.unrolls:
        seconds = seconds_per_meta_step(args.architecture, unroll, args.repeats, args.compile, args.coordinate_threads)
        rows.append(
            {
                "unroll": unroll,
                "compile": args.compile,
                "coordinate_threads": args.coordinate_threads,
                "seconds_per_meta_step": seconds,
            }
        )
        print(f"| {unroll} | {seconds:.3f} | {seconds / unroll * 1e3:.1f} |")
    if not args.no_epoch:
        epochs = time_meta_epochs(args.architecture, args.compile, args.epochs, args.coordinate_threads)
        seconds = [row["meta_epoch_seconds"] for row in epochs]
        listed = ", ".join(f"{value:.1f}" for value in seconds)
        print(
            f"meta-epoch (20 trajectories × 100 steps, K = 20): {listed} s (median {statistics.median(seconds):.1f} s)"
        )
        products = ", ".join(f"{row['lstm_matmul_gflops_before']:.0f}" for row in epochs)
        print(f"LSTM-shaped product just before each epoch: {products} GFLOP/s")
        trajectories = [value for row in epochs for value in row["trajectory_seconds"]]
        print(f"single trajectories: {min(trajectories):.2f}–{max(trajectories):.2f} s")
        rows += epochs
    speed_after = machine_speed()
    print(describe(speed_after))
    print(json.dumps(rows))
    if args.json:
        record = {
            "architecture": args.architecture,
            "environment": environment("cpu"),
            "machine_speed_before": speed_before,
            "machine_speed_after": speed_after,
            "rows": rows,
        }
        args.json.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()

"""Whole training steps (forward, backward, optimizer) of the `real` loops, each optimizer ÷ Adam.

    python -m benchmarks.step_cost --optimizers celo2-small-tasks celo2-small-tasks+fused --json out.json

The training suites time every step of every run, but their runs share the machine with whatever
else runs and Adam's runs happen minutes away from the learned optimizer's. Here each loop's model
is trained by every optimizer in turn, a few steps at a time, in rounds (Adam, A, B, Adam, A, B,
…), in one process, after warm-up steps (which allocate the state and build compiled code); the
figure is the median over rounds of each optimizer's median step, divided by Adam's (foreach, lr
1e-3) in the same loop. Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from learned_optim.provenance import environment

from .real_loops import LOOPS, sample_batch
from .real_training import build_optimizer

BASELINE = "adam"


def _steps(loop: Any, data: Any, model: torch.nn.Module, optimizer: Any, batches: torch.Generator, count: int) -> list:
    """``count`` whole training steps; their wall times."""
    times = []
    for _ in range(count):
        inputs, targets = sample_batch(loop, data, batches)
        started = time.perf_counter()
        loss = loop.loss(model(inputs), targets)
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - started)
        optimizer.zero_grad()
    return times


def measure_loop(name: str, optimizers: list[str], rounds: int, steps: int, warmup: int) -> dict[str, Any]:
    """Median whole-step seconds of each optimizer (and Adam) on loop ``name``, side by side."""
    loop = LOOPS[name]
    data = loop.load_data()
    runs = {}
    for optimizer_name in [BASELINE, *optimizers]:
        torch.manual_seed(0)
        model = loop.build_model()
        lr = 1e-3 if optimizer_name == BASELINE else None
        runs[optimizer_name] = (model, build_optimizer(optimizer_name, list(model.parameters()), lr))
    batches = torch.Generator().manual_seed(0)
    for model, optimizer in runs.values():
        _steps(loop, data, model, optimizer, batches, warmup)
    medians: dict[str, list[float]] = {key: [] for key in runs}
    for _ in range(rounds):
        for key, (model, optimizer) in runs.items():
            medians[key].append(statistics.median(_steps(loop, data, model, optimizer, batches, steps)))
    seconds = {key: statistics.median(values) for key, values in medians.items()}
    return {
        "loop": name,
        "parameters": sum(p.numel() for p in runs[BASELINE][0].parameters()),
        "step_seconds": seconds,
        "vs_adam": {key: seconds[key] / seconds[BASELINE] for key in optimizers},
        "round_medians": medians,
    }


def table(rows: list[dict[str, Any]], optimizers: list[str]) -> str:
    lines = [
        "| loop | parameters | Adam step | " + " | ".join(f"{name} ÷ Adam" for name in optimizers) + " |",
        "|---|---:|---:|" + "---:|" * len(optimizers),
    ]
    for row in rows:
        ratios = " | ".join(f"{row['vs_adam'][name]:.2f}×" for name in optimizers)
        lines.append(
            f"| {row['loop']} | {row['parameters']:,} | {row['step_seconds'][BASELINE] * 1e3:.1f} ms | {ratios} |"
        )
    medians = " | ".join(f"**{statistics.median(r['vs_adam'][name] for r in rows):.2f}×**" for name in optimizers)
    lines.append(f"| median loop | | | {medians} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--optimizers", nargs="+", default=["celo2-small-tasks", "celo2-small-tasks+fused"])
    parser.add_argument("--loops", nargs="+", default=[name for name in LOOPS if name != "mnist-mlp-sigmoid"])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=5, help="steps per optimizer per round")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = [measure_loop(name, args.optimizers, args.rounds, args.steps, args.warmup) for name in args.loops]
    print(table(rows, args.optimizers))
    if args.json:
        command = "python -m benchmarks.step_cost " + " ".join(
            ["--optimizers", *args.optimizers, "--loops", *args.loops, "--rounds", str(args.rounds)]
            + ["--steps", str(args.steps), "--warmup", str(args.warmup)]
            + (["--threads", str(args.threads)] if args.threads else [])
        )
        record = {"command": command, "environment": environment("cpu"), "rows": rows}
        args.json.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()

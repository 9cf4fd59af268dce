"""The quadratic task of Andrychowicz et al. 2016: learned optimizers against Adam tuned per step.

    python -m benchmarks.quadratic_eval --weights hamiltonian-quadratic hamiltonian-mnist

f(θ) = ‖Wθ − y‖² with W ~ N(0,1)^{10×10}, y ~ N(0,1)^10, θ0 = 0, fresh instances from seeds 1000,
1001, … (meta-training draws its own from seed 0). Adam runs every rate of the grid {1, 0.3, …,
1e-4} and keeps, for each reported step, the rate with the lowest mean f there; learned optimizers
run untuned at their default lr. Prints mean ± std of f over the seeds. The task has no data, so it is outside
``benchmarks.l2o_eval`` (which reports a loss on held-out examples).
"""

from __future__ import annotations

import argparse
import math

import torch

from learned_optim.factory import default_lr, make_optimizer
from learned_optim.meta.tasks import get_task

from .l2o_eval import LR_GRID, summarize
from .tuning import best


def final_losses(name: str, lr: float, seeds: int, steps: list[int]) -> dict[int, list[float]]:
    """f at each of ``steps`` for each seed (inf once a run has diverged)."""
    task = get_task("quadratic")
    losses: dict[int, list[float]] = {step: [] for step in steps}
    for seed in range(1000, 1000 + seeds):
        instance = task.init(torch.Generator().manual_seed(seed))
        theta = torch.nn.Parameter(instance["theta"])
        optimizer = make_optimizer(name, [theta], lr=lr)
        for step in range(1, max(steps) + 1):
            optimizer.zero_grad()
            loss = task.loss({**instance, "theta": theta}, None)
            loss.backward()
            optimizer.step()
            if step in losses:
                with torch.no_grad():
                    value = float(task.loss({**instance, "theta": theta}, None))
                losses[step].append(value if math.isfinite(value) else math.inf)
    return losses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", nargs="+", required=True)
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--report", nargs="+", type=int, default=[100, 1000])
    args = parser.parse_args()
    adam = {lr: final_losses("adam", lr, args.seeds, args.report) for lr in LR_GRID}
    header = "| optimizer | " + " | ".join(f"t = {t}" for t in args.report) + " |"
    lines = [header, "|---|" + "---:|" * len(args.report)]
    chosen = {t: best(adam, lambda lr, t=t: adam[lr][t]) for t in args.report}
    tuned = " | ".join(f"{summarize(adam[chosen[t]][t])} ({chosen[t]:g})" for t in args.report)
    lines.append(f"| adam (best lr per t) | {tuned} |")
    for name in args.weights:
        learned = final_losses(name, default_lr(name), args.seeds, args.report)
        lines.append(f"| {name} | " + " | ".join(summarize(learned[t]) for t in args.report) + " |")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

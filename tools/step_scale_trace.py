"""The learned per-tensor step scale s of a Celo2 with ``step_scale_hidden``, traced along one
ordinary training loop of the ``real`` suite (constant lr, its default).

    python -m tools.step_scale_trace fashion-autoencoder [--weights celo2-general] [--steps 2000]

Prints, at a few steps, the training loss and s for each parameter tensor in model order.
"""

from __future__ import annotations

import argparse

import torch

import learned_optim as lo
from benchmarks.real_loops import LOOPS, sample_batch
from learned_optim.optimizers import celo2_step_scale

REPORTED = (1, 10, 100, 300, 500, 1000, 1500, 2000, 5000, 10000)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("loop", choices=sorted(LOOPS))
    parser.add_argument("--weights", default="celo2-general")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=1000)
    args = parser.parse_args()
    loop = LOOPS[args.loop]
    data = loop.load_data()
    torch.manual_seed(args.seed)
    model = loop.build_model()
    optimizer = lo.load(args.weights, model.parameters())
    if not getattr(optimizer.config, "step_scale_hidden", 0):
        raise SystemExit(f"{args.weights} has no learned step scale (step_scale_hidden is 0)")
    scales: list[float] = []
    traced = celo2_step_scale.step_scale_outside_autograd

    def recording(*arguments, **keywords):  # the eager step outside autograd computes s here
        scale = traced(*arguments, **keywords)
        scales.append(scale)
        return scale

    celo2_step_scale.step_scale_outside_autograd = recording
    batches = torch.Generator().manual_seed(args.seed)
    print("step  loss  s per tensor")
    for step in range(1, args.steps + 1):
        inputs, targets = sample_batch(loop, data, batches)
        loss = loop.loss(model(inputs), targets)
        loss.backward()
        scales.clear()
        optimizer.step()
        optimizer.zero_grad()
        if step in REPORTED or step == args.steps:
            print(step, f"{loss.item():.4f}", " ".join(f"{s:.2f}" for s in scales))


if __name__ == "__main__":
    main()

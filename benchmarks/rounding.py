"""Rounding sensitivity of every shipped learned optimizer, beside SGD with momentum and Adam.

    python -m benchmarks.rounding                  # writes benchmarks/results/rounding/results.{json,md}

The probe (``learned_optim.diagnostics.rounding``): a small ReLU MLP trained for 20 steps twice,
once with every gradient scaled by 1 + 1e-6; the figure is the largest parameter difference. A
shipped optimizer must stay below ``ROUNDING_SENSITIVITY_LIMIT`` (tests/test_diagnostics.py checks
it); the model cards quote their row.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

import learned_optim as lo
from learned_optim.diagnostics import ROUNDING_SENSITIVITY_LIMIT, rounding_sensitivity
from learned_optim.provenance import environment

BASELINES = {
    "SGD with momentum (lr 0.1, 0.9)": lambda params: torch.optim.SGD(params, lr=0.1, momentum=0.9),
    "Adam (lr 1e-3)": lambda params: torch.optim.Adam(params, lr=1e-3),
}


def measure(weights: list[str]) -> dict[str, float]:
    builders = dict(BASELINES)
    for name in weights:
        builders[name] = lambda params, name=name: lo.load(name, params)
    return {name: rounding_sensitivity(build) for name, build in builders.items()}


def markdown(figures: dict[str, float], environment: dict) -> str:
    rows = "\n".join(
        f"| {name} | {value:.1e} | {'yes' if value < ROUNDING_SENSITIVITY_LIMIT else '**no**'} |"
        for name, value in figures.items()
    )
    return (
        "# Rounding sensitivity\n\n"
        "Largest parameter difference after 20 steps on a small ReLU MLP when every gradient is scaled by "
        "1 + 1e-6 (`learned_optim.diagnostics.rounding`). "
        f"Limit for shipped weights: {ROUNDING_SENSITIVITY_LIMIT:.0e}.\n\n"
        "| optimizer | sensitivity | below the limit |\n|---|---|---|\n"
        f"{rows}\n\n"
        f"Command: `{environment['command']}`; commit {environment['commit']}; {environment['machine']}; "
        f"torch {environment['torch']}.\n"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", nargs="*", help="names or folders (default: every shipped one)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/rounding"))
    args = parser.parse_args(argv)
    weights = args.weights if args.weights is not None else [e["name"] for e in lo.list_pretrained()]
    figures = measure(weights)
    env = {**environment("cpu"), "command": " ".join(["python -m benchmarks.rounding", *(argv or sys.argv[1:])])}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps({"environment": env, "sensitivity": figures}, indent=2) + "\n")
    (args.out / "results.md").write_text(markdown(figures, env))
    print(markdown(figures, env))


if __name__ == "__main__":
    main()

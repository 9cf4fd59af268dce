"""The lower bound each optimizer's step can reach on this machine, beside the measured step.

    python -m tools.roofline                                        # bounds at 10M parameters
    python -m tools.roofline --measured benchmarks/results/overhead/celo2/run7-1e7.json

Each step is counted per coordinate of a stack of square n × n float32 matrices (n = 1024, ten of
them for 10M parameters): floating-point operations (FLOP, a fused multiply-add counting two) and
the bytes a step must move between memory and the cores, reading what it reads and writing what it
writes once (its state and the parameter; a step that makes several passes moves more). The lower
bound of a step is max(FLOP / peak, bytes / bandwidth), with peak the machine's float32 matrix
product rate and bandwidth its streaming rate (``tools.machine_speed``, measured now): no step
runs its arithmetic faster than the matrix product does, nor streams faster than ``a + b``.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

from tools.machine_speed import machine_speed

WIDTH = 1024
WORD = 4  # float32 bytes


@dataclass(frozen=True)
class StepCost:
    """Per-coordinate cost of one step, and how it was counted."""

    name: str
    flop: float
    bytes: float
    counted: str
    rows: tuple[str, ...]  # the overhead benchmark's rows this bounds


def newton_schulz_flop(n: int = WIDTH, iterations: int = 5) -> float:
    """Quintic Newton–Schulz on an n × n matrix, per coordinate: each iteration forms A = X Xᵀ,
    A², and (bA + cA²) X, three n³ multiply-adds (2n³ FLOP each): 30 n FLOP per coordinate."""
    return iterations * 3 * 2 * n**3 / n**2


# Celo2's learned network per coordinate (celo2_kernel.cpp): first layer 18 × 8 multiply-adds, a
# hidden layer 8 × 8, the output layer 8 × 2, ReLUs; its 18 features (about 25 operations) are
# built twice, once for their squares (pass 1) and once for the network (pass 2); the momenta and
# RMS accumulators' updates (4 lerps) and the final normalisation are a dozen more.
CELO2_NETWORK_FLOP = 2 * (18 * 8 + 8 * 8 + 8 * 2) + 16 + 2 * 25 + 18 + 12 + 2 * 4 + 3
# Read gradient, parameter, 3 momenta and the RMS accumulator; write them and the parameter; the
# normalisation over each matrix needs its statistics before the network, so the inputs are read
# twice (pass 1 and pass 2).
CELO2_BYTES = WORD * (6 + 6 + 4 + 1)

COSTS = (
    StepCost(
        "Adam",
        12,
        WORD * 7,
        "m, v updates, bias-corrected m̂ / (√v̂ + ε), p update; read p, g, m, v; write p, m, v",
        ("adam", "adam-foreach", "adam-fused"),
    ),
    StepCost(
        "SGD with momentum",
        4,
        WORD * 5,
        "buf = μ buf + g, p -= lr buf; read p, g, buf; write p, buf",
        ("sgd-momentum",),
    ),
    StepCost(
        "Muon (float32 Newton–Schulz)",
        newton_schulz_flop() + 6,
        WORD * 5,
        "momentum, 5 quintic Newton–Schulz iterations on the matrix (30 n FLOP), p update",
        ("muon-float32", "muon"),
    ),
    StepCost(
        "Celo2 learned path (celo2-base)",
        CELO2_NETWORK_FLOP,
        CELO2_BYTES,
        "accumulators, 18 features twice, MLP 18→8→8→2, normalisations; inputs read twice",
        ("celo2-base", "celo2-base+fused"),
    ),
    StepCost(
        "Celo2 (learned path + Newton–Schulz)",
        CELO2_NETWORK_FLOP + newton_schulz_flop(),
        CELO2_BYTES,
        "celo2-base plus 5 Newton–Schulz iterations",
        ("celo2", "celo2+fused", "celo2-small-tasks", "celo2-small-tasks+fused"),
    ),
    StepCost(
        "Hamiltonian, compact",
        40,
        WORD * 7,
        "a few dozen elementwise operations; read p, g and 2 state words; write p and the state",
        ("hamiltonian-mnist", "hamiltonian-mnist+fused", "hamiltonian", "hamiltonian+fused"),
    ),
    StepCost(
        "RNNprop",
        2 * 2 * 4 * 20 * (20 + 20 + 2) + 200,
        WORD * (2 + 82 * 2 + 1),
        "two LSTM layers of 20 units (4 gates over 20 inputs + 20 recurrent); 82 state words read and written",
        ("rnnprop", "rnnprop+fused"),
    ),
    StepCost(
        "Symbolic (Adam-like rule)",
        12,
        WORD * 7,
        "the rule's operators on its accumulators; read p, g, m, v; write p, m, v",
        ("symbolic", "symbolic+fused", "symbolic-rnnprop-mnist+fused"),
    ),
)


def bounds(parameters: int, speed: dict[str, float]) -> list[dict[str, float | str]]:
    """Each step's FLOP, bytes and lower bound in seconds at ``parameters`` coordinates."""
    peak = speed["square_matmul_gflops"] * 1e9
    bandwidth = speed["add_gbytes_per_second"] * 1e9
    return [
        {
            "step": cost.name,
            "flop_per_coordinate": cost.flop,
            "bytes_per_coordinate": cost.bytes,
            "compute_seconds": cost.flop * parameters / peak,
            "memory_seconds": cost.bytes * parameters / bandwidth,
            "bound_seconds": max(cost.flop * parameters / peak, cost.bytes * parameters / bandwidth),
            "rows": ",".join(cost.rows),
            "counted": cost.counted,
        }
        for cost in COSTS
    ]


def table(rows: list[dict], measured: dict[str, float]) -> str:
    lines = [
        "| step | FLOP / coordinate | bytes / coordinate | bound: compute | bound: memory | lower bound | measured |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for row in rows:
        seen = [f"{name} {measured[name] * 1e3:.0f} ms" for name in row["rows"].split(",") if name in measured]
        lines.append(
            f"| {row['step']} | {row['flop_per_coordinate']:,.0f} | {row['bytes_per_coordinate']:.0f} "
            f"| {row['compute_seconds'] * 1e3:.1f} ms | {row['memory_seconds'] * 1e3:.1f} ms "
            f"| **{row['bound_seconds'] * 1e3:.1f} ms** | {'; '.join(seen) or '—'} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parameters", type=float, default=10 * WIDTH * WIDTH)
    parser.add_argument("--measured", type=Path, nargs="*", default=[], help="overhead JSON files (their medians)")
    args = parser.parse_args()
    speed = machine_speed()
    print(
        f"this machine now: {speed['square_matmul_gflops']:.0f} GFLOP/s (float32 1024² product), "
        f"{speed['add_gbytes_per_second']:.1f} GB/s (a + b); {int(args.parameters):,} parameters"
    )
    measured: dict[str, list[float]] = {}
    for path in args.measured:
        for row in json.loads(path.read_text())["rows"]:
            if row["parameters"] == int(args.parameters):
                measured.setdefault(row["optimizer"], []).append(row["step_seconds"])
    medians = {name: sorted(times)[len(times) // 2] for name, times in measured.items()}
    print(table(bounds(int(args.parameters), speed), medians))


if __name__ == "__main__":
    main()

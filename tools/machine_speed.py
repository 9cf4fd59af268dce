"""How fast this machine is right now: float32 matrix products and memory bandwidth.

A shared CPU (a cloud VM) changes speed from hour to hour: the same compiled meta-epoch measured
24.9 s on one day and 39.6–41.8 s on another. Timing benchmarks print these figures beside theirs,
so that runs from different days can be compared.

    python -m tools.machine_speed

Figures (best of a few repeats, all threads): GFLOP/s of a square 1024 product, GFLOP/s of the
thin product of the LSTM optimizer's second layer over ``mnist-mlp``'s 15,910 coordinates
((80 × 40) · (40 × 15,910)), and GB/s of ``c = a + b`` over 128 MiB arrays (bytes read + written).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import torch


def _best_seconds(work: Callable[[], object], repeats: int) -> float:
    work()  # warm-up: allocation, thread pool
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        work()
        best = min(best, time.perf_counter() - started)
    return best


def matmul_gflops(rows: int, inner: int, columns: int, repeats: int = 10) -> float:
    """Throughput of a float32 ``(rows × inner) · (inner × columns)`` product, in GFLOP/s."""
    left, right = torch.randn(rows, inner), torch.randn(inner, columns)
    out = torch.empty(rows, columns)
    seconds = _best_seconds(lambda: torch.mm(left, right, out=out), repeats)
    return 2 * rows * inner * columns / seconds / 1e9


def add_gbytes_per_second(mebibytes: int = 128, repeats: int = 5) -> float:
    """Memory bandwidth of ``c = a + b`` on arrays of ``mebibytes`` each, in GB/s (3 arrays' bytes)."""
    numel = mebibytes * 2**20 // 4
    a, b, c = torch.rand(numel), torch.rand(numel), torch.empty(numel)
    seconds = _best_seconds(lambda: torch.add(a, b, out=c), repeats)
    return 3 * numel * 4 / seconds / 1e9


def lstm_matmul_gflops() -> float:
    """GFLOP/s of the LSTM optimizer's second-layer product over ``mnist-mlp``'s coordinates."""
    return matmul_gflops(80, 40, 15910)


def machine_speed() -> dict[str, float]:
    """The three figures of the module docstring, rounded."""
    return {
        "square_matmul_gflops": round(matmul_gflops(1024, 1024, 1024), 1),
        "lstm_matmul_gflops": round(lstm_matmul_gflops(), 1),
        "add_gbytes_per_second": round(add_gbytes_per_second(), 1),
    }


def describe(speed: dict[str, float]) -> str:
    return (
        f"machine now: {speed['square_matmul_gflops']:.0f} GFLOP/s (1024² product), "
        f"{speed['lstm_matmul_gflops']:.0f} GFLOP/s (LSTM-shaped product), "
        f"{speed['add_gbytes_per_second']:.1f} GB/s (a + b)"
    )


def main() -> None:
    speed = machine_speed()
    print(describe(speed))
    print(json.dumps(speed))


if __name__ == "__main__":
    main()

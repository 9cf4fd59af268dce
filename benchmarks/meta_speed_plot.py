"""Meta-epoch time against the machine's speed at that moment, from ``meta_speed --json`` records.

    python -m benchmarks.meta_speed_plot benchmarks/results/meta-speed/*.json \\
        --out benchmarks/results/meta-speed/epochs-vs-machine.png

Each point is one classic meta-epoch (20 trajectories × 100 steps, K = 20), placed at the GFLOP/s
of the LSTM-shaped product measured just before it (``lstm_matmul_gflops_before``; records written
before that field existed are skipped). The dashed line is issue #3's target, 25 s. On a shared
CPU the product's speed swings by 2× within minutes, and the points show how much of an epoch's
time that explains.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

TARGET_SECONDS = 25.0


def epoch_points(record: dict) -> list[tuple[float, float]]:
    """``(product GFLOP/s, epoch seconds)`` of each meta-epoch in a record that measured both."""
    return [
        (row["lstm_matmul_gflops_before"], row["meta_epoch_seconds"])
        for row in record.get("rows", [])
        if "meta_epoch_seconds" in row and "lstm_matmul_gflops_before" in row
    ]


def plot(series: dict[str, list[tuple[float, float]]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6.4, 4.2))
    for label, points in series.items():
        axes.scatter([p[0] for p in points], [p[1] for p in points], label=label, alpha=0.8)
    axes.axhline(TARGET_SECONDS, color="grey", linestyle="--", linewidth=1, label="target (25 s)")
    axes.set_xlabel("LSTM-shaped product just before the epoch (GFLOP/s)")
    axes.set_ylabel("meta-epoch (s)")
    axes.set_title("Classic meta-epoch (LSTM, mnist-mlp, K = 20) vs machine speed")
    axes.set_ylim(bottom=0)
    axes.set_xlim(left=0)
    axes.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(out, dpi=120)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("records", nargs="+", type=Path, help="JSON files written by meta_speed --json")
    parser.add_argument("--out", type=Path, required=True, help="PNG to write")
    args = parser.parse_args()
    series = {}
    for path in args.records:
        record = json.loads(path.read_text())
        points = epoch_points(record)
        if not points:
            print(f"{path}: no meta-epochs with the machine speed beside them; skipped")
            continue
        environment = record.get("environment", {})
        series[f"{path.stem} ({environment.get('commit', '?')})"] = points
        for gflops, seconds in points:
            print(f"{path.name}: {seconds:.1f} s at {gflops:.0f} GFLOP/s")
    if not series:
        parser.error("none of the records has meta-epochs with the machine speed beside them")
    plot(series, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

"""Meta-epoch times trajectory by trajectory, from ``meta_speed --json`` records.

    python -m tools.meta_speed_plot tools/results/meta-speed/lstm-compiled-cpu-2026-11-30-b.json \\
        --out tools/results/meta-speed/epochs.png

One panel per record. Each dot is one trajectory of a classic meta-epoch (100 steps in unrolls of
K = 20) at its pace, 20 × its seconds: the time a meta-epoch would take at that speed. Each epoch's
real time is drawn as a bar across its 20 trajectories, and the dashed line is issue #3's target,
25 s. On a shared CPU the pace jumps between two levels within minutes (the memory-bound
LSTM-shaped product runs at ~130 or ~55 GFLOP/s), and the plot shows which level each epoch got.
Records written before epochs carried ``trajectory_seconds`` are skipped.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

TARGET_SECONDS = 25.0


def timed_epochs(record: dict[str, Any]) -> list[dict[str, Any]]:
    """The meta-epoch rows of a record that timed each trajectory."""
    return [row for row in record.get("rows", []) if "meta_epoch_seconds" in row and row.get("trajectory_seconds")]


def plot(panels: dict[str, list[dict[str, Any]]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, all_axes = plt.subplots(len(panels), 1, figsize=(7.5, 3.2 * len(panels)), squeeze=False)
    for axes, (label, epochs) in zip(all_axes[:, 0], panels.items(), strict=True):
        first = 0
        for number, row in enumerate(epochs, 1):
            trajectories = row["trajectory_seconds"]
            positions = range(first + 1, first + len(trajectories) + 1)
            pace = [seconds * len(trajectories) for seconds in trajectories]
            axes.plot(positions, pace, ".", color="tab:blue", label="one trajectory × 20" if number == 1 else None)
            axes.hlines(
                row["meta_epoch_seconds"],
                first + 0.5,
                first + len(trajectories) + 0.5,
                color="tab:orange",
                label="meta-epoch" if number == 1 else None,
            )
            axes.annotate(
                f"{row['meta_epoch_seconds']:.1f}",
                (first + len(trajectories) / 2, row["meta_epoch_seconds"]),
                textcoords="offset points",
                xytext=(0, 4),
                ha="center",
                fontsize="x-small",
            )
            first += len(trajectories)
        axes.axhline(TARGET_SECONDS, color="grey", linestyle="--", linewidth=1, label="target (25 s)")
        axes.set_ylim(bottom=0)
        axes.set_xlabel("trajectory (in the order run)")
        axes.set_ylabel("meta-epoch pace (s)")
        axes.set_title(label, fontsize="small")
        axes.legend(fontsize="x-small", loc="lower right")
    figure.tight_layout()
    figure.savefig(out, dpi=120)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("records", nargs="+", type=Path, help="JSON files written by meta_speed --json")
    parser.add_argument("--out", type=Path, required=True, help="PNG to write")
    args = parser.parse_args()
    panels = {}
    for path in args.records:
        record = json.loads(path.read_text())
        epochs = timed_epochs(record)
        if not epochs:
            print(f"{path}: no meta-epochs timed trajectory by trajectory; skipped")
            continue
        environment = record.get("environment", {})
        split = epochs[0].get("coordinate_threads", 1)
        mode = f", coordinates split over {split} one-core threads" if split > 1 else ""
        label = f"{path.name}{mode}\ncommit {environment.get('commit', '?')}, {environment.get('machine', '?')}"
        panels[label] = epochs
        for row in epochs:
            trajectories = row["trajectory_seconds"]
            print(
                f"{path.name}: {row['meta_epoch_seconds']:.1f} s "
                f"(trajectories {min(trajectories):.2f}–{max(trajectories):.2f} s)"
            )
    if not panels:
        parser.error("none of the records has meta-epochs timed trajectory by trajectory")
    plot(panels, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

"""Peak memory of a suite's final runs that lack it, measured afresh without retraining them.

    python -m benchmarks.peak_memory benchmarks/results/resnet50 --threads 1

Runs finish with their peak memory recorded (``peak_bytes``, see ``benchmarks.runner``); runs
cached before that have none. For each such final run this repeats its first ``--steps`` training
steps (same task, optimizer, learning rate and seeds) in a fresh process, so that no earlier run's
allocations hide in the figure, and writes ``peak_bytes`` into the cell with how it was measured
(``peak_bytes_measured``: steps, command, environment). Later steps hold no more than the first
few: the optimizer state is allocated at the first step and every step has the same shapes. The
reports are then written again.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path

import torch
from tqdm.auto import tqdm

from learned_optim.provenance import environment

from .report import write_reports
from .runner import CellSpec, run_cell
from .suites import Results, recorded_fields

STEPS = 3


def spec_of(cell: dict, steps: int) -> CellSpec:
    """The cell's run, shortened to ``steps`` steps with nothing evaluated."""
    recorded = {k: tuple(v) if isinstance(v, list) else v for k, v in recorded_fields(cell, CellSpec).items()}
    return CellSpec(**{**recorded, "steps": steps, "report": ()})


def measure_in_fresh_process(cell: dict, steps: int, device: str, threads: int) -> int | None:
    module = __spec__.name if __spec__ and __spec__.name != "__main__" else "benchmarks.peak_memory"
    command = [sys.executable, "-m", module, "--worker", json.dumps(cell), str(steps), device, str(threads)]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def fill(out: Path, steps: int, device: str, threads: int, command: str, progress: bool = True) -> list[str]:
    """Measure every final cell of ``out/results.json`` without ``peak_bytes``; the keys measured."""
    results = Results(out / "results.json")
    if not results.cells:
        raise FileNotFoundError(f"no finished runs in {out / 'results.json'}")
    missing = [k for k, c in results.cells.items() if c["phase"] == "final" and c.get("peak_bytes") is None]
    for key in tqdm(missing, desc="peak memory", unit="run", disable=not progress):
        cell = results.cells[key]
        cell["peak_bytes"] = measure_in_fresh_process(cell, steps, device, threads)
        measured_at = environment(device, ignore=[out])  # the reports being filled in do not count as changes
        cell["peak_bytes_measured"] = {"steps": steps, "command": command, "environment": measured_at}
        results.write()  # each figure kept as soon as it is measured
    write_reports(results.data, out)
    return missing


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        cell, steps, device, threads = json.loads(sys.argv[2]), int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
        torch.set_num_threads(threads)
        print(json.dumps(run_cell(spec_of(cell, steps), device=device)["peak_bytes"]))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="a suite's results folder (holding results.json)")
    parser.add_argument("--steps", type=int, default=STEPS, help="training steps per measurement")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch CPU threads")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args()
    command = "python -m benchmarks.peak_memory " + shlex.join(sys.argv[1:])
    measured = fill(args.out, args.steps, args.device, args.threads, command, progress=not args.no_progress)
    print(f"measured {len(measured)} runs; reports rewritten in {args.out}")


if __name__ == "__main__":
    main()

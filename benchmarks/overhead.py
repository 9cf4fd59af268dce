"""Step time and memory of the learned optimizers against torch.optim.Adam.

    python -m benchmarks.overhead --sizes 1e6 1e7 --optimizers adam,adam-foreach,rnnprop,lstm

Each (optimizer, size) runs in a fresh subprocess on a stack of square linear layers with random
gradients. Reported per optimizer:

* step time: median of the timed steps (after one warm-up step that allocates the state);
* state: bytes of optimizer state per parameter, in 4-byte words;
* peak extra: the most memory one step holds beyond what was allocated before it, relative to
  the state size; for the first step (which allocates the state) and for later steps. On the
  CPU this is the process's resident high-water mark (Linux VmHWM, reset before the step); on
  CUDA, torch.cuda.max_memory_allocated.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

OPTIMIZERS = ("adam", "adam-foreach", "rnnprop", "lstm", "hamiltonian")


def build_optimizer(name: str, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    import learned_optim as lo

    if name == "adam":
        return torch.optim.Adam(params, lr=1e-3)
    if name == "adam-foreach":
        return torch.optim.Adam(params, lr=1e-3, foreach=True)
    if name in lo.ARCHITECTURES:  # a fresh network: cost does not depend on the weights
        return lo.ARCHITECTURES[name](params)
    return lo.load(name, params)


def _memory_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")


def measure(name: str, size: int, steps: int, device: str) -> dict:
    """One measurement, meant to run in a fresh process."""
    torch.manual_seed(0)
    width = 1024
    layers = max(1, round(size / (width * width)))
    params = [torch.nn.Parameter(torch.randn(width, width, device=device) * 0.01) for _ in range(layers)]
    for p in params:
        p.grad = torch.randn_like(p)
    optimizer = build_optimizer(name, params)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    times, peaks = [], []
    for _ in range(steps + 1):  # the first step allocates the state and is not timed
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
        else:
            before = _memory_kib("VmRSS") * 1024
            _reset_peak()
        start = time.perf_counter()
        optimizer.step()
        sync()
        times.append(time.perf_counter() - start)
        peak = torch.cuda.max_memory_allocated() if device == "cuda" else _memory_kib("VmHWM") * 1024
        peaks.append(max(0, peak - before))
    state_bytes = sum(
        v.numel() * v.element_size() for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v)
    )
    numel = sum(p.numel() for p in params)
    return {
        "optimizer": name,
        "parameters": numel,
        "step_seconds": statistics.median(times[1:]),
        "state_words_per_parameter": state_bytes / 4 / numel,
        "state_bytes": state_bytes,
        "first_step_peak_extra_bytes": peaks[0],
        "peak_extra_bytes": max(peaks[1:]),
    }


def run_all(names: list[str], sizes: list[int], steps: int, device: str) -> list[dict]:
    rows = []
    for size in sizes:
        for name in names:
            command = [sys.executable, "-m", "benchmarks.overhead", "--worker", name, str(size), str(steps), device]
            out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
            print(f"  measured {name} at {rows[-1]['parameters']:,} parameters", file=sys.stderr)
    return rows


def _relative(extra: int, state: int) -> str:
    return f"{extra / 2**20:.0f} MiB ({extra / state:.1%} of state)" if state else f"{extra / 2**20:.0f} MiB"


def table(rows: list[dict]) -> str:
    lines = [
        "| optimizer | parameters | step time | vs Adam | state (words/param) "
        "| peak extra, first step | peak extra, later steps |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    adam = {r["parameters"]: r["step_seconds"] for r in rows if r["optimizer"] == "adam"}
    for r in rows:
        ratio = r["step_seconds"] / adam[r["parameters"]] if r["parameters"] in adam else float("nan")
        lines.append(
            f"| {r['optimizer']} | {r['parameters']:,} | {r['step_seconds'] * 1e3:.1f} ms | {ratio:.1f}× "
            f"| {r['state_words_per_parameter']:.0f} | {_relative(r['first_step_peak_extra_bytes'], r['state_bytes'])} "
            f"| {_relative(r['peak_extra_bytes'], r['state_bytes'])} |"
        )
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        name, size, steps, device = sys.argv[2], int(float(sys.argv[3])), int(sys.argv[4]), sys.argv[5]
        torch.set_num_threads(torch.get_num_threads())
        print(json.dumps(measure(name, size, steps, device)))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", type=float, default=[1e6, 1e7])
    parser.add_argument("--optimizers", default=",".join(OPTIMIZERS), help="comma-separated; also pretrained names")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", type=Path, help="also write the rows and the machine description here")
    args = parser.parse_args()
    rows = run_all(args.optimizers.split(","), [int(s) for s in args.sizes], args.steps, args.device)
    print(table(rows))
    if args.json:
        machine = {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "device": args.device if args.device == "cpu" else torch.cuda.get_device_name(),
        }
        args.json.write_text(json.dumps({"machine": machine, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()

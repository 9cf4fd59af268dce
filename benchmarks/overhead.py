"""Step time and memory of the learned optimizers against torch.optim.Adam.

    python -m benchmarks.overhead --sizes 1e6 1e7 resnet50 --optimizers adam,adam-foreach,rnnprop,lstm
    learned-optim bench overhead                     # the same, as a suite, into bench-results/overhead

How each figure is measured: ``METHOD`` below (also printed in ``overhead.md``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from learned_optim.factory import FUSED_SUFFIX, make_optimizer
from learned_optim.optimizers import ARCHITECTURES
from learned_optim.provenance import environment

from . import memory

METHOD = """\
Each (optimizer, size) runs in a fresh subprocess with random gradients, on a stack of 1024×1024
matrices (sizes given as numbers) or on the parameter shapes of torchvision's ResNet-50
(``resnet50``, 25.6M parameters in 161 tensors). Learned optimizers run with a fresh network of
their architecture: the cost does not depend on the weights. Reported per optimizer:

* step time: median of the timed steps (after one warm-up step that allocates the state);
* state: bytes of optimizer state per parameter, in 4-byte words;
* peak extra: the most memory one step holds beyond what was allocated before it, relative to
  the state size; for the first step (which allocates the state) and for later steps. On the
  CPU this is the process's resident high-water mark (Linux VmHWM, reset before the step); on
  CUDA, torch.cuda.max_memory_allocated.
"""
# Every registered architecture with a fresh network (symbolic: the built-in Adam-like rule), eager
# and with fused=True (+fused: torch.compile).
LEARNED = (*ARCHITECTURES, *(f"{name}{FUSED_SUFFIX}" for name in ARCHITECTURES))
OPTIMIZERS = ("adam", "adam-foreach", "adam-fused", *LEARNED)


def _muon_float32(params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    """torch.optim.Muon with its Newton–Schulz iteration in float32 (in this worker process only).

    torch's runs the iteration's products in bfloat16, which a CPU without bfloat16 matrix units
    runs about 100× slower than float32: that row measures the CPU, this one Muon's algorithm at
    the precision Celo2's reference orthogonalises in (the same quintic iteration, five steps).
    """
    from torch.optim import _muon

    from learned_optim.optimizers.celo2 import newton_schulz

    _muon._zeropower_via_newtonschulz = newton_schulz
    return torch.optim.Muon(params)


# Rows beyond the factory's names: Celo2 without orthogonalisation (the paper's celo2-base) and
# torch.optim.Muon, which takes matrices only (not measured on ResNet-50's 1-D and 4-D shapes).
EXTRA_OPTIMIZERS = {
    "celo2-base": lambda params: __import__("learned_optim").Celo2(params, orthogonalize=False),
    "celo2-base+fused": lambda params: __import__("learned_optim").Celo2(params, orthogonalize=False, fused=True),
    "muon": lambda params: torch.optim.Muon(params),
    "muon-float32": _muon_float32,
}


def parameter_shapes(size: str) -> list[tuple[int, ...]]:
    """``resnet50``: torchvision ResNet-50's parameter shapes; a number: that many 1024×1024 matrices' worth."""
    if size == "resnet50":
        import torchvision

        with torch.device("meta"):
            return [tuple(p.shape) for p in torchvision.models.resnet50().parameters()]
    width = 1024
    return [(width, width)] * max(1, round(float(size) / (width * width)))


def measure(name: str, size: str, steps: int, device: str) -> dict:
    """One measurement, meant to run in a fresh process."""
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(shape, device=device) * 0.01) for shape in parameter_shapes(size)]
    for p in params:
        p.grad = torch.randn_like(p)
    optimizer = EXTRA_OPTIMIZERS[name](params) if name in EXTRA_OPTIMIZERS else make_optimizer(name, params)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    times, peaks = [], []
    for _ in range(steps + 1):  # the first step allocates the state and is not timed
        before = memory.current_bytes(device)
        memory.reset_peak(device)
        start = time.perf_counter()
        optimizer.step()
        sync()
        times.append(time.perf_counter() - start)
        peaks.append(max(0, memory.peak_bytes(device) - before))
    state_bytes = sum(
        v.numel() * v.element_size() for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v)
    )
    numel = sum(p.numel() for p in params)
    return {
        "optimizer": name,
        "size": size,
        "parameters": numel,
        "step_seconds": statistics.median(times[1:]),
        "state_words_per_parameter": state_bytes / 4 / numel,
        "state_bytes": state_bytes,
        "first_step_peak_extra_bytes": peaks[0],
        "peak_extra_bytes": max(peaks[1:]),
    }


def run_all(names: list[str], sizes: list[str], steps: int, device: str) -> list[dict]:
    rows = []
    module = __spec__.name if __spec__ and __spec__.name != "__main__" else "benchmarks.overhead"
    for size in sizes:
        for name in names:
            if name.startswith("muon") and size == "resnet50":
                continue
            command = [sys.executable, "-m", module, "--worker", name, str(size), str(steps), device]
            out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
            print(f"  measured {name} at {rows[-1]['parameters']:,} parameters", file=sys.stderr)
    return rows


def _relative(extra: int, state: int) -> str:
    return f"{extra / 2**20:.0f} MiB ({extra / state:.1%} of state)" if state else f"{extra / 2**20:.0f} MiB"


def table(rows: list[dict]) -> str:
    lines = [
        "| optimizer | parameters | step time | vs Adam | state (words/param) "
        "| peak extra, first step | peak extra, later steps | peak memory vs Adam |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    baseline = "adam" if any(r["optimizer"] == "adam" for r in rows) else "adam-foreach"
    adam = {r["parameters"]: r for r in rows if r["optimizer"] == baseline}
    for r in rows:
        reference = adam.get(r["parameters"])
        ratio = f"{r['step_seconds'] / reference['step_seconds']:.1f}×" if reference else "—"
        memory = f"{peak_memory(r) / peak_memory(reference):.1f}×" if reference else "—"
        lines.append(
            f"| {r['optimizer']} | {r['parameters']:,} | {r['step_seconds'] * 1e3:.1f} ms | {ratio} "
            f"| {r['state_words_per_parameter']:.0f} | {_relative(r['first_step_peak_extra_bytes'], r['state_bytes'])} "
            f"| {_relative(r['peak_extra_bytes'], r['state_bytes'])} | {memory} |"
        )
    return "\n".join(lines)


def peak_memory(row: dict) -> int:
    """The most the optimizer holds at once: its state plus the largest transient of a later step."""
    return row["state_bytes"] + row["peak_extra_bytes"]


def write(rows: list[dict], out: Path, device: str, command: str) -> None:
    """``overhead.json`` (rows and machine) and ``overhead.md`` (the table) in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    env = environment(device)
    (out / "overhead.json").write_text(json.dumps({"command": command, "environment": env, "rows": rows}, indent=2))
    (out / "overhead.md").write_text(
        f"# Optimizer overhead\n\nCommand: `{command}` at commit {env['commit']}, torch {env['torch']}, "
        f"{env['device']} ({env['machine']}, {env['threads']} threads).\n\n{METHOD}\n"
        f"{table(rows)}\n"
    )


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        name, size, steps, device = sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
        torch.set_num_threads(torch.get_num_threads())
        print(json.dumps(measure(name, size, steps, device)))
        return
    parser = argparse.ArgumentParser(
        description=__doc__ + "\n" + METHOD, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", nargs="+", default=["1e6", "1e7"], help="numbers, or resnet50")
    parser.add_argument("--optimizers", default=",".join(OPTIMIZERS), help="comma-separated; also pretrained names")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", type=Path, help="also write the rows and the machine description here")
    args = parser.parse_args()
    rows = run_all(args.optimizers.split(","), args.sizes, args.steps, args.device)
    print(table(rows))
    if args.json:
        record = {"environment": environment(args.device), "rows": rows}
        args.json.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()

"""The port-Hamiltonian optimizer's targets, measured and printed (issue: Hamiltonian learned optimizer).

    python -m tools.hamiltonian_targets [--weights hamiltonian-mnist ...] [--skip-speed]

For each named Hamiltonian (default: the shipped ``hamiltonian-mnist``):

* quality: on ``mnist-mlp`` below tuned Adam at steps 100 and 1000, no diverged seed at 2000; on
  ``mnist-mlp-relu`` within 10% of tuned Adam at steps 100 and 1000 (20 seeds, the protocol of
  ``benchmarks.l2o_eval``, read from ``benchmarks/results/l2o-<task>.json``; run it first);
* speed: step time ≤ 3 × ``torch.optim.Adam``'s at 10M parameters and state ≤ 2 words per
  parameter beyond Adam's (``benchmarks.overhead``, fresh processes, eager and ``fused=True``).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from benchmarks import l2o_eval, overhead
from benchmarks.stats import mean
from tools.targets import status

WEIGHTS = ["hamiltonian-mnist"]
RESULTS = Path("benchmarks/results")


def _losses(task: str, steps: int, names: list[str], report: list[int]) -> dict[str, dict[int, list[float]]] | None:
    path = RESULTS / f"l2o-{task}.json"
    if not path.exists():
        return None
    args = argparse.Namespace(seeds=20, steps=steps, baselines=["adam"], weights=names)
    return l2o_eval.reported_losses(json.loads(path.read_text()), args, report)


def quality(name: str) -> list[str]:
    lines = []
    mnist = _losses("mnist-mlp", 2000, [name], [100, 1000, 2000])
    if mnist is None or name not in mnist:
        return [f"| {name} quality | not measured: `python -m benchmarks.l2o_eval --weights {name}` | | missing |"]
    for step in (100, 1000):
        learned, adam = mean(mnist[name][step]), mean(mnist["adam"][step])
        measured = f"{learned:.3f} vs {adam:.3f}"
        lines.append(f"| {name} mnist-mlp t={step} | {measured} | below tuned Adam | {status(learned < adam)} |")
    finite = sum(map(math.isfinite, mnist[name][2000]))
    seeds = len(mnist[name][2000])
    measured = f"{finite}/{seeds} seeds finite"
    lines.append(f"| {name} mnist-mlp t=2000 | {measured} | none diverges | {status(finite == seeds)} |")
    relu = _losses("mnist-mlp-relu", 1000, [name], [100, 1000])
    if relu is None or name not in relu:
        command = f"python -m benchmarks.l2o_eval --task mnist-mlp-relu --steps 1000 --weights {name}"
        return [*lines, f"| {name} mnist-mlp-relu | not measured: `{command}` | | missing |"]
    for step in (100, 1000):
        learned, adam = mean(relu[name][step]), mean(relu["adam"][step])
        measured = f"{learned:.3f} vs {adam:.3f} ({learned / adam - 1:+.0%})"
        lines.append(f"| {name} mnist-mlp-relu t={step} | {measured} | within 10% | {status(learned <= 1.1 * adam)} |")
    return lines


def speed(names: list[str]) -> list[str]:
    candidates = [variant for name in names for variant in (name, name + "+fused")]
    rows = overhead.run_all(["adam", *candidates], ["1e7"], steps=10, device="cpu")
    adam = rows[0]
    lines = []
    for row in rows[1:]:
        ratio = row["step_seconds"] / adam["step_seconds"]
        extra_words = row["state_words_per_parameter"] - adam["state_words_per_parameter"]
        measured = (
            f"{row['step_seconds'] * 1e3:.1f} ms vs {adam['step_seconds'] * 1e3:.1f} ms ({ratio:.2f}×), "
            f"{extra_words:+.0f} state words"
        )
        met = ratio <= 3 and extra_words <= 2
        lines.append(f"| {row['optimizer']} speed @ 10M | {measured} | ≤ 3×, ≤ +2 words | {status(met)} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", nargs="+", default=WEIGHTS)
    parser.add_argument("--skip-speed", action="store_true")
    args = parser.parse_args()
    lines = ["| target | measured | wanted | status |", "|---|---|---|---|"]
    for name in args.weights:
        lines += quality(name)
    if not args.skip_speed:
        lines += speed(args.weights)
    print("\n".join(lines))


if __name__ == "__main__":
    main()

"""The symbolic-distillation targets, measured and printed (issue: symbolic distillation).

    python -m tools.distill_targets [--skip-speed]

* sanity: distillation of synthetic teachers (SGD −0.01·g, heavy-ball momentum 0.6, Adam) recovers
  SGD exactly and the others with held-out R² ≥ 0.95;
* fidelity: held-out R² of the shipped ``symbolic-rnnprop-mnist`` (from its ``config.json``) ≥ 0.9;
* quality: ``symbolic-rnnprop-mnist`` on ``mnist-mlp`` (20 seeds, the protocol of
  ``benchmarks.l2o_eval``, read from ``benchmarks/results/l2o-mnist-mlp.json``) within 15% of
  its teacher at steps 100 and 1000 and below tuned Adam at step 1000;
* speed: step time of ``Symbolic`` ≤ 1.2 × ``torch.optim.Adam(foreach=True)`` at 10M parameters and
  state ≤ Adam's (``benchmarks.overhead``, fresh processes); also on ResNet-50's parameter shapes.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

import learned_optim as lo
from benchmarks import l2o_eval, overhead
from benchmarks.stats import mean
from learned_optim.meta import distill
from learned_optim.meta.regression import OperonBackend, SearchSettings
from tools.targets import status

STUDENT, TEACHER = "symbolic-rnnprop-mnist", "rnnprop-mnist"


def _momentum(g: torch.Tensor, state: dict) -> tuple[torch.Tensor, dict]:
    buffer = 0.6 * state.get("buffer", torch.zeros_like(g)) + g
    return 0.01 * buffer, {"buffer": buffer}


def _adam(g: torch.Tensor, state: dict) -> tuple[torch.Tensor, dict]:
    t = state.get("t", 0) + 1
    m = 0.9 * state.get("m", torch.zeros_like(g)) + 0.1 * g
    v = 0.999 * state.get("v", torch.zeros_like(g)) + 0.001 * g * g
    return 0.001 * (m / (1 - 0.9**t)) / ((v / (1 - 0.999**t)).sqrt() + 1e-8), {"t": t, "m": m, "v": v}


SYNTHETIC = {
    "sgd": (lambda g, state: (0.01 * g, state), ["g", "m_tilde"]),
    "momentum(0.6)": (_momentum, ["g", "g_lag1", "g_lag2", "m_0.5", "m_0.9"]),
    "adam": (_adam, ["g", "m_tilde", "g_tilde"]),
}


def sanity(time_limit: int) -> list[str]:
    lines = []
    for name, (teacher, inputs) in SYNTHETIC.items():
        dataset = distill.record_synthetic(teacher)
        chosen = distill.fit(dataset, inputs, OperonBackend(), SearchSettings(time_limit=time_limit)).chosen
        target = "exactly 0.01·g" if name == "sgd" else "R² ≥ 0.95"
        met = chosen.rule.infix() == "(0.01 * g)" if name == "sgd" else chosen.heldout_r2 >= 0.95
        measured = f"`{chosen.rule.infix()}`, R² {chosen.heldout_r2:.4f}"
        lines.append(f"| sanity {name} | {measured} | {target} | {status(met)} |")
    return lines


def fidelity() -> list[str]:
    metrics = lo.from_pretrained(STUDENT).metrics["fidelity"]
    r2 = metrics["heldout_r2"]
    return [f"| fidelity {STUDENT} | held-out R² {r2:.3f} (size {metrics['size']}) | ≥ 0.9 | {status(r2 >= 0.9)} |"]


def quality(results_path: Path) -> list[str]:
    results = json.loads(results_path.read_text())
    args = argparse.Namespace(seeds=20, steps=2000, baselines=["adam"], weights=[TEACHER, STUDENT])
    losses = l2o_eval.reported_losses(results, args, [100, 1000])
    if STUDENT not in losses:
        return [f"| quality | not measured: run `python -m benchmarks.l2o_eval --weights {STUDENT}` | | missing |"]

    def loss(name: str, step: int) -> float:
        return mean(losses[name][step])

    lines = []
    for step in (100, 1000):
        student, teacher = loss(STUDENT, step), loss(TEACHER, step)
        gap = student / teacher - 1
        measured = f"{student:.4f} vs {teacher:.4f} ({gap:+.0%})"
        lines.append(f"| quality t={step} vs teacher | {measured} | within 15% | {status(gap <= 0.15)} |")
    student, adam = loss(STUDENT, 1000), loss("adam", 1000)
    lines.append(f"| quality t=1000 vs tuned Adam | {student:.4f} vs {adam:.4f} | below | {status(student < adam)} |")
    return lines


def speed() -> list[str]:
    students = ["symbolic", "symbolic+fused", STUDENT, STUDENT + "+fused"]
    rows = overhead.run_all(["adam-foreach", *students], ["1e7", "resnet50"], steps=10, device="cpu")
    by = {(r["optimizer"], r["size"]): r for r in rows}
    lines = []
    for size in ("1e7", "resnet50"):
        adam = by[("adam-foreach", size)]
        for name in students:
            row = by[(name, size)]
            ratio = row["step_seconds"] / adam["step_seconds"]
            # Both count the scalar step tensor, so compare with Adam's rather than with 2.
            words, adam_words = row["state_words_per_parameter"], adam["state_words_per_parameter"]
            lines.append(
                f"| speed {name} @ {size} | {row['step_seconds'] * 1e3:.1f} ms vs {adam['step_seconds'] * 1e3:.1f} ms "
                f"({ratio:.2f}×), state {words:.0f} words | ≤ 1.2×, ≤ Adam's "
                f"| {status(ratio <= 1.2 and words <= adam_words)} |"
            )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--time-limit", type=int, default=20, help="seconds of search per synthetic teacher")
    parser.add_argument("--results", type=Path, default=Path("benchmarks/results/l2o-mnist-mlp.json"))
    parser.add_argument("--skip-speed", action="store_true")
    args = parser.parse_args()
    lines = ["| target | measured | wanted | status |", "|---|---|---|---|"]
    lines += sanity(args.time_limit) + fidelity() + quality(args.results)
    if not args.skip_speed:
        lines += speed()
    print("\n".join(lines))


if __name__ == "__main__":
    main()

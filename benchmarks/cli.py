"""``learned-optim bench SUITE`` (also ``python -m benchmarks SUITE`` in a checkout).

Suites: quick (a few minutes: the pretrained generalists, every weights file but the study
objects, and the published Celo2 in a ReLU CNN, a character Transformer and the sigmoid MNIST MLP,
a slice of ``real`` with its protocol at a constant rate; see ``benchmarks.quick_suite``; ends
with one line per learned optimizer: where it wins and where it loses). mnist, transfer (every
pretrained learned optimizer), resnet50 (the recommended ones and celo2-published; see
``benchmarks.suites``): each learned optimizer at its default lr against SGD, SGD
with momentum and Adam, each at its tuned learning rate, and judged against the best of those
three at each reported step. overhead: step time and peak memory against
torch.optim.Adam (``benchmarks.overhead``). real: ordinary PyTorch training loops (a wide ReLU CNN, a
deep SiLU MLP, a character Transformer, an autoencoder, logistic regression) outside the
meta-training distribution, each pretrained generalist at its default lr against Adam at
1e-3 and tuned Adam and SGD with momentum, with and without a cosine schedule, at two lengths
(--length short: 200-300 steps, about 40 minutes on 2 CPU cores; long: 2,000 steps, into
--out/long, about 8x that) (schema learned_optim.bench.real/1, see ``benchmarks.real_suite``;
--tasks picks loops, --steps/--seeds/--tuning-seeds change the budget). Each suite writes into --out (default
bench-results/SUITE): results.json (schema below), results.md and SUITE.png; rerunning the same
command resumes, reusing every finished cell.

Schema learned_optim.bench.results/1 (training suites): top level suite, description, protocol,
command, environment (commit, torch, python, machine, device, threads), plans (per task: steps,
report, seeds, tuning_seeds, eval_examples, test_examples), grids (baseline -> learning rates),
baselines, learned, learned_lrs (learned optimizer -> the default lr it ran at), recommendations
(learned optimizer -> recommended / not recommended / study object), cells and summary. A cell
(key phase/task/optimizer@lr/seeds=N/steps=T) holds its specification (task, optimizer, lr,
seeds, steps, report, metrics, fit_split, eval_examples, test_examples), phase (tune or final),
weights_sha256 (learned optimizers), seconds, step_seconds (median), state_bytes_per_run,
parameters_per_run, peak_bytes (the most a training step of all seeds held; null where not
measurable; with peak_bytes_measured where ``python -m benchmarks.peak_memory`` measured it
afterwards), diverged_at (per seed: step or null), train_loss_curve (per-step minibatch
loss, mean over seeds), smoothed_curve (window, step, mean, std, seeds) and at (reported step ->
metric -> per-seed values). summary is task -> {plan, optimizers: optimizer -> reported step ->
{lr, lr_at_grid_edge, <metric>: {mean, std, per_seed}, diverged_seeds, step_seconds,
state_bytes_per_run, peak_bytes, and for learned optimizers best_baseline, vs_best_baseline, vs_adam}}; a
verdict is better, worse or tie (two standard errors of the difference of the means).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from . import overhead
from .report import write_reports
from .suites import SUITES, run_suite, with_overrides


def build_parser(prog: str = "learned-optim bench") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("suite", choices=["quick", *SUITES, "real", "overhead"])
    parser.add_argument("--out", type=Path, help="results folder (default: bench-results/<suite>)")
    parser.add_argument(
        "--optimizers",
        nargs="*",
        help="learned optimizers (default: quick, real: every one but the study objects, resnet50: the recommended "
        "ones, each with celo2-published; others: all)",
    )
    parser.add_argument("--baselines", nargs="*", help="subset of the suite's baselines (sgd, sgd-momentum, adam)")
    parser.add_argument("--tasks", nargs="*", help="train these tasks instead of the suite's")
    parser.add_argument("--steps", type=int, help="training steps per run (overrides the suite)")
    parser.add_argument("--report", nargs="*", type=int, help="steps at which to measure (overrides the suite)")
    parser.add_argument("--seeds", type=int, help="seeds of the final runs (overrides the suite)")
    parser.add_argument("--tuning-seeds", type=int, help="seeds of the learning-rate search (overrides the suite)")
    parser.add_argument("--sizes", nargs="*", default=["1e6", "1e7", "resnet50"], help="overhead: parameter sets")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument(
        "--length",
        nargs="*",
        choices=["short", "long"],
        help="real: which lengths to run (default both: short, each loop's 200-300 steps, into --out; "
        "long, 2,000 steps, into --out/long)",
    )
    parser.add_argument(
        "--schedules",
        nargs="*",
        choices=["constant", "cosine"],
        help="real: run only these schedules' final runs (default both); with --tasks, how several processes "
        "share one loop's long runs (its report shows what the last one ran: rerun without it to merge)",
    )
    parser.add_argument(
        "--update-cards",
        action="store_true",
        help="real: write each learned optimizer's rows into its local model card",
    )
    return parser


def main(argv: Sequence[str] | None = None, prog: str = "learned-optim bench") -> int:
    args = build_parser(prog).parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = args.out or Path("bench-results") / args.suite
    command = f"{prog} " + shlex.join(sys.argv[1:] if argv is None else list(argv))
    if args.suite == "overhead":
        names = ["adam", "adam-foreach", "adam-fused", "sgd-momentum", *(args.optimizers or overhead.LEARNED)]
        overhead.write(overhead.run_all(names, args.sizes, steps=3, device=args.device), out, args.device, command)
        print((out / "overhead.md").read_text())
        return 0
    if args.suite == "real":
        return _run_real(args, out, command)
    if args.suite == "quick":
        return _run_quick(args, out, command)
    suite = with_overrides(SUITES[args.suite], args.tasks, args.steps, args.report, args.seeds, args.tuning_seeds)
    results = run_suite(
        suite, out, args.optimizers, args.baselines, args.device, progress=not args.no_progress, command=command
    )
    paths = write_reports(results.data, out)
    results.write()
    print(paths[0].read_text())
    print("written: " + ", ".join(str(p) for p in [results.path, *paths]))
    return 0


def _run_real(args: argparse.Namespace, out: Path, command: str) -> int:
    from .real_report import update_cards, write_real_reports
    from .real_suite import LENGTHS, SEEDS, TUNING_SEEDS, run_real_suite

    written = []
    for length in args.length or LENGTHS:
        length_out = out if length == "short" else out / "long"
        results = run_real_suite(
            length_out,
            optimizers=args.optimizers,
            baselines=args.baselines,
            loops=args.tasks,
            steps=args.steps,
            seeds=args.seeds or SEEDS,
            tuning_seeds=args.tuning_seeds or TUNING_SEEDS,
            device=args.device,
            progress=not args.no_progress,
            command=command,
            length=length,
            **({"schedules": tuple(args.schedules)} if args.schedules else {}),
        )
        paths = write_real_reports(results.data, length_out)
        results.write()
        if args.update_cards:
            paths += update_cards(results.data, results.data["summary"], length_out / "results.md")
        print(paths[0].read_text())
        written += [results.path, *paths]
    print("written: " + ", ".join(str(p) for p in written))
    return 0


def _run_quick(args: argparse.Namespace, out: Path, command: str) -> int:
    from .quick_suite import one_line_summaries, run_quick_suite, write_quick_reports
    from .real_suite import SEEDS, TUNING_SEEDS

    results = run_quick_suite(
        out,
        optimizers=args.optimizers,
        device=args.device,
        progress=not args.no_progress,
        command=command,
        steps=args.steps,
        seeds=args.seeds or SEEDS,
        tuning_seeds=args.tuning_seeds or TUNING_SEEDS,
    )
    paths = write_quick_reports(results.data, out)
    results.write()
    print(paths[0].read_text())
    print("written: " + ", ".join(str(p) for p in [results.path, *paths]))
    print("\nIn one line, against the best tuned baseline (Adam or SGD with momentum, tuned per loop):")
    for line in one_line_summaries(results.data, results.data["summary"]):
        print(f"  {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main(prog="python -m benchmarks"))

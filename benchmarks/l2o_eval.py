"""The learned-optimizer evaluation protocol: learned optimizers against tuned baselines.

    python -m benchmarks.l2o_eval --weights rnnprop-mnist hamiltonian-mnist --task mnist-mlp --steps 2000

The protocol is ``PROTOCOL`` below (recorded in the results file).

All seeds train at once, stacked, through the optimizer classes a user calls
(``benchmarks.runner``). Finished (optimizer, lr) cells are cached in the output JSON (a learned
optimizer's only with the SHA-256 of its weights, so new weights are evaluated again), so
an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

import learned_optim as lo
from learned_optim.cards import set_subsection
from learned_optim.factory import default_lr
from learned_optim.provenance import environment

from . import runner
from .cache import write_cells
from .runner import EVAL_EXAMPLES, CellSpec
from .stats import mean
from .tuning import best

# Andrychowicz et al. 2016; Lv et al. 2017. Recorded in the results file's ``meta``.
PROTOCOL = """\
* the optimizee trains on the ``valid`` half of the training split (never seen in meta-training),
  from fresh initialisation seeds 1000, 1001, …;
* baselines Adam, RMSprop and SGD with momentum 0.9 each run every learning rate of the grid
  {1, 0.3, 0.1, …, 1e-4}; for each reported step t, each keeps the rate with the lowest mean
  training (minibatch) loss over steps 1…t and all seeds, so it gets its best rate for that
  horizon (a diverged run counts as infinite);
* learned optimizers run untuned at their default lr (1, the step they were trained with; Celo2: 1e-3);
* the reported training loss at step t is the cross-entropy of the optimizee on a fixed sample
  of 4096 examples of the data it trains on, mean ± std over seeds.
"""
LR_GRID = (1.0, 0.3, 0.1, 0.03, 0.01, 0.003, 0.001, 0.0003, 0.0001)
BASELINES = ("adam", "rmsprop", "sgd-momentum")
FIRST_SEED = 1000


def run_cell(task_name: str, optimizer: str, lr: float, seeds: int, steps: int, report: list[int]) -> dict[str, Any]:
    """Train ``seeds`` instances of the task for ``steps`` steps; losses at every step and at ``report``."""
    seed_list = tuple(range(FIRST_SEED, FIRST_SEED + seeds))
    spec = CellSpec(task_name, optimizer, lr, seed_list, steps, tuple(report), metrics=("train_loss",))
    cell = runner.run_cell(spec)
    return {
        "optimizer": optimizer,
        "lr": lr,
        "seeds": seeds,
        "steps": steps,
        "seconds": cell["seconds"],
        "mean_train_loss": mean(cell["train_loss_curve"]),
        "train_loss_curve": cell["train_loss_curve"],
        "eval_loss": {step: values["train_loss"] for step, values in cell["at"].items()},
    }


def write_results(out: Path, results: dict[str, Any]) -> None:
    """The cache: ``meta`` (task, environment, protocol) and one line per cell."""
    write_cells(out, {"meta": results.get("meta", {})}, results["cells"])


def summarize(values: list[float]) -> str:
    finite = [v for v in values if math.isfinite(v)]
    if len(finite) < len(values) or not finite:
        return f"diverged ({len(values) - len(finite)}/{len(values)})"
    mean = sum(finite) / len(finite)
    std = (sum((v - mean) ** 2 for v in finite) / max(1, len(finite) - 1)) ** 0.5
    return f"{mean:.3f} ± {std:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__ + "\n" + PROTOCOL, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--task", default="mnist-mlp")
    parser.add_argument("--weights", nargs="*", default=[], help="learned optimizers (names, dirs or Hub ids)")
    parser.add_argument("--baselines", nargs="*", default=list(BASELINES))
    parser.add_argument("--lr-grid", nargs="*", type=float, default=list(LR_GRID))
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--report", nargs="*", type=int, default=[100, 1000, 2000])
    parser.add_argument("--out", type=Path, help="results JSON (cache; default benchmarks/results/l2o-<task>.json)")
    parser.add_argument(
        "--update-cards", action="store_true", help="write the results into the model cards of local --weights"
    )
    args = parser.parse_args()
    report = [r for r in args.report if r <= args.steps]
    out = args.out or Path("benchmarks/results") / f"l2o-{args.task}.json"
    results = json.loads(out.read_text()) if out.exists() else {}
    cells = results.setdefault("cells", {})
    plan = [(b, lr) for b in args.baselines for lr in args.lr_grid] + [(w, default_lr(w)) for w in args.weights]
    # The cells this run adds make the results file itself differ from the commit: not dirt.
    env = environment(ignore=[out])
    for optimizer, lr in tqdm(plan, desc=f"{args.task}: optimizer × lr", unit="cell"):
        key = f"{optimizer}@{lr:g}/seeds={args.seeds}/steps={args.steps}"
        digest = runner.weights_digest(optimizer) if optimizer in args.weights else None
        if key in cells and cells[key].get("weights_sha256") == digest:
            continue  # cached; a learned optimizer's cell only for the same weights
        cell = run_cell(args.task, optimizer, lr, args.seeds, args.steps, report)
        provenance = {"commit": env["commit"], "machine": env["machine"]}
        cells[key] = cell | provenance | ({"weights_sha256": digest} if digest else {})
        results["meta"] = {"task": args.task, **env, "protocol": PROTOCOL.strip()}
        write_results(out, results)
    text = table(results, args, report)
    print(text)
    if args.update_cards:
        for name in args.weights:
            update_card(name, results, args, report, text)


def update_card(name: str, results: dict[str, Any], args: argparse.Namespace, report: list[int], text: str) -> None:
    """Record this task's figures in ``config.json`` metrics and the model card's Evaluation section."""
    directory = lo.hub.resolve(name)
    chosen = best_cells(results, args, report)
    document = json.loads((directory / "config.json").read_text())

    def figures(by_step: dict[int, Any]) -> dict[str, Any]:
        return {
            f"loss@{r}": {"value": summarize(cell["eval_loss"].get(str(r), [math.inf])), "lr": cell["lr"]}
            for r, cell in by_step.items()
        }

    # The commit and machine that ran this optimizer's cell (older cells predate them: the file's).
    own_cell = chosen[name][report[-1]]
    commit = own_cell.get("commit", results["meta"]["commit"])
    machine = own_cell.get("machine", results["meta"]["machine"])
    document.setdefault("metrics", {})[args.task] = {
        "protocol": f"{args.seeds} seeds, held-out half, baselines tuned over {list(args.lr_grid)}",
        "command": command_line(args),
        "commit": commit,
        "machine": machine,
        "results": {optimizer: figures(by_step) for optimizer, by_step in chosen.items()},
    }
    (directory / "config.json").write_text(json.dumps(document, indent=2) + "\n")
    section = (
        f"### {args.task}\n\n{text}\n\nCommand: `{command_line(args)}` at commit {commit} "
        f"({machine}, {results['meta']['threads']} threads).\n"
    )
    card = (directory / "README.md").read_text()
    (directory / "README.md").write_text(set_subsection(card, section))


def command_line(args: argparse.Namespace) -> str:
    weights = " ".join(args.weights)
    return (
        f"python -m benchmarks.l2o_eval --task {args.task} --steps {args.steps} --seeds {args.seeds} "
        f"--weights {weights}"
    )


def cells_of(results: dict[str, Any], name: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    suffix = f"/seeds={args.seeds}/steps={args.steps}"
    return [c for k, c in results["cells"].items() if k.startswith(f"{name}@") and k.endswith(suffix)]


def best_cell(cells: list[dict[str, Any]], horizon: int) -> dict[str, Any]:
    """The cell (learning rate) with the lowest mean training loss over the first ``horizon`` steps."""
    return best(cells, lambda c: [sum(c["train_loss_curve"][:horizon]) / horizon])


def best_cells(results: dict[str, Any], args: argparse.Namespace, report: list[int]) -> dict[str, dict[int, Any]]:
    """``{optimizer: {reported step: its best cell for that horizon}}``."""
    chosen = {}
    for name in [*args.baselines, *args.weights]:
        cells = cells_of(results, name, args)
        if cells:
            chosen[name] = {r: best_cell(cells, r) for r in report}
    return chosen


def reported_losses(
    results: dict[str, Any], args: argparse.Namespace, report: list[int]
) -> dict[str, dict[int, list[float]]]:
    """``{optimizer: {reported step: per-seed eval losses}}``, each at its best lr for that horizon."""
    return {
        name: {step: cell["eval_loss"].get(str(step), [math.inf]) for step, cell in by_step.items()}
        for name, by_step in best_cells(results, args, report).items()
    }


def table(results: dict[str, Any], args: argparse.Namespace, report: list[int]) -> str:
    chosen = best_cells(results, args, report)
    lines = [
        f"{args.task}: training loss on {EVAL_EXAMPLES} examples of the optimizee's data at step t, "
        f"mean ± std over {args.seeds} seeds (baselines at their best lr for that horizon, in brackets)",
        "",
        "| optimizer | " + " | ".join(f"t = {r}" for r in report) + " | s/run |",
        "|---|" + "---:|" * len(report) + "---:|",
    ]
    for name, by_step in chosen.items():
        values = " | ".join(
            f"{summarize(cell['eval_loss'].get(str(r), [math.inf]))} ({cell['lr']:g})" for r, cell in by_step.items()
        )
        seconds = by_step[report[-1]]["seconds"] / args.seeds
        lines.append(f"| {name} | {values} | {seconds:.1f} |")
    adam = cells_of(results, "adam", args)
    if adam:  # the hardest baseline: Adam's lowest reported loss over every rate of the grid
        values = []
        for r in report:
            cell = best(adam, lambda c, r=r: c["eval_loss"].get(str(r), [math.inf]))
            values.append(f"{summarize(cell['eval_loss'].get(str(r), [math.inf]))} ({cell['lr']:g})")
        lines.append(f"| adam, oracle lr per t | {' | '.join(values)} | |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()

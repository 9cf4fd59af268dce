"""``learned-optim diagnose``: train a task with several optimizers and report symmetry breaking.

For each optimizer, the same task instance (same initialisation and batches) is trained while a
:class:`SymmetryMonitor` records at every ``every``-th step; the report is one JSON file plus
``deviations.png`` (mean relative deviation per unit — 0 exact, 1 no cancellation, so optimizers
with different step sizes compare fairly — of the update −Δθ/lr and of the gradient, per symmetry
kind, optimizers side by side; the JSON also keeps absolute and signed sums) and
``conserved.png`` (relative drift of the conserved quantities, with the gradient-flow theory for
SGD with weight decay where that optimizer is in the list).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from learned_optim.diagnostics.monitor import SymmetryMonitor
from learned_optim.diagnostics.symmetry import theory_sgd_weight_decay
from learned_optim.factory import make_optimizer
from learned_optim.meta.tasks import get_task


def diagnose(task_name: str, optimizers: list[str], steps: int, every: int, seed: int = 0) -> dict[str, Any]:
    task = get_task(task_name)
    runs = {}
    for spec in optimizers:
        model = task.make_module(torch.Generator().manual_seed(seed))
        optimizer = make_optimizer(spec, model.parameters())
        monitor = SymmetryMonitor(model, optimizer, record_steps=range(0, steps, every))
        generator = torch.Generator().manual_seed(seed)
        losses = []
        for _ in range(steps):
            inputs, targets = task.sample(generator, "train")
            loss = task.loss_fn(model(inputs), targets)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
        monitor.close()
        runs[spec] = {
            **monitor.to_dict(),
            "loss": losses,
            "weight_decay": optimizer.param_groups[0].get("weight_decay", 0.0),
        }
    return {"task": task_name, "steps": steps, "every": every, "seed": seed, "runs": runs}


def _kind_series(run: dict[str, Any], kind: str, field: str) -> tuple[list[int], list[float]]:
    steps, values = [], []
    for record in run["records"]:
        entries = [e for e in record["structures"].values() if e["kind"] == kind and field in e]
        if entries:
            steps.append(record["step"])
            values.append(sum(e[field]["relative_mean"] for e in entries) / len(entries))
    return steps, values


def write_report(report: dict[str, Any], out: str | Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "diagnostics.json").write_text(json.dumps(report) + "\n")
    kinds = sorted({s["kind"] for run in report["runs"].values() for s in run["structures"]})
    figure, axes = plt.subplots(1, len(kinds), figsize=(5 * len(kinds), 4), squeeze=False)
    for axis, kind in zip(axes[0], kinds, strict=True):
        for index, (spec, run) in enumerate(report["runs"].items()):
            color = f"C{index}"
            axis.plot(*_kind_series(run, kind, "update"), color=color, label=f"{spec}: update")
            axis.plot(*_kind_series(run, kind, "gradient"), color=color, linestyle=":", label=f"{spec}: gradient")
        axis.set_yscale("log")
        axis.set_title(f"{kind}: mean relative deviation per unit")
        axis.set_xlabel("step")
    axes[0][0].legend(fontsize=7)
    figure.suptitle(f"{report['task']}: symmetry breaking (dotted: gradients, ≈ 0 by theory)")
    figure.tight_layout()
    figure.savefig(out / "deviations.png", dpi=110)
    plt.close(figure)

    figure, axes = plt.subplots(1, len(kinds), figsize=(5 * len(kinds), 4), squeeze=False)
    for axis, kind in zip(axes[0], kinds, strict=True):
        for index, (spec, run) in enumerate(report["runs"].items()):
            steps, drift = [], []
            first = None
            for record in run["records"]:
                values = [torch.tensor(e["conserved"]) for e in record["structures"].values() if e["kind"] == kind]
                if not values:
                    continue
                current = torch.cat(values)
                first = current if first is None else first
                steps.append(record["step"])
                drift.append(float(((current - first).abs() / (first.abs() + 1e-8)).mean()))
            axis.plot(steps, drift, color=f"C{index}", label=spec)
            if run["weight_decay"] and first is not None and spec.startswith("sgd"):
                lr = run["records"][0]["lr"]
                theory = theory_sgd_weight_decay(
                    kind, first, lr, run["weight_decay"], torch.tensor(steps, dtype=torch.float)
                )
                predicted = ((theory - first).abs() / (first.abs() + 1e-8)).mean(1)
                axis.plot(steps, predicted.tolist(), color=f"C{index}", linestyle="--", label=f"{spec}: theory")
        axis.set_title(f"{kind}: mean relative drift of the conserved quantity")
        axis.set_xlabel("step")
        axis.set_yscale("symlog", linthresh=1e-6)
    axes[0][0].legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(out / "conserved.png", dpi=110)
    plt.close(figure)
    return [out / "diagnostics.json", out / "deviations.png", out / "conserved.png"]

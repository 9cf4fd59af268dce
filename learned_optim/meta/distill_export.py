"""A distilled rule as a weights directory: config (rule as JSON), model card with LaTeX, response plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from learned_optim.cards import EVALUATION, NOT_EVALUATED, model_card
from learned_optim.hub import save_pretrained
from learned_optim.meta import sympy_rules
from learned_optim.meta.distill import Dataset, Distillation, predict
from learned_optim.optimizers.symbolic import INPUTS, Symbolic
from learned_optim.provenance import git_commit, machine

RESPONSE_PLOT = "response.png"


def plot_response(dataset: Dataset, distillation: Distillation, path: Path, teacher: str, points: int = 3000) -> Path:
    """Update against each input: the teacher's recorded directions and the rule's, on the same rows;
    last panel: the Pareto front (size against held-out R²)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rule = distillation.chosen.rule
    rows = torch.randperm(len(dataset.target), generator=torch.Generator().manual_seed(0))[:points]
    predicted = predict(rule, dataset)[rows]
    panels = list(rule.inputs) or distillation.inputs[:1]
    figure, axes = plt.subplots(1, len(panels) + 1, figsize=(4.2 * (len(panels) + 1), 3.6))
    for axis, name in zip(axes, panels, strict=False):
        x = dataset.column(name)[rows]
        low, high = torch.quantile(x, torch.tensor([0.005, 0.995], dtype=x.dtype)).tolist()
        axis.scatter(x, dataset.target[rows], s=3, alpha=0.35, label=f"{teacher} (neural)")
        axis.scatter(x, predicted, s=3, alpha=0.35, label="symbolic")
        if low > 0 and high > 100 * low:  # a positive input over decades, such as 1/t: log scale
            axis.set_xscale("log")
            low, high = x.min().item(), x.max().item()
        axis.set_xlim(low, high)
        axis.set_xlabel(f"${INPUTS[name].latex}$")
        axis.set_ylabel("direction $d_t$")
        axis.legend(markerscale=4, fontsize=8)
    front = axes[-1]
    sizes = [c.size for c in distillation.candidates]
    front.plot(sizes, [c.heldout_r2 for c in distillation.candidates], "o-", label="held-out R²")
    front.plot(sizes, [c.train_r2 for c in distillation.candidates], "x--", alpha=0.6, label="train R²")
    front.axvline(distillation.chosen.size, color="gray", linestyle=":", label="chosen")
    front.set_xlabel("rule size (nodes)")
    front.set_ylabel("R²")
    front.set_title("Pareto front")
    front.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def distill_card(name: str, teacher: str, distillation: Distillation, recipe: dict[str, Any]) -> str:
    chosen, data = distillation.chosen, recipe["dataset"]
    inputs = ", ".join(f"`{n}` (${INPUTS[n].latex}$)" for n in chosen.rule.inputs)
    rows = "\n".join(
        f"| {c.size} | {c.train_r2:.3f} | {c.heldout_r2:.3f} | `{c.rule.infix(3)}` |" for c in distillation.candidates
    )
    summary = f"""A closed-form update rule distilled from `{teacher}` by symbolic regression (Zheng et al., ICLR 2022).
The parameter moves by θ ← θ − lr · d with

$$d_t = {sympy_rules.to_latex(chosen.rule)}$$

(constants rounded for display; `config.json` holds them exactly). Inputs:
{inputs}, with β1 = {recipe["beta1"]}, β2 = {recipe["beta2"]}."""
    fidelity = f"""R² of the rule against the teacher's directions: **{chosen.heldout_r2:.3f}** on held-out trajectories
(train {chosen.train_r2:.3f}), rule size {chosen.size} nodes.

![response curves](response.png)

| size | train R² | held-out R² | rule |
|---:|---:|---:|---|
{rows}"""
    symmetric = (
        ", fitting and scoring on every row and its sign mirror (gradient and direction negated), so that"
        " the rules are odd: R² is against the teacher's odd part"
        if recipe.get("sign_symmetric")
        else ""
    )
    recipe_text = f"""```bash
{recipe["command"]}
```

Recorded {data["trajectories"]} trajectories × {data["steps"]} steps of `{data["task"]}`,
{data["coordinates_per_tensor"]} coordinates per tensor per step; held-out fraction {recipe["heldout_fraction"]};
backend `{recipe["backend"]}` for {recipe["search"]["time_limit"]} s{symmetric}; seed {recipe["seed"]};
commit {recipe["commit"]}, torch {recipe["torch"]}, {recipe["machine"]}. Every setting is in `config.json`
under `recipe`."""
    sections = [("Fidelity", fidelity), (EVALUATION, NOT_EVALUATED.format(name=name)), ("Recipe", recipe_text)]
    return model_card(name, summary, sections, tags=("symbolic-regression",))


def export(
    distillation: Distillation,
    dataset: Dataset,
    out: str | Path,
    *,
    teacher: str,
    recipe: dict[str, Any],
    description: str = "",
) -> Path:
    """Write the chosen rule as a ``symbolic`` weights directory (plus the response plot)."""
    out = Path(out)
    meta = dataset.metadata
    config = {
        "rule": dict(distillation.chosen.rule.tree),
        "beta1": meta["beta1"],
        "beta2": meta["beta2"],
        "eps": meta["eps"],
    }
    optimizer = Symbolic([torch.nn.Parameter(torch.zeros(1))], config=config)
    recipe = {
        **recipe,
        "beta1": meta["beta1"],
        "beta2": meta["beta2"],
        "dataset": meta,
        "commit": git_commit(),
        "torch": torch.__version__,
        "machine": machine(),
    }
    metrics = {
        "fidelity": {
            "heldout_r2": distillation.chosen.heldout_r2,
            "train_r2": distillation.chosen.train_r2,
            "size": distillation.chosen.size,
        },
        "pareto_front": [c.summary() for c in distillation.candidates],
    }
    description = description or f"Closed-form rule distilled from {teacher} by symbolic regression."
    card = distill_card(out.name, teacher, distillation, recipe)
    save_pretrained(optimizer, out, description=description, metrics=metrics, recipe=recipe, model_card=card)
    plot_response(dataset, distillation, out / RESPONSE_PLOT, teacher)
    return out

"""Turn a finished meta-training run into a weights directory with its recipe and model card."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Any

import torch

from learned_optim.cards import EVALUATION, NOT_EVALUATED, model_card
from learned_optim.hub import CONFIG_NAME, save_pretrained
from learned_optim.meta.trainer import MetaTrainer, MetaTrainResult
from learned_optim.provenance import git_commit, machine
from learned_optim.weights_file import read_json_file

# ``git_commit`` lived here until 0.1; importing it from this module keeps working for one release.
__all__ = ["export_weights", "git_commit", "recipe_of", "training_card"]


def recipe_of(trainer: MetaTrainer, result: MetaTrainResult, command: str) -> dict[str, Any]:
    along, computed = trainer.inner_steps()
    return {
        "command": command,
        "config": dataclasses.asdict(trainer.config),
        "seed": trainer.config.seed,
        # How the run ran, not how this (export) process runs; older checkpoints did not say.
        "processes": result.progress.processes or 1,
        "threads": result.progress.threads_per_process or torch.get_num_threads(),
        "torch": torch.__version__,
        "machine": machine(),
        "commit": result.progress.started_at_commit or git_commit(),
        "meta_training_minutes": round(result.progress.seconds / 60, 1),
        "inner_steps": along,
        "inner_steps_computed": computed,
        "finished": trainer.finished(),
        "epochs_done": result.progress.epoch,
    } | _start_of(trainer, along, computed)


def _start_of(trainer: MetaTrainer, along: int, computed: int) -> dict[str, Any]:
    """For a run that starts from meta-trained weights: those weights, how they were trained, and
    the budget of both runs together (the card's total budget)."""
    before = trainer.start_from.recipe if trainer.start_from is not None else {}
    if "inner_steps" not in before:  # no recipe on record, e.g. published weights
        return {}
    starts_from = {
        "weights": trainer.config.initial_weights,
        "command": before.get("command", ""),
        "commit": before.get("commit", ""),
        "inner_steps": before.get("total_inner_steps", before["inner_steps"]),
        "inner_steps_computed": before.get("total_inner_steps_computed", before.get("inner_steps_computed", 0)),
    }
    return {
        "starts_from": starts_from,
        "total_inner_steps": starts_from["inner_steps"] + along,
        "total_inner_steps_computed": starts_from["inner_steps_computed"] + computed,
    }


def _start_text(recipe: dict[str, Any]) -> str:
    start = recipe.get("starts_from")
    if not start:
        return ""
    return f"""
It starts from `{start["weights"]}`, trained by `{start["command"]}` at commit {start["commit"]}
({start["inner_steps"]:,} inner steps along trajectories, {start["inner_steps_computed"]:,} computed, all its own
starting points included). **Total budget: {recipe["total_inner_steps"]:,} inner steps along trajectories,
{recipe["total_inner_steps_computed"]:,} computed.**"""


def _loss(value: float | None) -> str:
    return "—" if value is None else f"{value:.4f}"  # the epoch-0 row of given weights has no training loss


def _status(recipe: dict[str, Any], config: Any) -> str:
    if recipe.get("finished", True):
        return "The run finished."
    total = config.imitation_epochs + config.meta_epochs
    return (
        f"**Unfinished**: these are the best weights after {recipe['epochs_done']} of {total} epochs; "
        "the run resumes from its committed checkpoint (`--resume`)."
    )


def training_card(
    name: str, trainer: MetaTrainer, result: MetaTrainResult, recipe: dict[str, Any], optimizer_config: dict[str, Any]
) -> str:
    config = trainer.config
    history = result.progress.history
    rows = "\n".join(
        f"| {r['epoch']} | {r['phase']} | {r['horizon']} | {_loss(r['train_loss'])} | {r['valid_loss']:.4f} |"
        for r in history
    )
    recipe_text = f"""```bash
{recipe["command"]}
```

Config `{config.task}`, horizons {config.horizons}, unroll {config.unroll}, seed {config.seed}; trained for
{recipe["meta_training_minutes"]} minutes (validation excluded) on {recipe.get("processes", 1)} process(es) of
{recipe["threads"]} CPU thread(s) ({recipe["machine"]}), torch {recipe["torch"]}, commit {recipe["commit"]}.
Budget: {recipe["inner_steps"]:,} inner steps along the optimizees' trajectories,
{recipe["inner_steps_computed"]:,} computed (PES runs
{2 * config.pes_particles if config.estimator == "pes" else 1} perturbed copies of each).{_start_text(recipe)}
{_status(recipe, config)}
The full config is in `config.json` under `recipe`.

![meta-training curve](training.png)

| epoch | phase | horizon | meta-train loss | meta-validation loss |
|---:|---|---:|---:|---:|
{rows}"""
    return model_card(
        name,
        config.description,
        [(EVALUATION, NOT_EVALUATED.format(name=name)), ("Recipe", recipe_text)],
        architecture=(config.architecture, optimizer_config),
    )


def _recommendation_in(out: Path) -> str:
    """The recommendation of weights already exported to ``out``: re-exporting a run that goes on
    must not drop the verdict its evaluation gave (the next evaluation revises it)."""
    config = out / CONFIG_NAME
    return str(read_json_file(config).get("recommendation", "")) if config.is_file() else ""


def export_weights(trainer: MetaTrainer, result: MetaTrainResult, out: str | Path, command: str) -> Path:
    """Write the best weights of ``result`` to ``out`` (config.json, model.safetensors, card, plot)."""
    out = Path(out)
    optimizer = trainer.architecture(
        [torch.nn.Parameter(torch.zeros(1))], config=result.optimizer_config, theta=result.best_theta
    )
    recipe = recipe_of(trainer, result, command)
    # The epoch whose weights were kept: its validation loss is the run's best_valid.
    kept = [
        r
        for r in result.progress.history
        if r["phase"] in ("meta", "initial") and r["valid_loss"] == result.progress.best_valid
    ]
    metrics = {
        "meta_validation": {
            "loss": result.progress.best_valid,
            "epoch": kept[-1]["epoch"] if kept else None,
            "horizon": trainer.config.validation_horizon or (kept[-1]["horizon"] if kept else None),
        }
    }
    save_pretrained(
        optimizer,
        out,
        description=trainer.config.description,
        metrics=metrics,
        recipe=recipe,
        recommendation=_recommendation_in(out),
        model_card=training_card(out.name, trainer, result, recipe, optimizer.export_config()),
    )
    plot = trainer.run_dir / "training.png"
    if plot.exists():
        shutil.copyfile(plot, out / "training.png")
    return out

"""Adam's meta-validation score on a recipe's own validation instances: the yardstick for a run's
``valid_loss`` column (lower is better; 1 is no progress).

    python -m tools.adam_validation configs/hamiltonian-general.json --lrs 1e-3 3e-3

Scores Adam (β 0.9, 0.999) at each rate exactly as ``MetaTrainer.validate`` scores the learned
optimizer: the same instances, horizon and ``validation_score``. Adam runs as the ``Symbolic``
rule d = lr · m̃ at lr 1, which is Adam's update. One process; instances of the training
distribution, so this says whether a run is ahead of Adam there, not on the benchmark loops.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from learned_optim.expression import const, op, var
from learned_optim.meta.trainer import MetaTrainConfig, MetaTrainer
from learned_optim.optimizers.symbolic import BUILTIN_RULES


def adam_score(recipe: dict, lr: float, data_root: str | None = None) -> float:
    """``MetaTrainer.validate`` of Adam at ``lr`` on ``recipe``'s validation instances."""
    rule = {**BUILTIN_RULES["adam"], "rule": op("mul", const(lr), var("m_tilde"))}  # its betas and eps
    changes = {"architecture": "symbolic", "optimizer_config": rule, "initial_weights": "", "imitation_epochs": 0}
    config = MetaTrainConfig.from_dict({**recipe, **changes, "inner_lr": 1.0})
    with tempfile.TemporaryDirectory() as run_dir:
        return MetaTrainer(config, run_dir, data_root=data_root).validate()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipe", type=Path)
    parser.add_argument("--lrs", type=float, nargs="+", default=[1e-3, 3e-3])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    recipe = json.loads(args.recipe.read_text())
    for lr in args.lrs:
        print(f"adam@{lr:g}: {adam_score(recipe, lr):.4f}", flush=True)


if __name__ == "__main__":
    main()

"""How much of a teacher's updates any function of some inputs can explain: the ceiling for distillation.

    python -m tools.distill_ceiling                                   # the rnnprop-mnist recording
    python -m tools.distill_ceiling --rule weights/symbolic-rnnprop-mnist/config.json

Fits scikit-learn's ``HistGradientBoostingRegressor`` (a flexible model with no formula) to a recorded
distillation dataset (``learned-optim distill`` writes it to ``runs/distill-<teacher>``) on its
training trajectories, and prints the held-out R² for several input sets: a symbolic rule of those
inputs can hardly do better. With ``--rule``, it also splits that rule's held-out squared error by step.
Needs the ``distill`` extra (pyoperon brings scikit-learn).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from learned_optim.expression import Rule
from learned_optim.meta.distill import Dataset, predict, r2_score
from learned_optim.optimizers.symbolic import INPUTS

INPUT_SETS = (("m_tilde", "g_tilde"), ("m_tilde", "g_tilde", "inv_step"))
STEP_BINS = ((1, 5), (6, 20), (21, 100), (101, 300))


def ceiling(dataset: Dataset, inputs: tuple[str, ...], heldout: np.ndarray) -> float:
    from sklearn.ensemble import HistGradientBoostingRegressor

    features = np.column_stack([dataset.column(name).numpy() for name in inputs])
    target = dataset.target.numpy()
    model = HistGradientBoostingRegressor(max_iter=300, random_state=0).fit(features[~heldout], target[~heldout])
    return r2_score(torch.from_numpy(model.predict(features[heldout])), dataset.target[torch.from_numpy(heldout)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", type=Path, default=Path("runs/distill-rnnprop-mnist/dataset.safetensors"))
    parser.add_argument("--heldout", type=float, default=0.25, help="fraction of trajectories held out")
    parser.add_argument("--rule", type=Path, help="a symbolic config.json whose error to split by step")
    args = parser.parse_args()
    dataset = Dataset.load(args.dataset)
    heldout = dataset.heldout_mask(args.heldout).numpy()
    print(f"{args.dataset}: {len(dataset.target)} rows, held-out R² of a gradient-boosting fit")
    print("| inputs | held-out R² |\n|---|---:|")
    for inputs in INPUT_SETS:
        if set(inputs) <= set(dataset.columns):
            print(f"| {', '.join(inputs)} | {ceiling(dataset, inputs, heldout):.3f} |")
    if args.rule:
        rule = Rule.from_json(json.loads(args.rule.read_text())["config"]["rule"], INPUTS)
        error = (predict(rule, dataset).numpy() - dataset.target.numpy())[heldout] ** 2
        steps = dataset.step.numpy()[heldout]
        print(f"\n{args.rule}: share of its held-out squared error by step\n| steps | rows | share |\n|---|---:|---:|")
        for low, high in STEP_BINS:
            rows = (steps >= low) & (steps <= high)
            print(f"| {low}–{high} | {rows.mean():.1%} | {error[rows].sum() / error.sum():.1%} |")


if __name__ == "__main__":
    main()

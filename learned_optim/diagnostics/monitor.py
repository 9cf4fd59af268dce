"""Record symmetry deviations of gradients and updates while any optimizer trains a model.

    monitor = SymmetryMonitor(model, optimizer, record_steps=range(0, 1000, 10))
    ...train as usual...
    monitor.save_json("diagnostics.json")

The monitor attaches to ``optimizer`` through its step hooks (``torch.optim`` and learned
optimizers alike). At a recorded step it snapshots θ and the gradient before the step and
computes the update field u = −Δθ / lr after it; at other steps the hooks return at once.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from learned_optim.diagnostics.symmetry import (
    Structure,
    conserved,
    deviations,
    find_symmetries,
    relative_deviations,
)


def _summary(structure: Structure, field: dict[str, Tensor], params: dict[str, Tensor]) -> dict[str, Any]:
    values = deviations(structure, field, params)
    return {
        "abs_sum": float(values.abs().sum()),
        "signed_sum": float(values.sum()),
        # scale-free (0 exact, 1 no cancellation): comparable across optimizers whatever their step size
        "relative_mean": float(relative_deviations(structure, field, params).mean()),
        "per_unit": values.tolist(),
    }


class SymmetryMonitor:
    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        record_steps: Iterable[int],
        structures: list[Structure] | None = None,
        softmax_output: bool = True,
    ) -> None:
        self.model = model
        self.structures = structures if structures is not None else find_symmetries(model, softmax_output)
        self.record_steps = set(record_steps)
        self.step = 0
        self.records: list[dict[str, Any]] = []
        self._before: dict[str, Tensor] | None = None
        self._grads: dict[str, Tensor] | None = None
        self._lr = 0.0
        self._handles = [
            optimizer.register_step_pre_hook(self._pre_step),
            optimizer.register_step_post_hook(self._post_step),
        ]

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()

    def _pre_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        if self.step not in self.record_steps:
            return
        params = dict(self.model.named_parameters())
        self._before = {k: v.detach().clone() for k, v in params.items()}
        self._grads = {
            k: (v.grad.detach().clone() if v.grad is not None else torch.zeros_like(v)) for k, v in params.items()
        }
        self._lr = float(optimizer.param_groups[0]["lr"])

    def _post_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        if self._before is not None and self._grads is not None:
            after = {k: v.detach() for k, v in self.model.named_parameters()}
            update = {k: (self._before[k] - after[k]) / self._lr for k in after} if self._lr else None
            record: dict[str, Any] = {"step": self.step, "lr": self._lr, "structures": {}}
            for structure in self.structures:
                entry = {
                    "kind": structure.kind,
                    "gradient": _summary(structure, self._grads, self._before),
                    "conserved": conserved(structure, self._before).tolist(),
                }
                if update is not None:
                    entry["update"] = _summary(structure, update, self._before)
                record["structures"][structure.name] = entry
            self.records.append(record)
            self._before = self._grads = None
        self.step += 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "structures": [{"kind": s.kind, "name": s.name} for s in self.structures],
            "records": self.records,
        }

    def save_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict()) + "\n")

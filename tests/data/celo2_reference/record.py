"""Record the Celo2 reference trajectory from PyLO's ``CELO2_naive`` (run once; not part of the tests).

    PYTHONPATH=<a checkout of Belilovsky-Lab/pylo>:tests python tests/data/celo2_reference/record.py

Runs every scenario of ``tests/celo2_reference_model.py`` for 50 steps with the reference optimizer
and writes the parameters at the recorded steps to ``trajectory.safetensors`` beside this script.
The reference's code is imported from its checkout, never copied into this project.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import safetensors.torch
import torch
from celo2_reference_model import (
    RECORDED_STEPS,
    SCENARIOS,
    STEPS,
    ReferenceModel,
    loss_at,
    reference_weights,
    write_reference_folder,
)
from pylo.models.CELO2_MLP import CELO2MLP
from pylo.optim.CELO2_naive import CELO2_naive

HERE = Path(__file__).resolve().parent


def main() -> None:
    scratch = Path(tempfile.mkdtemp())
    folder = write_reference_folder(scratch / "network")
    network = CELO2MLP.from_pretrained(str(folder))
    for name, value in reference_weights().items():
        assert torch.equal(network.state_dict()[name], value), name
    # The mixin's own save writes the same config as our test folder.
    network.save_pretrained(str(scratch / "mixin"))
    assert json.loads((scratch / "mixin" / "config.json").read_text()) == json.loads(
        (folder / "config.json").read_text()
    )
    recorded = {}
    for scenario, (kwargs, scheduled) in SCENARIOS.items():
        model = ReferenceModel()
        optimizer = CELO2_naive(
            model.param_groups(), network=CELO2MLP.from_pretrained(str(folder)), hf_key=None, **kwargs
        )
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=STEPS) if scheduled else None
        for step in range(1, STEPS + 1):
            optimizer.zero_grad()
            loss_at(model, step).backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            if step in RECORDED_STEPS:
                for pname, p in model.named_parameters():
                    recorded[f"{scenario}.{step}.{pname}"] = p.detach().clone()
    safetensors.torch.save_file(recorded, str(HERE / "trajectory.safetensors"), metadata={"steps": str(STEPS)})


if __name__ == "__main__":
    main()

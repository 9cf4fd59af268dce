"""The model, data, weights and scenarios of the recorded Celo2 reference trajectory.

Shared by ``tests/test_celo2.py`` and ``tests/data/celo2_reference/record.py`` (which ran the
reference implementation, PyLO's ``CELO2_naive``, once to record the numbers the tests compare with).
The model has every kind of parameter Celo2 routes differently: linear and convolution weights,
1-D biases and norm scales, a 3-D tensor and an embedding (a group flagged ``is_embedding=True``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch import nn

STEPS = 50
RECORDED_STEPS = (1, 10, 25, 26, 40, 50)
FEATURE_DIMS = (1, 1, 1, 3, 1, 3, 1, 3, 1, 3, 3, 3, 3, 3)
NETWORK_CONFIG = {"feature_dims": list(FEATURE_DIMS), "hidden_size": 8, "hidden_layers": 2, "output_size": 3}
# name → (optimizer kwargs, whether a cosine schedule drives lr)
SCENARIOS: dict[str, tuple[dict[str, Any], bool]] = {
    "defaults": ({}, False),
    "no_orthogonalize": ({"orthogonalize": False}, False),
    "decay_scheduled": ({"lr": 1e-2, "weight_decay": 0.1, "adam_lr_mult": 0.5}, True),
}


class ReferenceModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(11, 6)
        self.conv = nn.Conv2d(1, 4, 3)
        self.cube = nn.Parameter(torch.randn(2, 3, 5) * 0.3)
        self.fc1 = nn.Linear(20, 12)
        self.norm = nn.LayerNorm(12)
        self.fc2 = nn.Linear(12, 3)

    def forward(self, tokens: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        embedded = self.embed(tokens).mean(1)
        convolved = torch.relu(self.conv(image)).mean((2, 3))
        hidden = torch.cat((embedded, convolved), 1)
        mixed = torch.einsum("bi,kij->bkj", hidden[:, :3], self.cube).flatten(1)
        hidden = torch.cat((hidden, mixed), 1)
        return self.fc2(torch.tanh(self.norm(self.fc1(hidden))))

    def param_groups(self) -> list[dict[str, Any]]:
        others = [p for name, p in self.named_parameters() if not name.startswith("embed.")]
        return [{"params": others}, {"params": list(self.embed.parameters()), "is_embedding": True}]


def loss_at(model: ReferenceModel, step: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1000 + step)
    tokens = torch.randint(0, 11, (8, 4), generator=generator)
    image = torch.randn(8, 1, 6, 6, generator=generator)
    target = torch.randn(8, 3, generator=generator)
    return nn.functional.mse_loss(model(tokens, image), target)


def reference_weights() -> dict[str, torch.Tensor]:
    """The network's tensors under the reference's names, (in, out) as Haiku stores them."""
    generator = torch.Generator().manual_seed(2026)
    total_in = sum(FEATURE_DIMS)
    weights = {
        f"w0.{i}": torch.randn(dim, 8, generator=generator) / total_in**0.5 for i, dim in enumerate(FEATURE_DIMS)
    }
    weights["b0"] = torch.randn(8, generator=generator) * 0.1
    weights["dense_w.0"] = torch.randn(8, 8, generator=generator) / 8**0.5
    weights["dense_b.0"] = torch.randn(8, generator=generator) * 0.1
    weights["dense_w.1"] = torch.randn(8, 3, generator=generator) / 8**0.5
    weights["dense_b.1"] = torch.randn(3, generator=generator) * 0.1
    return weights


def write_reference_folder(directory: Path) -> Path:
    """A folder as ``PyTorchModelHubMixin.save_pretrained`` writes it for PyLO's ``CELO2MLP``."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps({**NETWORK_CONFIG, "activation": "relu"}, indent=2))
    safetensors.torch.save_file(reference_weights(), str(directory / "model.safetensors"))
    return directory

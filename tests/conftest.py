import os
from pathlib import Path

import pytest
import torch

import learned_optim as lo

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"

# Tests read datasets from a data root of their own; in our offline workplace the raw files are
# copied from the read-only mirror beside the checkout (elsewhere torchvision downloads them).
os.environ.setdefault("LEARNED_OPTIM_DATA", str(REPO / "data"))
if SHARED_DATA.is_dir():
    os.environ.setdefault("LEARNED_OPTIM_DATA_MIRROR", str(SHARED_DATA))

# Every registered architecture: a new one is tested the day it is registered.
OPTIMIZERS = list(lo.ARCHITECTURES.values())
# Those whose weights are a network drawn from the seed (Symbolic's are its rule's constants).
NETWORK_OPTIMIZERS = [cls for cls in OPTIMIZERS if cls is not lo.Symbolic]


@pytest.fixture(params=OPTIMIZERS, ids=lambda cls: cls.__name__)
def optimizer_class(request):
    return request.param


def small_model(seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3)).to(dtype)


def loss_of(model: torch.nn.Module, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    dtype = next(model.parameters()).dtype
    x = torch.randn(16, 6, generator=generator).to(dtype)
    y = torch.randn(16, 3, generator=generator).to(dtype)
    return torch.nn.functional.mse_loss(model(x), y)


def train(model: torch.nn.Module, optimizer: torch.optim.Optimizer, steps: int, first_seed: int = 0) -> None:
    for step in range(steps):
        optimizer.zero_grad()
        loss_of(model, first_seed + step).backward()
        optimizer.step()


def parameters_of(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def all_equal(xs: list[torch.Tensor], ys: list[torch.Tensor]) -> bool:
    """Same number of tensors, each equal to the last bit."""
    return len(xs) == len(ys) and all(torch.equal(x, y) for x, y in zip(xs, ys, strict=True))


def none_equal(xs: list[torch.Tensor], ys: list[torch.Tensor]) -> bool:
    """Same number of tensors, every one of them changed."""
    return len(xs) == len(ys) and not any(torch.equal(x, y) for x, y in zip(xs, ys, strict=True))


class MatrixQuadraticTask:
    """f(Θ) = ‖WΘ − Y‖²_F for a 4×6 matrix Θ: a task whose parameter takes a per-tensor optimizer's
    matrix path (the vector quadratic's θ takes Celo2's AdamW path, where nothing is learned)."""

    name = "matrix-quadratic"
    parameter_names = ("theta",)

    def init(self, generator: torch.Generator) -> dict[str, torch.Tensor]:
        return {
            "theta": torch.zeros(4, 6),
            "W": torch.randn(8, 4, generator=generator),
            "Y": torch.randn(8, 6, generator=generator),
        }

    def sample(self, generator: torch.Generator, split: str = "train") -> None:
        return None

    def loss(self, params: dict[str, torch.Tensor], batch: None) -> torch.Tensor:
        residual = params["W"] @ params["theta"] - params["Y"]
        return (residual * residual).sum()


def meta_task_for(optimizer_class: type) -> object:
    """A quadratic whose parameter the architecture's learned network updates."""
    from learned_optim.meta.tasks.quadratic import QuadraticTask

    return MatrixQuadraticTask() if getattr(optimizer_class, "per_tensor", False) else QuadraticTask()

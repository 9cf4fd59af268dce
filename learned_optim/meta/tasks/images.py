"""MNIST and Fashion-MNIST classifiers, with batches drawn from tensors held in memory.

The 60k training images are split once, with a fixed seed, into two disjoint halves: ``train``
(meta-training) and ``valid`` (meta-validation and the held-out evaluation of learned
optimizers). ``test`` is the official test split, kept for reporting.
"""

from __future__ import annotations

from functools import cache

import torch
from torch import Tensor, nn

from learned_optim.meta.tasks.base import ModuleTask, seeded_init
from learned_optim.meta.tasks.data import load_images

SPLIT_SEED = 20160606  # the day "learning to learn by gradient descent by gradient descent" appeared


@cache
def image_splits(dataset: str, root: str | None = None) -> dict[str, tuple[Tensor, Tensor]]:
    """``{"train", "valid", "test"}`` → (images, labels), normalised to mean 0 / std 1 on train."""
    images, labels = load_images(dataset, train=True, root=root)
    test_images, test_labels = load_images(dataset, train=False, root=root)
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(SPLIT_SEED))
    half = len(images) // 2
    mean, std = images[order[:half]].mean(), images[order[:half]].std()

    def normalise(x: Tensor) -> Tensor:
        return (x - mean) / std

    return {
        "train": (normalise(images[order[:half]]), labels[order[:half]]),
        "valid": (normalise(images[order[half:]]), labels[order[half:]]),
        "test": (normalise(test_images), test_labels),
    }


def batch_sampler(dataset: str, batch_size: int, root: str | None = None, flatten: bool = True):
    def sample(generator: torch.Generator, split: str) -> tuple[Tensor, Tensor]:
        images, labels = image_splits(dataset, root)[split]
        index = torch.randint(0, len(images), (batch_size,), generator=generator)
        batch = images[index]
        return (batch.flatten(1) if flatten else batch), labels[index]

    return sample


def _flattened(split: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
    return split[0].flatten(1), split[1]


def mlp(widths: tuple[int, ...], activation: type[nn.Module]) -> nn.Module:
    layers: list[nn.Module] = []
    for i in range(len(widths) - 1):
        layers.append(nn.Linear(widths[i], widths[i + 1]))
        if i < len(widths) - 2:
            layers.append(activation())
    return nn.Sequential(*layers)


def mlp_task(
    name: str, dataset: str, hidden: tuple[int, ...], activation: type[nn.Module], batch_size: int = 128, root=None
) -> ModuleTask:
    widths = (784, *hidden, 10)
    return ModuleTask(
        name=name,
        make_module=lambda g: seeded_init(lambda: mlp(widths, activation), g),
        sampler=batch_sampler(dataset, batch_size, root),
        loss_fn=nn.functional.cross_entropy,
        split_data=lambda split: _flattened(image_splits(dataset, root)[split]),
        description=f"{dataset} MLP {'-'.join(map(str, widths))}, {activation.__name__} hidden, batch {batch_size}",
    )


def cnn_bn() -> nn.Module:
    """A small conv net with BatchNorm: two 3×3 conv-BN-ReLU-pool blocks, then a linear layer."""
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(16 * 7 * 7, 10),
    )


def cnn_task(name: str, dataset: str, batch_size: int = 128, root=None) -> ModuleTask:
    return ModuleTask(
        name=name,
        make_module=lambda g: seeded_init(cnn_bn, g),
        sampler=batch_sampler(dataset, batch_size, root, flatten=False),
        loss_fn=nn.functional.cross_entropy,
        split_data=lambda split: image_splits(dataset, root)[split],
        description=f"{dataset} CNN 8-16 channels with BatchNorm, batch {batch_size}",
    )

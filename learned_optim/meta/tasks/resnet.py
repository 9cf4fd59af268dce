"""ResNet-50 (torchvision) on CIFAR-10, or on Fashion-MNIST resized to 32×32 with 3 channels.

CIFAR-10 downloads through torchvision where there is internet; Fashion-MNIST stands in on
machines without it. Both use the same ``train``/``valid``/``test`` splits as the small image
tasks (``images.image_splits``).
"""

from __future__ import annotations

from functools import cache

import torch
from torch import Tensor, nn

from learned_optim.meta.tasks.base import ModuleTask, seeded_init
from learned_optim.meta.tasks.images import image_splits


@cache
def splits_32x32(dataset: str, root: str | None = None) -> dict[str, tuple[Tensor, Tensor]]:
    """The dataset's splits at 32×32; grayscale stays one channel here (expanded to 3 per batch)."""
    resized = {}
    for split, (images, labels) in image_splits(dataset, root).items():
        if images.shape[-1] != 32:
            images = nn.functional.interpolate(images, size=(32, 32), mode="bilinear", align_corners=False)
        resized[split] = (images, labels)
    return resized


def _three_channels(images: Tensor) -> Tensor:
    return images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images


def resnet50_task(name: str, dataset: str, batch_size: int = 32, root: str | None = None) -> ModuleTask:
    def make() -> nn.Module:
        import torchvision

        return torchvision.models.resnet50(num_classes=10)

    def split_data(split: str) -> tuple[Tensor, Tensor]:
        images, labels = splits_32x32(dataset, root)[split]
        return _three_channels(images), labels

    def sample(generator: torch.Generator, split: str) -> tuple[Tensor, Tensor]:
        images, labels = split_data(split)
        index = torch.randint(0, len(images), (batch_size,), generator=generator)
        return images[index], labels[index]

    return ModuleTask(
        name=name,
        make_module=lambda g: seeded_init(make, g),
        sampler=sample,
        loss_fn=nn.functional.cross_entropy,
        split_data=split_data,
        description=f"torchvision ResNet-50 on {dataset} at 32×32, 3 channels, batch {batch_size}",
    )

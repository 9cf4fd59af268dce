"""MNIST and Fashion-MNIST as in-memory tensors, through torchvision.

The data root is, in order: the ``root`` argument, ``$LEARNED_OPTIM_DATA``, then
``~/.cache/learned_optim/data``. torchvision downloads the files there when they are missing.
For offline machines, ``$LEARNED_OPTIM_DATA_MIRROR`` may name a read-only folder with the
original ``<Dataset>/raw/*.gz`` files; they are copied into the data root (never written to).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch
from torch import Tensor

DATASETS = ("MNIST", "FashionMNIST")


def data_root(root: str | os.PathLike[str] | None = None) -> Path:
    """The folder datasets are stored in."""
    if root is None:
        root = os.environ.get("LEARNED_OPTIM_DATA") or Path.home() / ".cache" / "learned_optim" / "data"
    return Path(root).expanduser()


def _copy_from_mirror(name: str, root: Path) -> None:
    mirror = os.environ.get("LEARNED_OPTIM_DATA_MIRROR")
    source = Path(mirror) / name / "raw" if mirror else None
    if source is None or not source.is_dir():
        return
    target = root / name / "raw"
    target.mkdir(parents=True, exist_ok=True)
    for archive in source.glob("*.gz"):
        if not (target / archive.name).exists():
            shutil.copyfile(archive, target / archive.name)


def load_images(name: str, train: bool, root: str | os.PathLike[str] | None = None) -> tuple[Tensor, Tensor]:
    """``(images, labels)``: float32 images in [0, 1] of shape (N, 1, 28, 28) and int64 labels."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose from {DATASETS}")
    import torchvision

    folder = data_root(root)
    _copy_from_mirror(name, folder)
    dataset = getattr(torchvision.datasets, name)(str(folder), train=train, download=True)
    images = dataset.data.unsqueeze(1).to(torch.float32).div_(255.0)
    return images, dataset.targets.to(torch.int64)

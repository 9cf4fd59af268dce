"""MNIST, Fashion-MNIST and CIFAR-10 as in-memory tensors, through torchvision.

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

from learned_optim.errors import DatasetUnavailableError

DATASETS = ("MNIST", "FashionMNIST", "CIFAR10")


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
    """``(images, labels)``: float32 images in [0, 1] of shape (N, C, H, W) and int64 labels.

    MNIST and Fashion-MNIST are (N, 1, 28, 28); CIFAR-10 is (N, 3, 32, 32).
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose from {DATASETS}")
    import torchvision

    folder = data_root(root)
    _copy_from_mirror(name, folder)
    try:
        dataset = getattr(torchvision.datasets, name)(str(folder), train=train, download=True)
    except (OSError, RuntimeError) as error:  # torchvision's download failures, e.g. no network
        raise DatasetUnavailableError(
            f"{name} is not in {folder} and could not be downloaded ({error}). Put torchvision's files "
            f"there, pass a data root, set LEARNED_OPTIM_DATA to a folder that has them, or set "
            f"LEARNED_OPTIM_DATA_MIRROR to a folder with {name}/raw/*.gz"
        ) from error
    data = torch.as_tensor(dataset.data)
    # torchvision keeps MNIST-like data as (N, H, W) tensors and CIFAR as (N, H, W, C) arrays.
    images = data.unsqueeze(1) if data.ndim == 3 else data.permute(0, 3, 1, 2)
    return images.to(torch.float32).div_(255.0), torch.as_tensor(dataset.targets, dtype=torch.int64)

"""Optimizee tasks by name: ``get_task("mnist-mlp")``; task distributions: ``get_task_distribution("small-tasks")``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from learned_optim.meta.tasks.distributions import TASK_DISTRIBUTIONS, TaskDistribution, get_task_distribution
from learned_optim.meta.tasks.images import cnn_task, mlp_task
from learned_optim.meta.tasks.quadratic import QuadraticTask
from learned_optim.meta.tasks.resnet import resnet50_task

TASKS: dict[str, Callable[[str | None], Any]] = {
    "quadratic": lambda root: QuadraticTask(),
    "mnist-mlp": lambda root: mlp_task("mnist-mlp", "MNIST", (20,), nn.Sigmoid, root=root),
    "mnist-mlp-relu": lambda root: mlp_task("mnist-mlp-relu", "MNIST", (20,), nn.ReLU, root=root),
    "mnist-mlp-2x20": lambda root: mlp_task("mnist-mlp-2x20", "MNIST", (20, 20), nn.Sigmoid, root=root),
    "mnist-mlp-40": lambda root: mlp_task("mnist-mlp-40", "MNIST", (40,), nn.Sigmoid, root=root),
    "mnist-cnn-bn": lambda root: cnn_task("mnist-cnn-bn", "MNIST", root=root),
    "fashion-mlp": lambda root: mlp_task("fashion-mlp", "FashionMNIST", (20,), nn.Sigmoid, root=root),
    "fashion-cnn": lambda root: cnn_task("fashion-cnn", "FashionMNIST", root=root),
    "fashion-resnet50": lambda root: resnet50_task("fashion-resnet50", "FashionMNIST", root=root),
    "cifar10-resnet50": lambda root: resnet50_task("cifar10-resnet50", "CIFAR10", root=root),
}


def get_task(name: str, data_root: str | None = None) -> Any:
    """The task called ``name``; image tasks read data under ``data_root`` (see ``tasks.data``)."""
    try:
        factory = TASKS[name]
    except KeyError:
        raise KeyError(f"unknown task {name!r}; choose from {sorted(TASKS)}") from None
    return factory(data_root)


__all__ = ["TASKS", "TASK_DISTRIBUTIONS", "TaskDistribution", "get_task", "get_task_distribution"]

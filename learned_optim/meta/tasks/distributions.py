"""Task distributions: one small task instance per trajectory, its hyperparameters drawn at random.

A learned optimizer meta-trained on one task learns that task's gradient scales and curvature;
drawing architecture, data, input scaling, batch size and initialisation scale per trajectory
makes it meet many. A draw is two steps, so the families can be checked cheaply:

    spec = distribution.draw_spec(generator)      # a TaskSpec: hyperparameters only, no data
    task = build_task(spec, data_root)            # a ModuleTask (init / sample / loss)

``distribution.draw(generator, data_root)`` does both. Everything drawn comes from the
``generator``, so a seeded generator gives the same sequence of instances on every machine.

Families (every instance has at most ``MAX_PARAMETERS`` parameters, so that an inner step takes
a few milliseconds on one CPU core; a draw over the cap is drawn again):

* ``mlp``: MNIST or Fashion-MNIST at 28×28 or 14×14 (2×2 average pooling), inputs normalised to
  mean 0 / std 1 or raw in [0, 1]; 1–3 hidden layers of 16–256 units (log-uniform), sigmoid, tanh,
  ReLU or GELU; batch 32–256.
* ``cnn``: the same images; two 3×3 conv–(BatchNorm)–ReLU–2×2-max-pool blocks of 8–16 channels,
  with or without BatchNorm, then a linear classifier; batch 32 or 64 (convolutions cost more per
  example).
* ``char-lm``: next-byte prediction on the standard library's source (``tasks.text``) with a
  one-block causal Transformer of width 24–40 over 32 or 64 bytes; batch 16 or 32.

The ``general-tasks`` distribution adds larger and different instances (up to
``GENERAL_MAX_PARAMETERS``):

* ``wide-mlp``: the MLP family at 14×14 with 1–2 hidden layers of 64–512 units;
* ``resnet``: a residual CNN with BatchNorm at 14×14: a 3×3 conv–BN–ReLU stem of 8–24 channels,
  1–3 residual blocks (conv–BN–ReLU–conv–BN plus the identity, then ReLU), the first block after
  the stem at stride 2 (a 1×1 conv–BN shortcut), global average pooling and a linear classifier;
  batch 32;
* ``rnn-lm``: the byte-level language modelling of ``char-lm`` with an embedding, one GRU or LSTM
  layer of width 32–128 and a linear head, over 16 or 32 bytes; batch 16 or 32.

The cap and the 14×14 images keep an inner step of all of PES's perturbed copies near 0.1 s on
one CPU core: Celo2's Newton–Schulz iteration costs O(m²n) per m×n matrix, so a 784×1024 layer
alone would take about 0.3 s per copy.

Every family multiplies torch's default initialisation by a factor drawn log-uniformly in
[0.5, 2], rounded to two decimals (so the name says exactly what was drawn).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache

import torch
from torch import Tensor, nn

from learned_optim.meta.tasks.base import ModuleTask, seeded_init
from learned_optim.meta.tasks.images import image_splits, mlp
from learned_optim.meta.tasks.text import (
    VOCABULARY,
    CharRNN,
    CharTransformer,
    next_token_loss,
    stdlib_text_splits,
    text_sampler,
)

MAX_PARAMETERS = 60_000
GENERAL_MAX_PARAMETERS = 150_000
FAMILIES = ("mlp", "cnn", "char-lm")
GENERAL_FAMILIES = (*FAMILIES, "wide-mlp", "resnet", "rnn-lm")
MLP_FAMILIES = ("mlp", "wide-mlp")  # flattened images into an MLP
TEXT_FAMILIES = ("char-lm", "rnn-lm")  # next-byte prediction on the standard library's source
RECURRENT_CELLS = ("gru", "lstm")
IMAGE_DATASETS = ("MNIST", "FashionMNIST")
IMAGE_SIZES = (28, 14)
ACTIVATIONS: dict[str, type[nn.Module]] = {"sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "relu": nn.ReLU, "gelu": nn.GELU}
_DATASET_SHORT_NAMES = {"MNIST": "mnist", "FashionMNIST": "fashion"}


@dataclass(frozen=True)
class TaskSpec:
    """The hyperparameters of one task instance; fields a family does not use keep their defaults."""

    family: str
    batch_size: int
    init_scale: float
    dataset: str = ""  # image families
    image_size: int = 28
    normalised: bool = True
    hidden: tuple[int, ...] = ()  # mlp
    activation: str = ""
    channels: tuple[int, ...] = ()  # cnn
    batch_norm: bool = False
    width: int = 0  # char-lm, rnn-lm
    context: int = 0
    blocks: int = 0  # resnet
    cell: str = ""  # rnn-lm

    @property
    def name(self) -> str:
        suffix = f"b{self.batch_size}-init{self.init_scale:g}"
        if self.family == "char-lm":
            return f"char-lm-stdlib-transformer-w{self.width}-ctx{self.context}-{suffix}"
        if self.family == "rnn-lm":
            return f"rnn-lm-stdlib-{self.cell}-w{self.width}-ctx{self.context}-{suffix}"
        data = f"{_DATASET_SHORT_NAMES[self.dataset]}{self.image_size}-{'norm' if self.normalised else 'raw'}"
        if self.family == "resnet":
            return f"resnet-{data}-c{self.channels[0]}-{self.blocks}blocks-bn-{suffix}"
        if self.family in MLP_FAMILIES:
            return f"mlp-{data}-{'x'.join(map(str, self.hidden))}-{self.activation}-{suffix}"
        return f"cnn-{data}-{'x'.join(map(str, self.channels))}{'-bn' if self.batch_norm else ''}-{suffix}"


# -- drawing specs ------------------------------------------------------------------------------


def _choice(options: Sequence, generator: torch.Generator):
    return options[int(torch.randint(len(options), (), generator=generator))]


def _log_uniform(low: float, high: float, generator: torch.Generator) -> float:
    fraction = float(torch.rand((), generator=generator))
    return math.exp(math.log(low) + fraction * (math.log(high) - math.log(low)))


def _init_scale(generator: torch.Generator) -> float:
    return round(_log_uniform(0.5, 2.0, generator), 2)


def _image_fields(generator: torch.Generator) -> dict:
    return {
        "dataset": _choice(IMAGE_DATASETS, generator),
        "image_size": _choice(IMAGE_SIZES, generator),
        "normalised": bool(_choice((True, False), generator)),
    }


def _mlp_spec(
    family: str, generator: torch.Generator, depths: tuple[int, int], widths: tuple[int, int], image_size: int | None
) -> TaskSpec:
    """An MLP spec: 1…``depths[1]`` hidden layers of log-uniform widths; ``image_size`` fixed or drawn."""
    images = _image_fields(generator)
    if image_size is not None:
        images["image_size"] = image_size
    depth = int(torch.randint(depths[0], depths[1] + 1, (), generator=generator))
    hidden = tuple(round(_log_uniform(*widths, generator)) for _ in range(depth))
    return TaskSpec(
        family,
        batch_size=_choice((32, 64, 128, 256), generator),
        init_scale=_init_scale(generator),
        hidden=hidden,
        activation=_choice(tuple(ACTIVATIONS), generator),
        **images,
    )


def draw_mlp_spec(generator: torch.Generator) -> TaskSpec:
    return _mlp_spec("mlp", generator, (1, 3), (16, 256), None)


def draw_cnn_spec(generator: torch.Generator) -> TaskSpec:
    images = _image_fields(generator)
    channels = tuple(int(torch.randint(8, 17, (), generator=generator)) for _ in range(2))
    return TaskSpec(
        "cnn",
        batch_size=_choice((32, 64), generator),
        init_scale=_init_scale(generator),
        channels=channels,
        batch_norm=bool(_choice((True, False), generator)),
        **images,
    )


def draw_char_lm_spec(generator: torch.Generator) -> TaskSpec:
    return TaskSpec(
        "char-lm",
        batch_size=_choice((16, 32), generator),
        init_scale=_init_scale(generator),
        width=_choice((24, 32, 40), generator),
        context=_choice((32, 64), generator),
    )


def draw_wide_mlp_spec(generator: torch.Generator) -> TaskSpec:
    return _mlp_spec("wide-mlp", generator, (1, 2), (64, 512), 14)


def draw_resnet_spec(generator: torch.Generator) -> TaskSpec:
    images = {**_image_fields(generator), "image_size": 14}
    return TaskSpec(
        "resnet",
        batch_size=32,
        init_scale=_init_scale(generator),
        channels=(round(_log_uniform(8, 24, generator)),),
        blocks=int(torch.randint(1, 4, (), generator=generator)),
        batch_norm=True,
        **images,
    )


def draw_rnn_lm_spec(generator: torch.Generator) -> TaskSpec:
    return TaskSpec(
        "rnn-lm",
        batch_size=_choice((16, 32), generator),
        init_scale=_init_scale(generator),
        width=round(_log_uniform(32, 128, generator)),
        context=_choice((16, 32), generator),
        cell=_choice(RECURRENT_CELLS, generator),
    )


SPEC_DRAWERS: dict[str, Callable[[torch.Generator], TaskSpec]] = {
    "mlp": draw_mlp_spec,
    "cnn": draw_cnn_spec,
    "char-lm": draw_char_lm_spec,
    "wide-mlp": draw_wide_mlp_spec,
    "resnet": draw_resnet_spec,
    "rnn-lm": draw_rnn_lm_spec,
}


# -- building tasks -----------------------------------------------------------------------------


def small_cnn(channels: tuple[int, ...], batch_norm: bool, image_size: int) -> nn.Module:
    layers: list[nn.Module] = []
    for inputs, outputs in zip((1, *channels[:-1]), channels, strict=True):
        layers.append(nn.Conv2d(inputs, outputs, 3, padding=1))
        if batch_norm:
            layers.append(nn.BatchNorm2d(outputs))
        layers += [nn.ReLU(), nn.MaxPool2d(2)]
    side = image_size // 2 ** len(channels)
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(channels[-1] * side * side, 10))


class ResidualBlock(nn.Module):
    """conv–BN–ReLU–conv–BN plus the shortcut (identity, or a 1×1 conv–BN where the shape changes), then ReLU."""

    def __init__(self, inputs: int, outputs: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(inputs, outputs, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(outputs),
            nn.ReLU(),
            nn.Conv2d(outputs, outputs, 3, padding=1, bias=False),
            nn.BatchNorm2d(outputs),
        )
        self.shortcut = nn.Identity()
        if stride != 1 or inputs != outputs:
            self.shortcut = nn.Sequential(
                nn.Conv2d(inputs, outputs, 1, stride=stride, bias=False), nn.BatchNorm2d(outputs)
            )

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(self.body(x) + self.shortcut(x))


def residual_cnn(channels: int, blocks: int) -> nn.Module:
    """The ``resnet`` family's network: stem, ``blocks`` residual blocks (the first at stride 2), pooled classifier."""
    stem = [nn.Conv2d(1, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels), nn.ReLU()]
    body = [ResidualBlock(channels, channels, 2 if index == 0 else 1) for index in range(blocks)]
    return nn.Sequential(*stem, *body, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, 10))


def build_module(spec: TaskSpec) -> nn.Module:
    """The model of ``spec`` with torch's default initialisation (not yet scaled)."""
    if spec.family in MLP_FAMILIES:
        return mlp((spec.image_size**2, *spec.hidden, 10), ACTIVATIONS[spec.activation])
    if spec.family == "resnet":
        return residual_cnn(spec.channels[0], spec.blocks)
    if spec.family == "rnn-lm":
        return CharRNN(spec.width, spec.cell)
    if spec.family == "cnn":
        return small_cnn(spec.channels, spec.batch_norm, spec.image_size)
    if spec.family == "char-lm":
        return CharTransformer(spec.width, spec.context)
    raise ValueError(f"unknown task family {spec.family!r}; choose from {FAMILIES}")


def parameter_count(spec: TaskSpec) -> int:
    """The instance's number of parameters, counted from ``spec`` without building anything.

    (Building on the meta device would be exact too, but costs ~0.1 s for some modules the
    first time; tests check that the counts match the built modules.)
    """
    if spec.family in MLP_FAMILIES:
        widths = (spec.image_size**2, *spec.hidden, 10)
        return sum((inputs + 1) * outputs for inputs, outputs in itertools.pairwise(widths))
    if spec.family == "cnn":
        per_channel = 3 if spec.batch_norm else 1  # the conv bias, and BatchNorm's weight and bias
        convolutions = sum(
            inputs * 9 * outputs + per_channel * outputs
            for inputs, outputs in zip((1, *spec.channels[:-1]), spec.channels, strict=True)
        )
        side = spec.image_size // 2 ** len(spec.channels)
        return convolutions + (spec.channels[-1] * side * side + 1) * 10
    if spec.family == "resnet":
        c = spec.channels[0]
        stem = 9 * c + 2 * c
        block = 2 * (9 * c * c + 2 * c)
        shortcut = c * c + 2 * c  # the first block runs at stride 2
        return stem + spec.blocks * block + shortcut + (c + 1) * 10
    if spec.family == "rnn-lm":
        w, gates = spec.width, 3 if spec.cell == "gru" else 4
        return VOCABULARY * w + 2 * (w + 1) * gates * w + (w + 1) * VOCABULARY
    if spec.family == "char-lm":
        w = spec.width
        attention = 4 * w * w + 4 * w
        feed_forward = 2 * w * 2 * w + 2 * w + w
        layer_norms = 3 * 2 * w
        return VOCABULARY * w + spec.context * w + attention + feed_forward + layer_norms + (w + 1) * VOCABULARY
    raise ValueError(f"unknown task family {spec.family!r}; choose from {FAMILIES}")


def _scaled(module: nn.Module, scale: float) -> nn.Module:
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.mul_(scale)
    return module


@cache
def images_at(dataset: str, size: int, root: str | None = None) -> dict[str, tuple[Tensor, Tensor]]:
    """``image_splits`` (normalised) at ``size``×``size``, by average pooling; cached per size."""
    splits = image_splits(dataset, root)
    if size == splits["train"][0].shape[-1]:
        return splits
    return {
        split: (nn.functional.adaptive_avg_pool2d(images, size), labels) for split, (images, labels) in splits.items()
    }


@cache
def normalised_pixel_range(dataset: str, root: str | None = None) -> tuple[float, float]:
    """Where raw pixels 0 and 1 land after normalisation: the extremes of the training half.

    Keeping one normalised copy and mapping batches back to [0, 1] affinely (average pooling
    commutes with it) saves a second copy of every dataset in memory.
    """
    images = image_splits(dataset, root)["train"][0]
    return float(images.min()), float(images.max())


def image_sampler(spec: TaskSpec, root: str | None):
    def transform(images: Tensor) -> Tensor:
        if not spec.normalised:
            low, high = normalised_pixel_range(spec.dataset, root)
            images = (images - low) / (high - low)
        return images.flatten(1) if spec.family in MLP_FAMILIES else images

    def sample(generator: torch.Generator, split: str) -> tuple[Tensor, Tensor]:
        images, labels = images_at(spec.dataset, spec.image_size, root)[split]
        index = torch.randint(0, len(images), (spec.batch_size,), generator=generator)
        return transform(images[index]), labels[index]

    def split_data(split: str) -> tuple[Tensor, Tensor]:
        images, labels = images_at(spec.dataset, spec.image_size, root)[split]
        return transform(images), labels

    return sample, split_data


def build_task(spec: TaskSpec, data_root: str | None = None) -> ModuleTask:
    """The task instance ``spec`` describes; data are loaded (once per process) on first use."""
    if spec.family in TEXT_FAMILIES:
        sampler = text_sampler(spec.batch_size, spec.context)
        loss_fn = next_token_loss

        def split_data(split: str) -> tuple[Tensor, Tensor]:
            text = stdlib_text_splits()[split].long()
            usable = (len(text) - 1) // spec.context * spec.context
            return text[:usable].view(-1, spec.context), text[1 : usable + 1].view(-1, spec.context)

    else:
        sampler, split_data = image_sampler(spec, data_root)
        loss_fn = nn.functional.cross_entropy
    return ModuleTask(
        name=spec.name,
        make_module=lambda generator: _scaled(seeded_init(lambda: build_module(spec), generator), spec.init_scale),
        sampler=sampler,
        loss_fn=loss_fn,
        description=f"{spec.name} ({parameter_count(spec)} parameters)",
        split_data=split_data,
    )


# -- distributions ------------------------------------------------------------------------------


@dataclass(frozen=True)
class TaskDistribution:
    """Task instances from ``families``, each family equally likely."""

    name: str
    families: tuple[str, ...]
    description: str = ""
    max_parameters: int = MAX_PARAMETERS

    def draw_spec(self, generator: torch.Generator) -> TaskSpec:
        family = _choice(self.families, generator)
        for _ in range(1000):
            spec = SPEC_DRAWERS[family](generator)
            if parameter_count(spec) <= self.max_parameters:
                return spec
        raise RuntimeError(f"{self.name}: no {family} instance under {self.max_parameters} parameters in 1000 draws")

    def draw(self, generator: torch.Generator, data_root: str | None = None) -> ModuleTask:
        return build_task(self.draw_spec(generator), data_root)


TASK_DISTRIBUTIONS: dict[str, TaskDistribution] = {
    "small-tasks": TaskDistribution(
        "small-tasks", FAMILIES, "MLPs and small CNNs on (Fashion-)MNIST, a byte-level Transformer on Python source"
    ),
    "image-mlps": TaskDistribution("image-mlps", ("mlp",), "MLPs on MNIST and Fashion-MNIST"),
    "general-tasks": TaskDistribution(
        "general-tasks",
        GENERAL_FAMILIES,
        "small-tasks plus wide MLPs, residual CNNs with BatchNorm and GRU/LSTM byte language models, "
        f"up to {GENERAL_MAX_PARAMETERS:,} parameters",
        GENERAL_MAX_PARAMETERS,
    ),
}


def get_task_distribution(name: str) -> TaskDistribution:
    try:
        return TASK_DISTRIBUTIONS[name]
    except KeyError:
        raise KeyError(f"unknown task distribution {name!r}; choose from {sorted(TASK_DISTRIBUTIONS)}") from None

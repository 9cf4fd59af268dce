"""The ordinary training loops of the ``real`` suite: models and data outside the meta-training distribution.

Meta-training sees MLPs of depth 1–3 and width 16–256 (sigmoid, tanh, ReLU, GELU), CNNs of 8–16
channels with and without BatchNorm on MNIST and Fashion-MNIST, and a tiny character model on
Python source. Each loop here differs from that in architecture, data or loss:

- ``mnist-cnn-wide``: a ReLU CNN without BatchNorm, 32 and 64 channels, on raw [0, 1] MNIST
  (the widths of pytorch/examples ``mnist``, strided instead of pooled, without dropout or the
  hidden dense layer, to fit the budget);
- ``fashion-mlp-deep``: five SiLU hidden layers on Fashion-MNIST;
- ``text-transformer``: a 2-layer character-level Transformer on English prose (``text_corpus``);
- ``fashion-autoencoder``: an MLP autoencoder on Fashion-MNIST, a regression loss;
- ``mnist-logistic``: logistic regression on raw MNIST pixels, a convex problem;
- ``text-gru``: a 2-layer ``nn.GRU`` character model on English prose (meta-training's recurrent
  models are one written-out layer on Python source);
- ``mnist-resnet-bn``: a residual CNN with BatchNorm, two stages of two blocks (16 and 32
  channels) at 28×28 (meta-training's are one stage of 1–3 blocks at 14×14).

Each loop runs at its own short length (200–300 steps) and at ``LONG_STEPS``.

``CLASSIC_LOOPS`` holds the learned-optimization literature's classic, the sigmoid 784-20-10 MLP
on MNIST (Andrychowicz et al. 2016), as an ordinary loop: inside the meta-training distribution
(the ``-mnist`` weights were trained on it), so not part of the ``real`` suite, but the loop the
``quick`` suite keeps because tuned rates there are far above Adam's default.

Image loops train on the half of the training images meta-training never used (the ``valid``
half of ``meta.tasks.images``), tune on a fixed sample of the other half, and report on the test
split.
"""

from __future__ import annotations

import hashlib
import math
import sysconfig
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import torch
from torch import Tensor, nn

from learned_optim.meta.tasks.data import load_images
from learned_optim.meta.tasks.distributions import ResidualBlock
from learned_optim.meta.tasks.images import SPLIT_SEED

VALIDATION_EXAMPLES = 4096  # fixed sample of held-out data for tuning
TEXT_CONTEXT = 64
# Overlapping fit windows, 8 characters apart: every position is seen in 8 contexts, without the
# memory of a window at every character.
TEXT_FIT_STRIDE = 8
TEXT_HELD_OUT = 0.1  # the last tenth of the corpus: validation then test, never trained on
LONG_STEPS = 2000  # the long length every loop also runs at: what users train for

Batch = tuple[Tensor, Tensor]


@dataclass(frozen=True)
class LoopData:
    """``fit``: what the loop trains on; ``validation``: held out for tuning; ``test``: for reporting."""

    fit: Batch
    validation: Batch
    test: Batch
    source: str  # where the data came from, recorded in every cell (a changed corpus reruns)


@dataclass(frozen=True)
class Loop:
    """One ordinary training loop: a model, its data, its loss and the metric reported on the test split.

    ``metric`` is computed by ``evaluate``; ``higher_is_better`` says which way it points.
    """

    name: str
    description: str
    steps: int
    batch_size: int
    build_model: Callable[[], nn.Module]
    load_data: Callable[[], LoopData]
    loss: Callable[[Tensor, Tensor], Tensor]
    metric: str
    higher_is_better: bool

    def evaluate(self, model: nn.Module, data: Batch) -> tuple[float, float]:
        """Mean loss and the loop's metric over ``data``, model in eval mode, in chunks."""
        inputs, targets = data
        model.eval()
        loss_sum, correct = 0.0, 0.0
        with torch.no_grad():
            for start in range(0, len(inputs), 1024):
                x, y = inputs[start : start + 1024], targets[start : start + 1024]
                output = model(x)
                loss_sum += self.loss(output, y).item() * len(x)
                if self.metric == "accuracy":
                    correct += (output.argmax(-1) == y).sum().item()
        model.train()
        loss = loss_sum / len(inputs)
        if self.metric == "accuracy":
            return loss, correct / len(inputs)
        if self.metric == "bits per char":
            return loss, loss / math.log(2)
        return loss, loss  # reconstruction MSE: the loss itself


@cache
def _image_halves(dataset: str) -> LoopData:
    """Raw [0, 1] images: fit on the meta-training's held-out half, validate on a sample of the other."""
    images, labels = load_images(dataset, train=True)
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(SPLIT_SEED))
    half = len(images) // 2
    meta_train, held_out = order[:half], order[half:]
    sample = meta_train[torch.randperm(half, generator=torch.Generator().manual_seed(7))[:VALIDATION_EXAMPLES]]
    return LoopData(
        fit=(images[held_out], labels[held_out]),
        validation=(images[sample], labels[sample]),
        test=load_images(dataset, train=False),
        source=f"torchvision {dataset}",
    )


def _normalised(data: LoopData) -> LoopData:
    """Inputs standardised with the fit split's mean and std (as a user's ``transforms.Normalize``)."""
    mean, std = data.fit[0].mean(), data.fit[0].std()
    parts = [((x - mean) / std, y) for x, y in (data.fit, data.validation, data.test)]
    return LoopData(*parts, source=data.source + ", normalised")


def _reconstruction(data: LoopData) -> LoopData:
    """An autoencoder's data: the flattened image is both input and target."""
    parts = [(x.flatten(1), x.flatten(1)) for x, _ in (data.fit, data.validation, data.test)]
    return LoopData(*parts, source=data.source + ", images as targets")


def text_corpus() -> tuple[str, str]:
    """``(text, where it came from)``: English prose every CPython installation carries.

    The prose of the Python language reference that ``help()`` shows (``pydoc_data.topics``),
    about 0.5 MB: not Python source, unlike the character model's meta-training data, and present
    wherever the standard library is. Where a distribution strips it, the standard library's
    ``LICENSE.txt`` (14 kB) stands in; the source is recorded with every result.
    """
    try:
        from pydoc_data.topics import topics

        return "\n\n".join(topics[key] for key in sorted(topics)), "pydoc_data.topics (Python reference prose)"
    except ImportError:
        path = Path(sysconfig.get_paths()["stdlib"]) / "LICENSE.txt"
        if not path.is_file():
            raise FileNotFoundError(f"no text corpus: neither pydoc_data.topics nor {path} exists") from None
        return path.read_text(encoding="utf-8", errors="replace"), str(path)


@cache
def _text_windows() -> tuple[LoopData, int]:
    """Character windows of ``TEXT_CONTEXT`` + 1: the first 90% to fit, the rest split for validation and test."""
    text, where = text_corpus()
    alphabet = sorted(set(text))
    index = {c: i for i, c in enumerate(alphabet)}
    codes = torch.tensor([index[c] for c in text])
    cut = int(len(codes) * (1 - TEXT_HELD_OUT))
    middle = cut + (len(codes) - cut) // 2

    def windows(part: Tensor, stride: int = TEXT_CONTEXT) -> Batch:
        starts = torch.arange(0, len(part) - TEXT_CONTEXT, stride)
        window = part[starts.unsqueeze(1) + torch.arange(TEXT_CONTEXT + 1)]
        return window[:, :-1], window[:, 1:]

    digest = hashlib.sha256(text.encode()).hexdigest()[:12]
    data = LoopData(
        fit=windows(codes[:cut], TEXT_FIT_STRIDE),
        validation=windows(codes[cut:middle]),
        test=windows(codes[middle:]),
        source=f"{where}, {len(text)} characters, sha256 {digest}",
    )
    return data, len(alphabet)


def sample_batch(loop: Loop, data: LoopData, generator: torch.Generator) -> Batch:
    """A random minibatch of the fit split (with replacement, as an infinite shuffled DataLoader)."""
    inputs, targets = data.fit
    index = torch.randint(0, len(inputs), (loop.batch_size,), generator=generator)
    return inputs[index], targets[index]


class CharTransformer(nn.Module):
    """A causal character-level Transformer: embeddings, ``layers`` pre-norm encoder layers, a linear head."""

    def __init__(self, vocabulary: int, width: int = 64, layers: int = 2, heads: int = 4) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocabulary, width)
        self.position = nn.Parameter(torch.randn(TEXT_CONTEXT, width) * 0.02)
        layer = nn.TransformerEncoderLayer(width, heads, 2 * width, dropout=0.0, batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocabulary)
        self.register_buffer("causal", nn.Transformer.generate_square_subsequent_mask(TEXT_CONTEXT), persistent=False)

    def forward(self, codes: Tensor) -> Tensor:
        length = codes.shape[1]
        hidden = self.embed(codes) + self.position[:length]
        hidden = self.blocks(hidden, mask=self.causal[:length, :length], is_causal=True)
        return self.head(self.norm(hidden))


class CharGRU(nn.Module):
    """A character model as a user writes it: embedding, a 2-layer ``nn.GRU``, a linear head."""

    def __init__(self, vocabulary: int, width: int = 128, layers: int = 2) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocabulary, 64)
        self.rnn = nn.GRU(64, width, layers, batch_first=True)
        self.head = nn.Linear(width, vocabulary)

    def forward(self, codes: Tensor) -> Tensor:
        return self.head(self.rnn(self.embed(codes))[0])


def _resnet_bn() -> nn.Module:
    # Stem at stride 2 and two stages (16 and 32 channels) of torchvision's basic block: a ResNet in
    # miniature, fit for a CPU.
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
        ResidualBlock(16, 16, 1), ResidualBlock(16, 16, 1),
        ResidualBlock(16, 32, 2), ResidualBlock(32, 32, 1),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10),
    )  # fmt: skip


def _sequence_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    return nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())


def _wide_cnn() -> nn.Module:
    # Strided convolutions instead of convolution + pooling: the same widths at a third of the
    # cost, so the loop fits the suite's CPU budget.
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, stride=2),
        nn.ReLU(),
        nn.Conv2d(32, 64, 3, stride=2),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(64 * 6 * 6, 10),
    )


def _deep_mlp(width: int = 48, hidden_layers: int = 5) -> nn.Module:
    layers: list[nn.Module] = [nn.Flatten()]
    for fan_in in [784] + [width] * (hidden_layers - 1):
        layers += [nn.Linear(fan_in, width), nn.SiLU()]
    return nn.Sequential(*layers, nn.Linear(width, 10))


def _sigmoid_mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 20), nn.Sigmoid(), nn.Linear(20, 10))


def _autoencoder() -> nn.Module:
    return nn.Sequential(
        nn.Linear(784, 32), nn.ReLU(), nn.Linear(32, 8), nn.ReLU(),
        nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 784), nn.Sigmoid(),
    )  # fmt: skip


LOOPS: dict[str, Loop] = {
    loop.name: loop
    for loop in (
        Loop(
            "mnist-cnn-wide",
            "ReLU CNN, 32 and 64 channels (stride 2), no BatchNorm, raw [0, 1] MNIST, batch 64",
            250,
            64,
            _wide_cnn,
            lambda: _image_halves("MNIST"),
            nn.functional.cross_entropy,
            "accuracy",
            True,
        ),
        Loop(
            "fashion-mlp-deep",
            "MLP with 5 SiLU hidden layers of 48 units, normalised Fashion-MNIST, batch 128",
            300,
            128,
            _deep_mlp,
            lambda: _normalised(_image_halves("FashionMNIST")),
            nn.functional.cross_entropy,
            "accuracy",
            True,
        ),
        Loop(
            "text-transformer",
            f"character Transformer, 2 pre-norm layers, width 64, context {TEXT_CONTEXT}, batch 16, English prose",
            200,
            16,
            lambda: CharTransformer(_text_windows()[1]),
            lambda: _text_windows()[0],
            _sequence_cross_entropy,
            "bits per char",
            False,
        ),
        Loop(
            "fashion-autoencoder",
            "MLP autoencoder 784-32-8-32-784 (ReLU, sigmoid output), Fashion-MNIST, MSE, batch 128",
            300,
            128,
            _autoencoder,
            lambda: _reconstruction(_image_halves("FashionMNIST")),
            nn.functional.mse_loss,
            "reconstruction MSE",
            False,
        ),
        Loop(
            "text-gru",
            f"character GRU, 2 layers of 128 (nn.GRU), context {TEXT_CONTEXT}, batch 32, English prose",
            200,
            32,
            lambda: CharGRU(_text_windows()[1]),
            lambda: _text_windows()[0],
            _sequence_cross_entropy,
            "bits per char",
            False,
        ),
        Loop(
            "mnist-resnet-bn",
            "residual CNN with BatchNorm (stem, 2 stages of 2 basic blocks, 16 and 32 channels), raw MNIST, batch 64",
            200,
            64,
            _resnet_bn,
            lambda: _image_halves("MNIST"),
            nn.functional.cross_entropy,
            "accuracy",
            True,
        ),
        Loop(
            "mnist-logistic",
            "logistic regression on raw MNIST pixels (convex), batch 128",
            300,
            128,
            lambda: nn.Sequential(nn.Flatten(), nn.Linear(784, 10)),
            lambda: _image_halves("MNIST"),
            nn.functional.cross_entropy,
            "accuracy",
            True,
        ),
    )
}

CLASSIC_LOOPS: dict[str, Loop] = {
    "mnist-mlp-sigmoid": Loop(
        "mnist-mlp-sigmoid",
        "the classic L2O task: MLP 784-20-10, sigmoid, raw [0, 1] MNIST, batch 128 (the -mnist weights' training task)",
        300,
        128,
        _sigmoid_mlp,
        lambda: _image_halves("MNIST"),
        nn.functional.cross_entropy,
        "accuracy",
        True,
    ),
}
ALL_LOOPS: dict[str, Loop] = LOOPS | CLASSIC_LOOPS

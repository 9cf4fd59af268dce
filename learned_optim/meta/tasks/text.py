"""Character-level language modelling on the Python standard library's own source files.

Every machine with Python has this text, so the task needs no download. The corpus is the
top-level ``*.py`` files of ``sysconfig.get_paths()["stdlib"]`` in sorted order, split by file:
every tenth file (index ≡ 0 mod 10) is ``valid``, the one five after it ``test``, the rest
``train``. Its exact content follows the Python version, as the datasets of a torchvision release
follow that release.

Text is bytes; non-ASCII bytes (rare in the standard library) become one token, 127 (DEL, which
source files never contain), so the vocabulary is the 128 ASCII codes.
"""

from __future__ import annotations

import math
import sysconfig
from functools import cache
from pathlib import Path

import torch
from torch import Tensor, nn

VOCABULARY = 128
_OTHER_BYTE = VOCABULARY - 1


def stdlib_files() -> list[Path]:
    return sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))


def split_of_file(index: int) -> str:
    return {0: "valid", 5: "test"}.get(index % 10, "train")


@cache
def stdlib_text_splits() -> dict[str, Tensor]:
    """``{"train", "valid", "test"}`` → one uint8 tensor of token ids each (files concatenated)."""
    pieces: dict[str, list[bytes]] = {"train": [], "valid": [], "test": []}
    for index, path in enumerate(stdlib_files()):
        pieces[split_of_file(index)].append(path.read_bytes())
    splits = {}
    for split, texts in pieces.items():
        tokens = torch.frombuffer(bytearray(b"".join(texts)), dtype=torch.uint8)
        splits[split] = torch.where(tokens < VOCABULARY, tokens, torch.tensor(_OTHER_BYTE, dtype=torch.uint8))
    return splits


def text_sampler(batch_size: int, context: int):
    """Batches of ``batch_size`` windows: inputs are ``context`` tokens, targets the next token of each."""
    offsets_in_window = torch.arange(context + 1)

    def sample(generator: torch.Generator, split: str) -> tuple[Tensor, Tensor]:
        text = stdlib_text_splits()[split]
        starts = torch.randint(0, len(text) - context - 1, (batch_size, 1), generator=generator)
        windows = text[starts + offsets_in_window].long()
        return windows[:, :-1], windows[:, 1:]

    return sample


def next_token_loss(logits: Tensor, targets: Tensor) -> Tensor:
    return nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())


class CharTransformer(nn.Module):
    """A one-block causal Transformer (pre-norm, two heads, feed-forward twice as wide) over bytes."""

    def __init__(self, width: int, context: int):
        super().__init__()
        self.embed = nn.Embedding(VOCABULARY, width)
        self.position = nn.Parameter(torch.randn(context, width) / math.sqrt(width))
        self.block = nn.TransformerEncoderLayer(
            width, nhead=2, dim_feedforward=2 * width, dropout=0.0, batch_first=True, norm_first=True
        )
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, VOCABULARY)

    def forward(self, tokens: Tensor) -> Tensor:
        length = tokens.shape[1]
        # Each position sees only itself and earlier ones; built per call, so no buffer to carry.
        causal = torch.full((length, length), -math.inf, device=tokens.device).triu(1)
        hidden = self.embed(tokens) + self.position[:length]
        hidden = self.block(hidden, src_mask=causal, is_causal=True)
        return self.head(self.norm(hidden))


class CharRNN(nn.Module):
    """A byte-level recurrent language model: embedding, one GRU or LSTM layer, linear head.

    The cell is written out (``nn.Linear`` gates over a Python loop of ``context`` steps) rather
    than ``nn.GRU``/``nn.LSTM``, whose fused kernels have no ``vmap`` batching rule: meta-training
    runs many copies of an instance under ``vmap``. The math is PyTorch's GRU and LSTM cells.
    """

    def __init__(self, width: int, cell: str):
        super().__init__()
        if cell not in ("gru", "lstm"):
            raise ValueError(f"unknown recurrent cell {cell!r}; choose 'gru' or 'lstm'")
        self.cell, self.width = cell, width
        gates = 3 if cell == "gru" else 4
        self.embed = nn.Embedding(VOCABULARY, width)
        self.input_gates = nn.Linear(width, gates * width)
        self.hidden_gates = nn.Linear(width, gates * width)
        self.head = nn.Linear(width, VOCABULARY)

    def forward(self, tokens: Tensor) -> Tensor:
        inputs = self.input_gates(self.embed(tokens))  # every step's input gates in one product
        hidden = inputs.new_zeros(tokens.shape[0], self.width)
        memory = hidden
        outputs = []
        for step in range(tokens.shape[1]):
            from_input, from_hidden = inputs[:, step], self.hidden_gates(hidden)
            if self.cell == "gru":
                reset_in, update_in, new_in = from_input.chunk(3, dim=1)
                reset_h, update_h, new_h = from_hidden.chunk(3, dim=1)
                reset = torch.sigmoid(reset_in + reset_h)
                update = torch.sigmoid(update_in + update_h)
                candidate = torch.tanh(new_in + reset * new_h)
                hidden = (1 - update) * candidate + update * hidden
            else:
                gate_i, gate_f, gate_g, gate_o = (from_input + from_hidden).chunk(4, dim=1)
                memory = torch.sigmoid(gate_f) * memory + torch.sigmoid(gate_i) * torch.tanh(gate_g)
                hidden = torch.sigmoid(gate_o) * torch.tanh(memory)
            outputs.append(hidden)
        return self.head(torch.stack(outputs, dim=1))

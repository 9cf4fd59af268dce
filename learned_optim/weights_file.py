"""Reading weights from anywhere without letting the files cost more than they hold.

A Hub repo is someone else's files. Before anything is allocated, what a ``config.json`` asks
for is compared with what ``model.safetensors`` holds:

* JSON documents are refused above ``MAX_JSON_BYTES`` or nested deeper than ``MAX_JSON_DEPTH``
  (Python's decoder recurses per level and would raise ``RecursionError``).
* The safetensors header is read on its own (8 bytes of length, then JSON), without the tensors,
  and every entry is checked against the file's size.
* Every integer of an architecture's config (a width, a layer count) must be at most the number
  of values the weights hold: no network of ``n`` values has a dimension above ``n``.
* The expected tensors are built on the ``meta`` device (shapes, no storage) under a budget of
  torch calls proportional to the number of tensors held, so a layer count that passed the bound
  above still cannot loop for long.

Only then are the tensors read and compared name by name, shape by shape.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.overrides import TorchFunctionMode

from learned_optim.errors import WeightsError

MAX_JSON_BYTES = 1 << 20  # a config.json of the shipped weights is a few kB
MAX_JSON_DEPTH = 32
MAX_HEADER_BYTES = 16 << 20  # a safetensors header lists names, dtypes, shapes and offsets only
TORCH_CALLS_PER_TENSOR = 16  # init_theta makes each tensor in a handful of calls (draw, scale, shift)
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_BRACKET = re.compile(r"[\[\]{}]")
_ITEM_BYTES = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1,
    "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1,
}  # fmt: skip


def parse_json(text: str, source: str) -> Any:
    """``json.loads`` of an untrusted document, refusing one nested deeper than ``MAX_JSON_DEPTH``."""
    depth = deepest = 0
    for bracket in _BRACKET.finditer(_STRING.sub("", text)):  # brackets outside strings
        depth += 1 if bracket.group() in "[{" else -1
        deepest = max(deepest, depth)
        if deepest > MAX_JSON_DEPTH:
            raise WeightsError(f"{source}: JSON nested deeper than {MAX_JSON_DEPTH} levels; refused")
    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError) as error:
        raise WeightsError(f"{source}: not valid JSON ({error})") from None


def read_json_file(path: Path) -> Any:
    """The JSON document at ``path``, refused above ``MAX_JSON_BYTES`` before it is read."""
    size = path.stat().st_size  # FileNotFoundError is the caller's to name
    if size > MAX_JSON_BYTES:
        raise WeightsError(f"{path}: {size} bytes, more than the {MAX_JSON_BYTES} a weights config may have; refused")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as error:
        raise WeightsError(f"{path}: not valid JSON ({error})") from None
    return parse_json(text, str(path))


def read_safetensors_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """``{name: shape}`` from a safetensors file's header, checked against the file's size.

    Reads the 8-byte header length and the header only; raises ``FileNotFoundError`` if there is
    no file and :class:`WeightsError` if the header cannot describe this file.
    """

    def corrupted(reason: str) -> WeightsError:
        return WeightsError(f"{path}: not a readable safetensors file, truncated or corrupted ({reason})")

    size = path.stat().st_size
    with path.open("rb") as file:
        prefix = file.read(8)
        if len(prefix) < 8:
            raise corrupted("shorter than its 8-byte header length")
        (header_bytes,) = struct.unpack("<Q", prefix)
        if header_bytes > min(size - 8, MAX_HEADER_BYTES):
            raise corrupted(f"a header of {header_bytes} bytes in a file of {size}")
        try:
            text = file.read(header_bytes).decode("utf-8")
        except UnicodeDecodeError as error:
            raise corrupted(f"header is not UTF-8: {error}") from None
    try:
        header = parse_json(text, str(path))
    except WeightsError as error:
        raise corrupted(str(error).removeprefix(f"{path}: ")) from None
    if not isinstance(header, dict):
        raise corrupted("header is not a JSON object")
    data_bytes = size - 8 - header_bytes
    shapes = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(entry, dict):
            raise corrupted(f"entry {name!r} is not an object")
        dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        if dtype not in _ITEM_BYTES:
            raise corrupted(f"tensor {name!r} has unknown dtype {dtype!r}")
        if not (isinstance(shape, list) and all(type(n) is int and n >= 0 for n in shape)):
            raise corrupted(f"tensor {name!r} has shape {shape!r}")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(n) is int for n in offsets)):
            raise corrupted(f"tensor {name!r} has data_offsets {offsets!r}")
        begin, end = offsets
        if not 0 <= begin <= end <= data_bytes or end - begin != math.prod(shape) * _ITEM_BYTES[dtype]:
            fits = f"bytes {begin}-{end} of {data_bytes}"
            raise corrupted(f"tensor {name!r} of shape {shape} ({dtype}) does not fit {fits}")
        shapes[name] = tuple(shape)
    return shapes


def _integers(value: Any) -> list[int]:
    if type(value) is int:
        return [value]
    if isinstance(value, tuple):
        return [n for item in value for n in _integers(item)]
    return []


def check_config_sizes(config: Any, values_held: int, source: str) -> None:
    """Refuse a config with an integer above ``values_held``, the number of values the weights hold."""
    for config_field in dataclasses.fields(config):
        for number in _integers(getattr(config, config_field.name)):
            if number > max(values_held, 1):
                raise WeightsError(
                    f"{source}: {type(config).__name__}.{config_field.name} is {number}, more than the "
                    f"{values_held} values the weights hold; refused before allocating anything"
                )


class _CallBudget(TorchFunctionMode):
    """Raises :class:`WeightsError` on the torch call after ``limit``."""

    def __init__(self, limit: int, source: str) -> None:
        super().__init__()
        self.left, self.limit, self.source = limit, limit, source

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        self.left -= 1
        if self.left < 0:
            raise WeightsError(
                f"{self.source}: the config asks for more tensors than the weights hold "
                f"(building their shapes took over {self.limit} torch calls); refused"
            )
        return func(*args, **(kwargs or {}))


def expected_theta(
    architecture: Any, config: Any, held: Mapping[str, tuple[int, ...]], source: str
) -> dict[str, Tensor]:
    """The tensors ``architecture.init_theta(config)`` makes, as ``meta`` tensors (shapes only),
    after checking that ``config`` asks for no more than ``held`` (``{name: shape}``) justifies."""
    check_config_sizes(config, sum(math.prod(shape) for shape in held.values()), source)
    budget = TORCH_CALLS_PER_TENSOR * (len(held) + 4)
    with torch.device("meta"), _CallBudget(budget, source):
        return architecture.init_theta(config, None)

"""Run as ``python malformed_weights.py ARCHITECTURE``: load weights damaged the ways a careless or
hostile Hub repo could serve them, under a cap on address space, and print one JSON line per case.

A subprocess, so that a regression that tries to allocate the machine's memory fails its test
(the cap turns it into an allocator error) instead of taking CI down.
"""

from __future__ import annotations

import dataclasses
import json
import resource
import struct
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

import learned_optim as lo

HEADROOM = 1 << 30  # address space the cases may add beyond what the process holds after set-up
HUGE_SIZE, HUGE_COUNT = 1_000_000_000, 10_000_000
DEEP = 100_000


def _vm_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def _small_optimizer(architecture: str) -> lo.LearnedOptimizer:
    cls = lo.ARCHITECTURES[architecture]
    small = {"rnnprop": {"hidden_size": 4, "num_layers": 1}, "lstm": {"hidden_size": 4, "num_layers": 1}}
    return cls([torch.nn.Parameter(torch.zeros(3, 2))], seed=1, **small.get(architecture, {}))


def _edit(directory: Path, change: Callable[[dict], None]) -> None:
    path = directory / "config.json"
    document = json.loads(path.read_text())
    change(document)
    path.write_text(json.dumps(document))


def _integer_fields(optimizer: lo.LearnedOptimizer) -> list[str]:
    return [f.name for f in dataclasses.fields(optimizer.config) if type(getattr(optimizer.config, f.name)) is int]


def _sizes_the_network(optimizer: lo.LearnedOptimizer, name: str) -> bool:
    def shapes(config: object) -> dict:
        return {k: v.shape for k, v in type(optimizer).init_theta(config, None).items()}

    larger = dataclasses.replace(optimizer.config, **{name: getattr(optimizer.config, name) + 1})
    return shapes(larger) != shapes(optimizer.config)


def cases(optimizer: lo.LearnedOptimizer) -> dict[str, tuple[Callable[[Path], None], str]]:
    """``{case: (damage to a saved weights folder, a pattern the error message must match)}``."""

    def set_field(name: str, value: int) -> Callable[[Path], None]:
        return lambda d: _edit(d, lambda doc: doc["config"].update({name: value}))

    def nested(d: Path) -> None:
        (d / "config.json").write_text('{"format_version": 1, "config": ' + "[" * DEEP + "]" * DEEP + "}")

    def oversized(d: Path) -> None:
        _edit(d, lambda doc: doc.update(description="x" * (2 << 20)))

    def header_length(d: Path) -> None:
        data = (d / "model.safetensors").read_bytes()
        (d / "model.safetensors").write_bytes(struct.pack("<Q", 1 << 62) + data[8:])

    def huge_entry(d: Path) -> None:
        header = json.dumps({"x": {"dtype": "F32", "shape": [HUGE_SIZE, HUGE_SIZE], "data_offsets": [0, 4]}}).encode()
        (d / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 4)

    held = sum(t.numel() for t in optimizer.theta.values())
    found: dict[str, tuple[Callable[[Path], None], str]] = {}
    for name in _integer_fields(optimizer):
        found[f"{name}={HUGE_SIZE}"] = (set_field(name, HUGE_SIZE), name)
        found[f"{name}={HUGE_COUNT}"] = (set_field(name, HUGE_COUNT), name)
        if not _sizes_the_network(optimizer, name):
            continue  # e.g. Celo2's ns_iters: any value the first bound lets through loads fine
        # The largest value the first bound lets through: the shapes or the call budget refuse it.
        found[f"{name}=values-held"] = (set_field(name, held), "torch calls|shape|names do not match")
    found["nested-config"] = (nested, "nested deeper")
    found["oversized-config"] = (oversized, "bytes")
    found["header-length"] = (header_length, "header of")
    found["huge-tensor-entry"] = (huge_entry, "does not fit")
    return found


def state_dict_cases(optimizer: lo.LearnedOptimizer) -> dict[str, tuple[dict, str]]:
    """``{case: (an optimizer state dict whose learned config is absurd, the field the error names)}``."""
    found = {}
    for name in _integer_fields(optimizer):
        state = optimizer.state_dict()
        state["learned_optimizer"]["config"][name] = HUGE_SIZE
        found[f"state-dict {name}={HUGE_SIZE}"] = (state, name)
    return found


def reference_format_cases(directory: Path) -> dict[str, tuple[Callable[[Path], None], str]]:
    """The published format (Celo2's ``PyTorchModelHubMixin`` config.json), if this architecture reads it."""
    published = {"feature_dims": [1, 1, 1, 3, 1, 3, 1, 3, 1, 3, 3, 3, 3, 3], "hidden_size": 8, "hidden_layers": 2}
    if lo.ARCHITECTURES["celo2"].config_from_reference(published, "probe") is None:
        return {}
    found = {}
    for name, value in (("hidden_size", HUGE_SIZE), ("hidden_layers", HUGE_COUNT)):
        document = {**published, name: value, "output_size": 3, "activation": "relu"}  # the reference's names
        found[f"published-format {name}={value}"] = (
            lambda d, document=document: (d / "config.json").write_text(json.dumps(document)),
            "ff_" + name,
        )
    return found


def main(architecture: str) -> None:
    torch.set_num_threads(1)
    optimizer = _small_optimizer(architecture)
    work = Path(tempfile.mkdtemp())
    plans = cases(optimizer)
    if architecture == "celo2":
        plans |= reference_format_cases(work)
    folders = {}
    for index, (case, (damage, _)) in enumerate(plans.items()):
        folders[case] = optimizer.save_pretrained(work / str(index))
        damage(folders[case])
    states = state_dict_cases(optimizer)
    resource.setrlimit(resource.RLIMIT_AS, (_vm_bytes("VmSize") + HEADROOM, resource.RLIM_INFINITY))
    resident_before = _vm_bytes("VmHWM")

    def attempt(case: str, expected: str, load: Callable[[], object], source: str) -> None:
        started = time.perf_counter()
        try:
            load()
            error = None
        except BaseException as caught:  # what a regression raises is the finding
            error = caught
        record = {
            "case": case,
            "expected": expected,
            "source": source,
            "error": type(error).__name__ if error is not None else None,
            "is_weights_error": isinstance(error, lo.WeightsError),
            "message": str(error)[:500],
            "seconds": time.perf_counter() - started,
            "resident_growth_bytes": _vm_bytes("VmHWM") - resident_before,
        }
        print(json.dumps(record), flush=True)

    for case, (_, expected) in plans.items():
        attempt(case, expected, lambda d=folders[case]: lo.from_pretrained(d), str(folders[case]))
    for case, (state, expected) in states.items():
        fresh = _small_optimizer(architecture)
        attempt(case, expected, lambda s=state, o=fresh: o.load_state_dict(s), "state dict")


if __name__ == "__main__":
    main(sys.argv[1])

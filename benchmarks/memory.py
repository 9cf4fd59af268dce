"""Peak memory of a piece of work: the CUDA allocator's peak, or on a Linux CPU the process's
resident high-water mark (VmHWM), which ``/proc/self/clear_refs`` resets to the current resident set.

Elsewhere (macOS, Windows) the CPU figures are unavailable and the callers report none.
"""

from __future__ import annotations

from pathlib import Path

import torch

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _status_bytes(field: str) -> int | None:
    if not _STATUS.exists():
        return None
    for line in _STATUS.read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return None


def current_bytes(device: str) -> int | None:
    """What is allocated now: the CUDA allocator's tensors, or the process's resident set."""
    return torch.cuda.memory_allocated() if device.startswith("cuda") else _status_bytes("VmRSS")


def reset_peak(device: str) -> None:
    """Start a new peak at what is allocated now."""
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    elif _CLEAR_REFS.exists():
        _CLEAR_REFS.write_text("5")


def peak_bytes(device: str) -> int | None:
    """The most allocated at once since the last ``reset_peak``."""
    return torch.cuda.max_memory_allocated() if device.startswith("cuda") else _status_bytes("VmHWM")

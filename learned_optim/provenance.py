"""Where a result or a set of weights came from: the commit, the library versions and the machine.

The one provenance record of the project: benchmark results, meta-training recipes and distilled
weights all carry :func:`environment` (or its :func:`git_commit`), so they can be compared.
Standard library and torch only: the runtime, the meta-trainer and the benchmarks all import it.
"""

from __future__ import annotations

import os
import platform
import subprocess
from collections.abc import Iterable
from typing import Any

import torch


def git_commit(ignore: Iterable[str | os.PathLike[str]] = ()) -> str:
    """The checkout's short commit, ``+dirty`` when tracked files differ from it (``unknown`` outside git).

    ``ignore``: files whose changes do not count, e.g. the results file a benchmark is filling in.
    """
    inside = [os.path.relpath(path) for path in ignore]
    excluded = [f":(exclude){path}" for path in inside if not path.startswith("..")]
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True)
        status = ["git", "status", "--porcelain", "--untracked-files=no", "--", ":/", *excluded]
        changed = subprocess.run(status, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return out.stdout.strip() + ("+dirty" if changed else "")


def machine() -> str:
    """The operating system and processor, e.g. ``Linux-6.1-x86_64-with-glibc2.36, x86_64``."""
    return f"{platform.platform()}, {platform.processor() or platform.machine()}"


def environment(device: str = "cpu", ignore: Iterable[str | os.PathLike[str]] = ()) -> dict[str, Any]:
    """Commit, torch and Python versions, machine, device and torch threads, as one JSON-ready record."""
    return {
        "commit": git_commit(ignore),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": machine(),
        "device": device if not device.startswith("cuda") else torch.cuda.get_device_name(),
        "threads": torch.get_num_threads(),
    }

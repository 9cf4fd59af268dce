"""What the ``*_targets`` tools share: the status cell of a target table."""

from __future__ import annotations


def status(met: bool) -> str:
    """``met``, or a bold ``not met`` that stands out in the table."""
    return "met" if met else "**not met**"

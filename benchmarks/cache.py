"""The results file both evaluation protocols keep their finished cells in (suites and l2o_eval)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def write_cells(path: Path, header: dict[str, Any], cells: dict[str, Any]) -> None:
    """``header`` and ``cells`` as one JSON object, one line per cell so diffs stay readable.

    Written to a temporary file that then replaces ``path``: an interrupted run keeps the previous file.
    """
    lines = ",\n".join(f"  {json.dumps(key)}: {json.dumps(cell)}" for key, cell in cells.items())
    head = json.dumps({k: v for k, v in header.items() if k != "cells"}, indent=1)
    head = head[:-2] + ",\n" if len(head) > 2 else "{\n"  # open the object again to append the cells
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(f'{head} "cells": {{\n{lines}\n}}}}\n')
    temporary.replace(path)

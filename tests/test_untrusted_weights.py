"""Weights from anywhere cannot take the machine down: every malformed case of
``malformed_weights.py``, for every registered architecture, is a quick ``WeightsError``."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import OPTIMIZERS

import learned_optim as lo
from learned_optim.weights_file import MAX_JSON_DEPTH, parse_json

WORKER = Path(__file__).with_name("malformed_weights.py")
MAX_SECONDS = 1.0
MAX_RESIDENT_GROWTH = 300 << 20


def _run_worker(architecture: str) -> list[dict]:
    finished = subprocess.run(
        [sys.executable, str(WORKER), architecture], capture_output=True, text=True, timeout=300, check=False
    )
    assert finished.returncode == 0, finished.stderr[-3000:]
    return [json.loads(line) for line in finished.stdout.splitlines()]


@pytest.mark.parametrize("architecture", [cls.architecture for cls in OPTIMIZERS])
def test_malformed_weights_are_refused_quickly_and_without_allocating(architecture):
    records = _run_worker(architecture)
    config = lo.ARCHITECTURES[architecture].Config()
    integer_fields = [name for name, value in vars(config).items() if type(value) is int and not name.startswith("_")]
    # Four damaged files, two or three configs and one state dict per integer field.
    assert len(records) >= 4 + 3 * len(integer_fields), [r["case"] for r in records]
    for record in records:
        case = record["case"]
        assert record["is_weights_error"], f"{case}: {record['error']}: {record['message']}"
        assert re.search(record["expected"], record["message"]), f"{case}: {record['message']}"
        assert record["source"] in record["message"], f"{case}: the message does not name {record['source']}"
        assert record["seconds"] < MAX_SECONDS, f"{case}: {record['seconds']:.2f} s"
        assert record["resident_growth_bytes"] < MAX_RESIDENT_GROWTH, f"{case}: {record['resident_growth_bytes']} B"


def test_json_nesting_is_refused_before_the_decoder_recurses():
    assert parse_json("[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH, "x.json") == parse_json(
        "[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH, "y.json"
    )
    with pytest.raises(lo.WeightsError, match=r"x\.json: JSON nested deeper"):
        parse_json("[" * (MAX_JSON_DEPTH + 1) + "]" * (MAX_JSON_DEPTH + 1), "x.json")
    # Brackets inside strings are text, not nesting.
    assert parse_json(json.dumps({"a": "[" * 1000}), "x.json") == {"a": "[" * 1000}

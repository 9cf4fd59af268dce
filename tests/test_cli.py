import json
import subprocess
import sys

import pytest
from hub_server import FakeHub

import learned_optim as lo


def run_cli(*args, env=None, check=True):
    import os

    result = subprocess.run(
        [sys.executable, "-m", "learned_optim", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
    )
    if check and result.returncode != 0:
        raise AssertionError(result.stderr)
    return result


@pytest.fixture
def weights_folder(tmp_path):
    import torch

    optimizer = lo.LSTMOptimizer([torch.nn.Parameter(torch.zeros(2))], hidden_size=3, num_layers=1)
    optimizer.save_pretrained(tmp_path / "weights" / "tiny-lstm", description="tiny LSTM for tests")
    return tmp_path / "weights"


def test_list_prints_name_architecture_and_description(weights_folder):
    out = run_cli("list", env={"LEARNED_OPTIM_WEIGHTS": str(weights_folder)}).stdout
    assert "tiny-lstm" in out and "lstm" in out and "tiny LSTM for tests" in out
    header, *rows = out.splitlines()
    assert header.split() == ["NAME", "ARCHITECTURE", "RECOMMENDATION", "DESCRIPTION"]
    assert rows[-1].split()[:3] == ["tiny-lstm", "lstm", "—"]  # no recommendation: listed last
    entries = json.loads(run_cli("list", "--json", env={"LEARNED_OPTIM_WEIGHTS": str(weights_folder)}).stdout)
    assert {
        "name": "tiny-lstm",
        "architecture": "lstm",
        "description": "tiny LSTM for tests",
        "recommendation": "",
    } in entries


def test_list_puts_recommended_weights_first_and_marks_study_objects():
    header, *rows = run_cli("list").stdout.splitlines()
    column = header.index("RECOMMENDATION")
    use = {row.split()[0]: row[column:].split("  ")[0] for row in rows}
    assert use["celo2-small-tasks"] == "recommended" and use["rnnprop-mnist"] == "not recommended"
    assert use["hamiltonian-quadratic"] == "study object"
    assert use[rows[0].split()[0]] == "recommended"


def test_download_from_the_hub_into_the_cache(weights_folder, tmp_path):
    files = {p.name: p.read_bytes() for p in (weights_folder / "tiny-lstm").iterdir()}
    with FakeHub() as hub:
        hub.commit("org/tiny", files)
        env = {"HF_ENDPOINT": hub.endpoint}
        out = run_cli("download", "org/tiny", "--cache-dir", str(tmp_path / "cache"), env=env).stdout
        assert "org/tiny: lstm weights in" in out and str(tmp_path / "cache") in out
        missing = run_cli("download", "org/nothing", "--cache-dir", str(tmp_path / "c2"), env=env, check=False)
    assert missing.returncode == 1 and "'org/nothing' does not exist" in missing.stderr


@pytest.mark.parametrize("command", [[], ["list"], ["download"]])
def test_help_everywhere(command):
    out = run_cli(*command, "--help").stdout
    assert out.startswith("usage: learned-optim")


def test_bad_input_is_a_message_not_a_traceback(tmp_path):
    config = tmp_path / "bad.json"
    config.write_text('{"horizon": 100}')
    result = run_cli("meta-train", str(config), "--run-dir", str(tmp_path / "run"), check=False)
    assert result.returncode == 1 and "unknown keys ['horizon']" in result.stderr and "Traceback" not in result.stderr
    missing = run_cli("meta-train", str(tmp_path / "nope.json"), check=False)
    assert missing.returncode == 1 and "nope.json" in missing.stderr
    unknown = run_cli("diagnose", "--task", "cifar-vit", "--steps", "1", check=False)
    assert unknown.returncode == 1 and "unknown task 'cifar-vit'" in unknown.stderr

"""The developer tools under tools/ (run as ``python -m tools.<name>``; not in the wheel)."""

import json
import subprocess
import sys

import pytest


def test_meta_speed_script_records_the_machine_speed_beside_its_timings(tmp_path):
    out = tmp_path / "meta-speed.json"
    command = ["-m", "tools.meta_speed", "--architecture", "symbolic", "--unrolls", "2", "--repeats", "1"]
    result = subprocess.run([sys.executable, *command, "--json", str(out)], capture_output=True, text=True, check=True)
    assert result.stdout.count("machine now: ") == 2 and "| 2 |" in result.stdout
    assert "LSTM-shaped product just before each epoch: " in result.stdout and "single trajectories: " in result.stdout
    record = json.loads(out.read_text())
    step_row, epoch_row = record["rows"]
    assert step_row["unroll"] == 2 and step_row["seconds_per_meta_step"] > 0
    assert 0 < epoch_row["lstm_matmul_gflops_before"] < float("inf")
    trajectories = epoch_row["trajectory_seconds"]
    assert len(trajectories) == 20 and epoch_row["meta_epoch_seconds"] == pytest.approx(sum(trajectories), rel=1e-3)
    for speed in (record["machine_speed_before"], record["machine_speed_after"]):
        assert set(speed) == {"square_matmul_gflops", "lstm_matmul_gflops", "add_gbytes_per_second"}
        assert all(0 < value < float("inf") for value in speed.values())
    assert record["environment"]["commit"]
    refused = subprocess.run([sys.executable, *command, "--epochs", "0"], capture_output=True, text=True)
    assert refused.returncode == 2 and "--epochs must be at least 1" in refused.stderr
    nowhere = tmp_path / "missing" / "meta-speed.json"
    refused = subprocess.run([sys.executable, *command, "--json", str(nowhere)], capture_output=True, text=True)
    assert refused.returncode == 2 and "does not exist" in refused.stderr and "machine now" not in refused.stdout


def test_meta_speed_plot_draws_each_timed_epoch_and_skips_records_without_trajectory_times(tmp_path):
    from tools.meta_speed_plot import timed_epochs

    epoch = {"meta_epoch_seconds": 3.0, "lstm_matmul_gflops_before": 130.0, "trajectory_seconds": [1.0, 2.0]}
    new = {"environment": {"commit": "abc1234"}, "rows": [{"unroll": 20, "seconds_per_meta_step": 0.2}, epoch]}
    old = {"rows": [{"meta_epoch_seconds": 24.3}]}  # written before epochs were timed trajectory by trajectory
    assert timed_epochs(new) == [epoch] and timed_epochs(old) == []
    (tmp_path / "new.json").write_text(json.dumps(new))
    (tmp_path / "old.json").write_text(json.dumps(old))
    out = tmp_path / "epochs.png"
    command = [sys.executable, "-m", "tools.meta_speed_plot"]
    result = subprocess.run(
        [*command, str(tmp_path / "old.json"), str(tmp_path / "new.json"), "--out", str(out)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "old.json: no meta-epochs" in result.stdout and "new.json: 3.0 s (trajectories 1.00–2.00 s)" in result.stdout
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    refused = subprocess.run([*command, str(tmp_path / "old.json"), "--out", str(out)], capture_output=True, text=True)
    assert refused.returncode == 2 and "none of the records" in refused.stderr


def _l2o_cell(name: str, steps: int, loss: float, report: list[int]) -> tuple[str, dict]:
    losses = [loss] * 20
    eval_loss = {str(r): losses for r in report}
    cell = {"lr": 1.0, "seconds": 1.0, "train_loss_curve": [loss] * steps, "eval_loss": eval_loss}
    return f"{name}@1/seeds=20/steps={steps}", cell


def test_hamiltonian_targets_read_the_l2o_results(tmp_path, monkeypatch):
    from tools import hamiltonian_targets

    for task, steps, report, learned_loss in (
        ("mnist-mlp", 2000, [100, 1000, 2000], 0.2),  # beats Adam's 0.3
        ("mnist-mlp-relu", 1000, [100, 1000], 0.34),  # 13% worse than Adam
    ):
        cells = dict(_l2o_cell(name, steps, loss, report) for name, loss in (("adam", 0.3), ("ham", learned_loss)))
        (tmp_path / f"l2o-{task}.json").write_text(json.dumps({"meta": {}, "cells": cells}))
    monkeypatch.setattr(hamiltonian_targets, "RESULTS", tmp_path)
    lines = hamiltonian_targets.quality("ham")
    statuses = {line.split(" | ")[0].removeprefix("| ham "): line.rsplit(" | ", 1)[1] for line in lines}
    assert statuses == {
        "mnist-mlp t=100": "met |",
        "mnist-mlp t=1000": "met |",
        "mnist-mlp t=2000": "met |",
        "mnist-mlp-relu t=100": "**not met** |",
        "mnist-mlp-relu t=1000": "**not met** |",
    }
    assert "missing" in hamiltonian_targets.quality("unmeasured")[0]


def test_distill_ceiling_tells_informative_inputs_from_useless_ones():
    pytest.importorskip("sklearn")
    from learned_optim.meta import distill
    from tools.distill_ceiling import ceiling

    dataset = distill.record_synthetic(lambda g, state: (0.5 * g, state), coordinates=200, steps=10)
    heldout = dataset.heldout_mask(0.25).numpy()
    assert ceiling(dataset, ("g",), heldout) > 0.99
    assert ceiling(dataset, ("inv_step",), heldout) < 0.1


def test_roofline_bounds_each_step_by_its_slower_resource():
    from tools import roofline

    speed = {"square_matmul_gflops": 100.0, "add_gbytes_per_second": 10.0}
    rows = {row["step"]: row for row in roofline.bounds(10 * 1024 * 1024, speed)}
    adam, celo2 = rows["Adam"], rows["Celo2 (learned path + Newton–Schulz)"]
    assert adam["bound_seconds"] == adam["memory_seconds"] == 28 * 10 * 1024 * 1024 / 10e9  # streams
    assert celo2["bound_seconds"] == celo2["compute_seconds"] > 30 * 1024 * 10 * 1024 * 1024 / 100e9  # computes
    assert rows["Celo2 learned path (celo2-base)"]["bound_seconds"] < celo2["bound_seconds"]


def test_adam_validation_scores_the_builtin_adam_rule_on_the_recipes_instances(tmp_path):
    from learned_optim.meta.trainer import MetaTrainConfig, MetaTrainer
    from learned_optim.optimizers.symbolic import BUILTIN_RULES
    from tools.adam_validation import adam_score

    recipe = {"architecture": "hamiltonian", "task": "small-tasks", "horizons": [20], "unroll": 10}
    recipe |= {"validation_trajectories": 1, "validation_horizon": 20, "validation_score": "final"}
    builtin = MetaTrainConfig.from_dict(
        recipe | {"architecture": "symbolic", "optimizer_config": BUILTIN_RULES["adam"]}
    )
    expected = MetaTrainer(builtin, tmp_path).validate()
    assert adam_score(recipe, 1e-3) == pytest.approx(expected, rel=1e-6)
    assert adam_score(recipe, 3e-2) != pytest.approx(expected, rel=1e-3)

"""Benchmark machinery: stacked multi-seed runs equal separate runs; overhead rows are well formed."""

import argparse
import json
import subprocess
import sys

import pytest
import torch

from benchmarks.l2o_eval import run_cell, update_card


@pytest.mark.parametrize("optimizer", ["adam", "sgd-momentum", "celo2"])  # celo2: one optimizer per seed
def test_stacked_seeds_are_independent_runs(optimizer):
    together = run_cell("mnist-mlp", optimizer, 0.01, seeds=3, steps=20, report=[20])
    alone = run_cell("mnist-mlp", optimizer, 0.01, seeds=1, steps=20, report=[20])
    # vmap batches the matrix products, so only the last bits may differ.
    torch.testing.assert_close(together["eval_loss"]["20"][0], alone["eval_loss"]["20"][0], rtol=1e-4, atol=1e-5)
    assert together["eval_loss"]["20"][1] != together["eval_loss"]["20"][0]


def test_learned_optimizer_cell_and_divergence(tmp_path, monkeypatch):
    import learned_optim as lo

    lo.RNNprop([torch.nn.Parameter(torch.zeros(1))]).save_pretrained(tmp_path / "fresh-rnnprop")
    monkeypatch.setenv("LEARNED_OPTIM_WEIGHTS", str(tmp_path))
    cell = run_cell("mnist-mlp", "fresh-rnnprop", 1.0, seeds=2, steps=5, report=[5])
    assert len(cell["eval_loss"]["5"]) == 2 and len(cell["train_loss_curve"]) == 5
    diverged = run_cell("mnist-mlp", "sgd-momentum", 1e38, seeds=2, steps=30, report=[30])
    assert diverged["mean_train_loss"] == float("inf")


def test_l2o_eval_evaluates_new_weights_again(tmp_path, monkeypatch):
    """Cells are cached by name; a learned optimizer's only while its weights file is the same."""
    import learned_optim as lo
    from benchmarks import l2o_eval

    monkeypatch.setenv("LEARNED_OPTIM_WEIGHTS", str(tmp_path))
    out = tmp_path / "results.json"
    runs = []
    monkeypatch.setattr(l2o_eval, "run_cell", lambda *args: runs.append(args) or run_cell(*args))
    argv = ["l2o_eval", "--weights", "candidate", "--baselines", "--seeds", "1", "--steps", "3", "--report", "3"]

    def evaluate(seed: int) -> dict:
        theta = lo.RNNprop.init_theta(lo.RNNprop.Config(), torch.Generator().manual_seed(seed))
        lo.RNNprop([torch.nn.Parameter(torch.zeros(1))], theta=theta).save_pretrained(tmp_path / "candidate")
        monkeypatch.setattr(sys, "argv", [*argv, "--out", str(out)])
        l2o_eval.main()
        return json.loads(out.read_text())["cells"]["candidate@1/seeds=1/steps=3"]

    first = evaluate(seed=0)
    assert evaluate(seed=0) == first and len(runs) == 1  # same weights: cached
    second = evaluate(seed=1)
    assert len(runs) == 2
    assert second["weights_sha256"] != first["weights_sha256"]
    assert second["eval_loss"] != first["eval_loss"]


def test_model_card_update_keeps_section_order_and_names_the_cells_own_commit_and_machine(tmp_path):
    weights = tmp_path / "my-weights"
    weights.mkdir()
    (weights / "config.json").write_text("{}")
    card = "# card\n\n## Evaluation\n\n### task-a\n\nold a\n\n### task-b\n\nold b\n\n## Recipe\n\nrecipe\n"
    (weights / "README.md").write_text(card)
    name = str(weights)
    cell = {"lr": 1.0, "seconds": 2.0, "train_loss_curve": [1.0, 0.9, 0.8], "eval_loss": {"3": [0.5, 0.7]}}
    results = {
        "meta": {"commit": "file-commit", "machine": "file-machine", "threads": 2},
        "cells": {
            f"{name}@1/seeds=2/steps=3": cell | {"commit": "cell-commit", "machine": "cell-machine"},
            "adam@1/seeds=2/steps=3": cell,
        },
    }
    args = argparse.Namespace(task="task-a", seeds=2, steps=3, baselines=["adam"], weights=[name], lr_grid=[1.0])
    update_card(name, results, args, [3], "NEW TABLE")
    updated = (weights / "README.md").read_text()
    assert updated.index("### task-a") < updated.index("NEW TABLE") < updated.index("### task-b")
    assert "old a" not in updated and "old b" in updated and updated.endswith("## Recipe\n\nrecipe\n")
    assert "at commit cell-commit (cell-machine, 2 threads)" in updated
    metrics = json.loads((weights / "config.json").read_text())["metrics"]["task-a"]
    assert (metrics["commit"], metrics["machine"]) == ("cell-commit", "cell-machine")
    assert metrics["results"][name]["loss@3"]["value"] == "0.600 ± 0.141"


def test_overhead_script_prints_a_table_and_json(tmp_path):
    out = tmp_path / "overhead.json"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.overhead",
            "--sizes",
            "1e5",
            "--steps",
            "1",
            "--optimizers",
            "adam,rnnprop",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "| rnnprop | 1,048,576 |" in result.stdout
    rows = json.loads(out.read_text())["rows"]
    assert {r["optimizer"] for r in rows} == {"adam", "rnnprop"}
    assert rows[1]["state_words_per_parameter"] == pytest.approx(82.0, abs=0.01)  # + one step counter


def test_meta_speed_script_records_the_machine_speed_beside_its_timings(tmp_path):
    out = tmp_path / "meta-speed.json"
    command = ["-m", "benchmarks.meta_speed", "--architecture", "symbolic", "--unrolls", "2", "--repeats", "1"]
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
    from benchmarks.meta_speed_plot import timed_epochs

    epoch = {"meta_epoch_seconds": 3.0, "lstm_matmul_gflops_before": 130.0, "trajectory_seconds": [1.0, 2.0]}
    new = {"environment": {"commit": "abc1234"}, "rows": [{"unroll": 20, "seconds_per_meta_step": 0.2}, epoch]}
    old = {"rows": [{"meta_epoch_seconds": 24.3}]}  # written before epochs were timed trajectory by trajectory
    assert timed_epochs(new) == [epoch] and timed_epochs(old) == []
    (tmp_path / "new.json").write_text(json.dumps(new))
    (tmp_path / "old.json").write_text(json.dumps(old))
    out = tmp_path / "epochs.png"
    command = [sys.executable, "-m", "benchmarks.meta_speed_plot"]
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


def test_make_optimizer_fused_suffix():
    from learned_optim.factory import make_optimizer

    params = [torch.nn.Parameter(torch.ones(3))]
    fused, eager = make_optimizer("symbolic+fused@0.5", params), make_optimizer("symbolic", params)
    assert (fused.defaults["fused"], fused.defaults["lr"], eager.defaults["fused"]) == (True, 0.5, False)
    assert fused.chunk_size > eager.chunk_size  # a fused step keeps no temporaries
    assert make_optimizer("adam-fused", params).defaults["fused"] is True
    with pytest.raises(ValueError, match="adam-fused"):
        make_optimizer("adam+fused", params)


def _l2o_cell(name: str, steps: int, loss: float, report: list[int]) -> tuple[str, dict]:
    losses = [loss] * 20
    eval_loss = {str(r): losses for r in report}
    cell = {"lr": 1.0, "seconds": 1.0, "train_loss_curve": [loss] * steps, "eval_loss": eval_loss}
    return f"{name}@1/seeds=20/steps={steps}", cell


def test_hamiltonian_targets_read_the_l2o_results(tmp_path, monkeypatch):
    from benchmarks import hamiltonian_targets

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


def test_quadratic_eval_reports_f_per_seed_and_step():
    from benchmarks.quadratic_eval import final_losses

    losses = final_losses("adam", 0.1, seeds=2, steps=[5, 50])
    assert [len(v) for v in losses.values()] == [2, 2]
    assert losses[5][0] != losses[5][1]  # two different task instances
    assert all(late < early for early, late in zip(losses[5], losses[50], strict=True))


def test_distill_ceiling_tells_informative_inputs_from_useless_ones():
    pytest.importorskip("sklearn")
    from benchmarks.distill_ceiling import ceiling
    from learned_optim.meta import distill

    dataset = distill.record_synthetic(lambda g, state: (0.5 * g, state), coordinates=200, steps=10)
    heldout = dataset.heldout_mask(0.25).numpy()
    assert ceiling(dataset, ("g",), heldout) > 0.99
    assert ceiling(dataset, ("inv_step",), heldout) < 0.1

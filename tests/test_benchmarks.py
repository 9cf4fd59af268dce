"""Benchmark machinery: stacked multi-seed runs equal separate runs; overhead rows are well formed."""

import argparse
import json
import math
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


def test_make_optimizer_fused_suffix():
    from learned_optim.factory import make_optimizer

    params = [torch.nn.Parameter(torch.ones(3))]
    fused, eager = make_optimizer("symbolic+fused@0.5", params), make_optimizer("symbolic", params)
    assert (fused.defaults["fused"], fused.defaults["lr"], eager.defaults["fused"]) == (True, 0.5, False)
    assert fused.chunk_size > eager.chunk_size  # a fused step keeps no temporaries
    assert make_optimizer("adam-fused", params).defaults["fused"] is True
    with pytest.raises(ValueError, match="adam-fused"):
        make_optimizer("adam+fused", params)


def test_quadratic_eval_reports_f_per_seed_and_step():
    from benchmarks.quadratic_eval import final_losses

    losses = final_losses("adam", 0.1, seeds=2, steps=[5, 50])
    assert [len(v) for v in losses.values()] == [2, 2]
    assert losses[5][0] != losses[5][1]  # two different task instances
    assert all(late < early for early, late in zip(losses[5], losses[50], strict=True))


def test_the_one_tuning_rule_picks_the_lowest_mean_and_never_a_diverged_rate():
    from benchmarks.tuning import at_grid_edge, best

    scores = {0.1: [1.0, math.inf], 0.03: [0.5, 0.7], 0.01: [0.6, 0.6], 0.003: [0.6, 0.6]}
    assert best(scores, scores.get) == 0.03
    del scores[0.03]
    assert best(scores, scores.get) == 0.01  # equal means: the first offered
    assert best({1.0: [math.inf]}, {1.0: [math.inf]}.get) == 1.0  # everything diverged: still an answer
    assert best({}, {}.get) is None
    assert at_grid_edge(0.1, (0.1, 0.03, 0.01)) and at_grid_edge(0.01, (0.1, 0.03, 0.01))
    assert not at_grid_edge(0.03, (0.1, 0.03, 0.01))


def test_a_learned_optimizer_without_an_lr_gets_its_own_default():
    from learned_optim.factory import default_lr

    assert default_lr("celo2") == 1e-3 and default_lr("rnnprop-mnist") == 1.0 and default_lr("adam") == 1e-3
    assert default_lr("sgd-momentum@0.3") == 0.3


def test_a_fused_learned_optimizer_is_cached_under_its_weights():
    from benchmarks.runner import weights_digest

    assert weights_digest("hamiltonian-mnist+fused") == weights_digest("hamiltonian-mnist") is not None
    assert weights_digest("celo2+fused") is None

"""The benchmark suites end to end on a tiny budget: schema, resume, verdicts, the command line."""

import json
import math
import subprocess
import sys

import pytest
import torch

from benchmarks import peak_memory, report, suites
from benchmarks.cli import main as bench_main
from benchmarks.runner import CellSpec, run_cell

TINY = {"steps": 6, "report": [3, 6], "seeds": 2, "tuning_seeds": 1}
CELL_KEYS = {
    "task": str,
    "optimizer": str,
    "lr": float,
    "seeds": list,
    "steps": int,
    "report": list,
    "metrics": list,
    "fit_split": str,
    "phase": str,
    "seconds": float,
    "step_seconds": float,
    "state_bytes_per_run": int,
    "parameters_per_run": int,
    "peak_bytes": int,
    "diverged_at": list,
    "train_loss_curve": list,
    "smoothed_curve": dict,
    "at": dict,
}


def tiny_suite(**grids):
    suite = suites.with_overrides(suites.SUITES["mnist"], **TINY)
    return suites.Suite(suite.name, suite.description, suite.plans, grids or {"sgd": (0.3, 0.1), "adam": (0.01,)})


def test_cnn_with_batchnorm_seeds_are_independent_runs():
    """Running statistics are per seed: seed 1 trained beside seed 0 equals seed 1 trained alone."""
    # A small, stable rate: batched convolutions differ from single ones in the last bits, and an
    # unstable run would amplify that into visible differences within a few steps.
    together = run_cell(CellSpec("mnist-cnn-bn", "sgd", 0.01, (0, 1), 3, (3,)))
    alone = run_cell(CellSpec("mnist-cnn-bn", "sgd", 0.01, (1,), 3, (3,)))
    for metric in ("train_loss", "test_loss", "test_accuracy"):
        torch.testing.assert_close(together["at"]["3"][metric][1], alone["at"]["3"][metric][0], rtol=1e-5, atol=1e-5)
    assert together["at"]["3"]["test_loss"][0] != together["at"]["3"]["test_loss"][1]


def test_cell_spec_refuses_bad_input():
    with pytest.raises(ValueError, match="report steps"):
        CellSpec("mnist-mlp", "adam", 0.01, (0,), 5, (6,))
    with pytest.raises(ValueError, match="unknown metrics"):
        CellSpec("mnist-mlp", "adam", 0.01, (0,), 5, (5,), metrics=("accuracy",))
    with pytest.raises(ValueError, match="classifier"):
        run_cell(CellSpec("quadratic", "adam", 0.01, (0,), 2, (2,)))


def test_suite_writes_schema_tables_and_plot_then_resumes_without_recomputing(tmp_path, monkeypatch):
    suite = tiny_suite()
    results = suite_results = suites.run_suite(suite, tmp_path, optimizers=["hamiltonian-mnist"], progress=False)
    written = report.write_reports(results.data, tmp_path)
    results.write()
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["schema"] == suites.SCHEMA
    assert set(data["environment"]) == {"commit", "torch", "python", "machine", "device", "threads"}
    assert data["learned"] == ["hamiltonian-mnist"] and data["baselines"] == ["sgd", "adam"]
    tune = [c for c in data["cells"].values() if c["phase"] == "tune"]
    final = [c for c in data["cells"].values() if c["phase"] == "final"]
    assert len(tune) == 3 and {c["optimizer"] for c in final} == {"sgd", "adam", "hamiltonian-mnist"}
    for cell in data["cells"].values():
        for key, kind in CELL_KEYS.items():
            assert isinstance(cell[key], kind), (key, cell[key])
        assert len(cell["train_loss_curve"]) == TINY["steps"]
        assert set(cell["at"]) == {"3", "6"}
    for cell in final:
        assert set(cell["at"]["6"]) == {"train_loss", "validation_loss", "test_loss", "test_accuracy"}
        assert all(0 <= a <= 1 for a in cell["at"]["6"]["test_accuracy"]) and len(cell["seeds"]) == 2
        assert cell["seeds"][0] == suites.FINAL_FIRST_SEED
    learned = next(c for c in final if c["optimizer"] == "hamiltonian-mnist")
    assert learned["weights_sha256"] == suites.weights_digest("hamiltonian-mnist") and learned["lr"] == 1.0
    summary = data["summary"]["mnist-mlp"]["optimizers"]
    assert summary["hamiltonian-mnist"]["6"]["vs_adam"] in {"better", "worse", "tie"}
    best = min(("sgd", "adam"), key=lambda b: summary[b]["6"]["train_loss"]["mean"])
    assert summary["hamiltonian-mnist"]["6"]["best_baseline"] == best
    assert summary["hamiltonian-mnist"]["6"]["vs_best_baseline"] in {"better", "worse", "tie"}
    assert "best_baseline" not in summary["adam"]["6"]  # baselines are not judged
    assert data["recommendations"] == {"hamiltonian-mnist": "study object"}
    assert summary["sgd"]["6"]["lr"] in (0.3, 0.1)
    markdown = (tmp_path / "results.md").read_text()
    assert "| hamiltonian-mnist (study object) |" in markdown and "train loss t=6" in markdown
    assert "## Learned optimizers against the best tuned baseline" in markdown and f"vs {best} " in markdown
    assert written[1].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    def must_not_run(*args, **kwargs):
        raise AssertionError("a finished cell was recomputed")

    monkeypatch.setattr(suites, "run_cell", must_not_run)
    again = suites.run_suite(suite, tmp_path, optimizers=["hamiltonian-mnist"], progress=False)
    assert again.cells.keys() == suite_results.cells.keys()
    # A changed specification is not served from the cache.
    with pytest.raises(AssertionError, match="recomputed"):
        suites.run_suite(tiny_suite(sgd=(0.3, 0.03)), tmp_path, optimizers=[], progress=False)


def test_changed_weights_invalidate_the_learned_cells(tmp_path, monkeypatch):
    import learned_optim as lo

    weights = tmp_path / "weights"
    lo.RNNprop([torch.nn.Parameter(torch.zeros(1))]).save_pretrained(weights / "fresh")
    monkeypatch.setenv("LEARNED_OPTIM_WEIGHTS", str(weights))
    suite = tiny_suite(adam=(0.01,))
    suites.run_suite(suite, tmp_path / "out", optimizers=["fresh"], progress=False)
    lo.RNNprop([torch.nn.Parameter(torch.zeros(1))], seed=1).save_pretrained(weights / "fresh")
    calls = []
    monkeypatch.setattr(suites, "run_cell", lambda spec, **kw: calls.append(spec.optimizer) or run_cell(spec))
    suites.run_suite(suite, tmp_path / "out", optimizers=["fresh"], progress=False)
    assert calls == ["fresh"]


def test_a_foreign_results_file_is_refused_and_kept(tmp_path):
    (tmp_path / "results.json").write_text('{"schema": "something-else/9", "cells": {}}')
    with pytest.raises(ValueError, match="schema"):
        suites.run_suite(tiny_suite(), tmp_path, optimizers=[], progress=False)
    assert "something-else" in (tmp_path / "results.json").read_text()


def test_unknown_baseline_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="no learning-rate grid"):
        suites.run_suite(tiny_suite(), tmp_path, optimizers=[], baselines=["lion"], progress=False)


@pytest.mark.parametrize(
    ("candidate", "reference", "expected"),
    [
        ([0.10, 0.11, 0.12], [0.30, 0.31, 0.32], "better"),
        ([0.30, 0.31, 0.32], [0.10, 0.11, 0.12], "worse"),
        ([0.10, 0.30, 0.20], [0.15, 0.25, 0.20], "tie"),
        ([math.inf, 0.1, 0.1], [0.2, 0.2, 0.2], "worse"),
        ([0.2, 0.2, 0.2], [math.inf, 0.1, 0.1], "better"),
    ],
)
def test_verdict_uses_two_standard_errors(candidate, reference, expected):
    assert report.verdict(candidate, reference) == expected


def test_best_baseline_is_the_lowest_training_loss_at_that_step():
    def figures(loss):
        return {"train_loss": {"mean": loss}}

    rows = {"sgd": {"100": figures(0.2), "300": figures(0.5)}, "adam": {"100": figures(0.3), "300": figures(0.4)}}
    assert report.best_baseline(rows, ["sgd", "adam"], "100") == "sgd"
    assert report.best_baseline(rows, ["sgd", "adam"], "300") == "adam"
    assert report.best_baseline(rows, ["sgd-momentum"], "100") is None


def test_suites_choose_recommended_generalists_or_every_weights_file():
    every = suites.learned_optimizers("every")
    recommended = suites.learned_optimizers("recommended")
    generalists = suites.learned_optimizers("generalists")
    assert set(recommended) < set(generalists) < set(every)
    assert "celo2-small-tasks" in recommended and "rnnprop-mnist" not in recommended
    assert {"celo2-general", "hamiltonian-general"} <= set(generalists) - set(recommended)
    study_objects = {"hamiltonian-quadratic", "symbolic-lstm-mnist", "rnnprop-mnist", "celo2-published"}
    assert study_objects <= set(every) - set(generalists)
    assert suites.default_optimizers() == [*recommended, "celo2-published"]  # the field's reference beside ours
    assert suites.default_optimizers("generalists") == [*generalists, "celo2-published"]
    assert all(suites.SUITES[name].learned == "every" for name in ("mnist", "transfer"))
    assert all(suites.SUITES[name].learned == "recommended" for name in ("resnet50", "resnet50-gpu"))
    assert suites.default_optimizers("every") == every  # the reference is among them once
    with pytest.raises(ValueError, match="'every', 'generalists', 'recommended'"):
        suites.learned_optimizers("best")


def test_bench_help_shows_the_schema_it_writes(capsys):
    with pytest.raises(SystemExit):
        bench_main(["--help"])
    shown = capsys.readouterr().out
    assert suites.SCHEMA in shown and "vs_best_baseline" in shown and "recommendations" in shown


def test_overrides_keep_the_final_step_reported():
    suite = suites.with_overrides(suites.SUITES["mnist"], steps=1500)
    assert suite.plans[0].report == (100, 1000, 1500)
    suite = suites.with_overrides(suites.SUITES["transfer"], tasks=["mnist-cnn-bn", "fashion-resnet50"], seeds=1)
    assert [p.task for p in suite.plans] == ["mnist-cnn-bn", "fashion-resnet50"]
    assert all(p.seeds == 1 for p in suite.plans)


def test_command_line_runs_a_suite_and_prints_its_table(tmp_path, capsys):
    argv = ["mnist", "--out", str(tmp_path), "--steps", "4", "--report", "4", "--seeds", "1", "--tuning-seeds", "1"]
    assert bench_main([*argv, "--baselines", "adam", "--optimizers", "rnnprop-mnist", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "| rnnprop-mnist (study object) | 1 |" in printed and "| adam |" in printed
    assert json.loads((tmp_path / "results.json").read_text())["command"].startswith("learned-optim bench mnist")


def test_quick_runs_its_loops_and_ends_with_one_line_per_learned_optimizer(tmp_path, capsys):
    from benchmarks.quick_suite import LOOPS

    argv = ["quick", "--out", str(tmp_path), "--steps", "3", "--seeds", "1", "--tuning-seeds", "1"]
    assert bench_main([*argv, "--optimizers", "hamiltonian-mnist", "celo2-published", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["suite"] == "quick" and [p["loop"] for p in data["loops"]] == list(LOOPS)
    assert {c["schedule"] for c in data["cells"].values()} == {"constant"}  # no cosine runs in quick
    last_lines = printed.rstrip().splitlines()[-2:]
    for name, line in zip(
        ("hamiltonian-mnist (study object)", "celo2-published (study object)"), last_lines, strict=True
    ):
        assert line.strip().startswith(f"{name}: ") and "beats Adam at 1e-3 on" in line
        named = [loop for loop in LOOPS if loop in line]
        assert named == list(LOOPS), line  # each loop gets its verdict
        assert any(word in line for word in ("better on", "within 5% on", "worse on", "diverged on"))
    markdown = (tmp_path / "results.md").read_text()
    assert "## In one line" in markdown and "## Against the best tuned baseline" in markdown


def test_peak_memory_is_shown_only_where_it_measures_the_optimizer(monkeypatch):
    def cell(optimizer, parameters):
        at = {"train_loss": [1.0], "test_accuracy": [0.5]}
        return {
            "phase": "final", "task": "t", "optimizer": optimizer, "lr": 0.1, "at": {"10": at}, "diverged_at": [None],
            "seeds": [0], "steps": 10,
            "step_seconds": 0.01, "state_bytes_per_run": 8, "parameters_per_run": parameters,
            "peak_bytes": 2_000_000 if optimizer == "sgd" else 1_000_000,
        }  # fmt: skip

    def table(parameters):
        data = {
            "plans": [{"task": "t", "steps": 10, "report": [10], "seeds": 1, "tuning_seeds": 1}],
            "baselines": ["adam"], "grids": {"adam": [0.1]}, "learned": ["sgd"], "learned_lrs": {"sgd": 0.1},
            "cells": {"a": cell("adam", parameters), "b": cell("sgd", parameters)},
        }  # fmt: skip
        tuning = {**cell("adam", parameters), "phase": "tune", "at": {"10": {"validation_loss": [1.0]}}}
        data["cells"]["tune/t/adam@0.1"] = tuning
        summary = report.summarize(data)
        return report.task_table("t", summary["t"], data)

    sgd_row = next(line for line in table(16_000).splitlines() if line.startswith("| sgd |"))
    assert sgd_row.endswith("| — |")  # a 16k-parameter model: allocator noise, not shown
    large = table(report.PEAK_MEMORY_MIN_PARAMETERS)
    sgd_row = next(line for line in large.splitlines() if line.startswith("| sgd |"))
    assert sgd_row.endswith("| 2.00× |")


def test_resnet50_parameter_set_has_resnet50_shapes():
    from benchmarks.overhead import parameter_shapes

    shapes = parameter_shapes("resnet50")
    assert len(shapes) == 161 and sum(math.prod(s) for s in shapes) == 25_557_032


def test_bench_does_not_import_the_meta_trainer():
    code = "import sys, benchmarks.cli; print(sorted(m for m in sys.modules if m.startswith('learned_optim.meta.')))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "learned_optim.meta.tasks" in loaded  # the tasks it trains on
    assert "trainer" not in loaded and "export" not in loaded and "distill" not in loaded


def test_cells_cached_before_the_evaluation_sizes_existed_are_still_reused(tmp_path):
    from dataclasses import asdict

    spec = CellSpec("mnist-mlp", "adam", 0.001, (0,), 3, (3,))
    old_cell = {k: v for k, v in asdict(spec).items() if k not in ("eval_examples", "test_examples")}
    results = suites.Results(tmp_path / "results.json")
    results.cells["key"] = old_cell | {"weights_sha256": None}
    assert results.cached("key", spec, None) is not None
    assert results.cached("key", CellSpec("mnist-mlp", "adam", 0.001, (0,), 3, (3,), eval_examples=64), None) is None


def test_a_learned_optimizer_runs_and_is_reported_at_its_own_default_lr(tmp_path):
    results = suites.run_suite(tiny_suite(adam=(0.01,)), tmp_path, optimizers=["celo2"], progress=False)
    assert results.data["learned_lrs"] == {"celo2": 1e-3}
    summary = report.summarize(results.data)
    reported = summary["mnist-mlp"]["optimizers"]["celo2"]
    assert set(reported) == {"3", "6"} and all(figures["lr"] == 1e-3 for figures in reported.values())


def test_the_report_says_what_losses_and_accuracy_were_measured_on():
    def plans(*fields):
        plan = {"task": "t", "steps": 10, "report": [10], "seeds": 1, "tuning_seeds": 1}
        return {"plans": [{**plan, **f} for f in fields]}

    sampled = report.evaluation_samples(plans({"eval_examples": 1024, "test_examples": 2000}))
    assert "1,024 examples" in sampled and "2,000 fixed test examples" in sampled
    assert "whole test split" in report.evaluation_samples(plans({}))
    assert "in the task's plan" in report.evaluation_samples(plans({"test_examples": 100}, {"test_examples": 200}))


def test_runs_cached_without_peak_memory_get_it_measured_afresh(tmp_path):
    results = suites.run_suite(tiny_suite(), tmp_path, optimizers=[], progress=False)
    finals = {k for k, c in results.cells.items() if c["phase"] == "final"}
    for key in finals:
        del results.cells[key]["peak_bytes"]  # as a run cached before peak memory was recorded
    results.write()
    measured = peak_memory.fill(tmp_path, steps=2, device="cpu", threads=1, command="the test", progress=False)
    assert sorted(measured) == sorted(finals)
    data = json.loads((tmp_path / "results.json").read_text())
    for key, cell in data["cells"].items():
        if key in finals:
            parameter_bytes = 4 * cell["parameters_per_run"] * len(cell["seeds"])
            assert cell["peak_bytes"] >= parameter_bytes
            assert cell["peak_bytes_measured"]["steps"] == 2
            assert cell["peak_bytes_measured"]["command"] == "the test"
        else:
            assert "peak_bytes_measured" not in cell  # tuning runs keep their own figure
    markdown = (tmp_path / "results.md").read_text()
    assert "peak memory ÷ Adam" in markdown and "measured afterwards in fresh processes" in markdown
    adam_row = next(line for line in markdown.splitlines() if line.startswith("| adam |"))
    assert adam_row.endswith("| — |")  # the MNIST MLP is below PEAK_MEMORY_MIN_PARAMETERS
    assert peak_memory.fill(tmp_path, steps=2, device="cpu", threads=1, command="again", progress=False) == []


def test_two_processes_filling_one_results_file_keep_each_others_cells(tmp_path):
    first, second = suites.Results(tmp_path / "results.json"), suites.Results(tmp_path / "results.json")
    first.cells["tune/a"] = {"lr": 1.0}
    first.write()
    second.cells["tune/b"] = {"lr": 2.0}
    second.write()
    first.cells["final/a"] = {"lr": 3.0}
    first.write()
    on_disk = json.loads((tmp_path / "results.json").read_text())["cells"]
    assert on_disk == {"tune/a": {"lr": 1.0}, "tune/b": {"lr": 2.0}, "final/a": {"lr": 3.0}}

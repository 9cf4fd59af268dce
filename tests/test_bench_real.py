"""The ``real`` suite at a tiny budget: end to end, resume, divergence, and the verdict logic on made-up cells."""

import json
import math
from pathlib import Path

import pytest
import torch

import learned_optim as lo
from benchmarks import real_suite, real_training
from benchmarks.cli import main as bench_main
from benchmarks.real_loops import LOOPS
from benchmarks.real_report import write_real_reports
from benchmarks.real_training import RealCellSpec, run_real_cell

TINY_GRIDS = {"adam": (0.01, 0.001), "sgd-momentum": (0.1,)}
CHEAP_LOOPS = ["mnist-logistic", "text-transformer"]


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def run_tiny(out, **overrides):
    options = {"optimizers": ["hamiltonian-mnist"], "loops": CHEAP_LOOPS, "steps": 4, "seeds": 1}
    return real_suite.run_real_suite(out, **(options | overrides), progress=False, grids=TINY_GRIDS)


def test_suite_runs_writes_reports_and_resumes_without_rerunning(tmp_path, monkeypatch):
    calls = []
    original = real_suite.run_real_cell
    monkeypatch.setattr(
        real_suite, "run_real_cell", lambda spec, *a, **k: calls.append(spec) or original(spec, *a, **k)
    )
    results = run_tiny(tmp_path)
    paths = write_real_reports(results.data, tmp_path)
    results.write()
    # Per loop: 3 tuning cells, then the finals under both schedules.
    tuning = [spec for spec in calls if not spec.evaluate_test]
    assert len(tuning) == 3 * len(CHEAP_LOOPS)
    finals = [spec for spec in calls if spec.evaluate_test]
    assert {spec.schedule for spec in finals} == {"constant", "cosine"}
    assert {spec.optimizer for spec in finals} == {"adam", "sgd-momentum", "hamiltonian-mnist"}

    data = json.loads((tmp_path / "results.json").read_text())
    assert data["schema"] == real_suite.SCHEMA and data["suite"] == "real"
    assert set(data["environment"]) == {"commit", "torch", "python", "machine", "device", "threads"}
    assert "CosineAnnealingLR" in data["protocol"] and [p["loop"] for p in data["loops"]] == CHEAP_LOOPS
    assert "pydoc_data" in data["loops"][1]["data"] or "LICENSE" in data["loops"][1]["data"]
    learned = next(c for c in data["cells"].values() if c["optimizer"] == "hamiltonian-mnist")
    assert learned["weights_sha256"] == real_suite.weights_digest("hamiltonian-mnist")
    assert learned["lr"] is None and learned["lr_used"] == 1.0  # its own default, untuned
    for loop in CHEAP_LOOPS:
        for schedule in ("constant", "cosine"):
            rows = data["summary"]["loops"][loop][schedule]
            assert {"adam@1e-3", "adam (tuned)", "sgd-momentum (tuned)", "hamiltonian-mnist"} <= set(rows)
            assert rows["adam@1e-3"]["optimizer_step_vs_adam_foreach"] == 1.0
            assert rows["hamiltonian-mnist"]["vs_adam"] in {"better", "worse", "tie"}
            assert isinstance(rows["hamiltonian-mnist"]["within_5_percent"], bool)
    assert data["summary"]["targets"]["hamiltonian-mnist"]["constant"]["loops"] == len(CHEAP_LOOPS)
    markdown = (tmp_path / "results.md").read_text()
    assert (
        "## Targets" in markdown
        and "### mnist-logistic" in markdown
        and "| constant | hamiltonian-mnist (study object) |" in markdown
    )
    assert paths[1].name == "real.png" and paths[1].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    calls.clear()
    run_tiny(tmp_path)
    assert calls == []  # every cell came from the cache
    run_tiny(tmp_path, steps=5, loops=["mnist-logistic"], optimizers=[])
    assert len(calls) == 3 + 2 * 3 - (2 if 0.001 in TINY_GRIDS["adam"] and _adam_tuned_to(tmp_path, 0.001) else 0)


def _adam_tuned_to(out, lr):
    data = json.loads((out / "results.json").read_text())
    return real_suite.tuned_rate(data["cells"], "mnist-logistic", "adam", TINY_GRIDS["adam"], 5) == lr


def test_an_enormous_learning_rate_and_a_nan_step_are_divergence(monkeypatch):
    data = LOOPS["mnist-logistic"].load_data()
    cell = run_real_cell(RealCellSpec("mnist-logistic", "sgd-momentum", 1e6, "constant", (0,), 20, data.source), data)
    assert cell["diverged_at"][0] is not None and cell["diverged_at"][0] <= 20
    assert cell["train_loss"] == [math.inf] and cell["test_metric"] == [0.0] and cell["curve"]["step"] == []

    class NaNStep(torch.optim.SGD):
        def step(self, closure=None):
            for group in self.param_groups:
                for p in group["params"]:
                    p.data.fill_(math.nan)

    original = real_training.build_optimizer
    monkeypatch.setattr(
        real_training,
        "build_optimizer",
        lambda name, params, lr: NaNStep(params, lr=0.1) if name == "nan" else original(name, params, lr),
    )
    cell = run_real_cell(RealCellSpec("mnist-logistic", "nan", None, "cosine", (0, 1), 5, data.source), data)
    assert cell["diverged_at"] == [2, 2]  # the first step's loss is finite; the second is NaN


def figures(losses, metric, diverged=False, optimizer="x", step_ratio=1.0):
    return {
        "optimizer": optimizer,
        "train_loss": {"mean": real_suite.mean(losses), "per_seed": losses},
        "test_metric": {"mean": real_suite.mean(metric)},
        "diverged": diverged,
        "optimizer_step_vs_adam_foreach": step_ratio,
    }


def test_verdicts_on_made_up_cells():
    adam = figures([1.0, 1.01], [0.80, 0.80], optimizer="adam")
    tuned = [
        figures([0.50, 0.51], [0.90, 0.90], optimizer="adam"),
        figures([0.40, 0.41], [0.88, 0.88], optimizer="sgd-momentum"),
    ]
    close = real_suite.judge(figures([0.41, 0.42], [0.87, 0.87], step_ratio=2.5), adam, tuned, higher_is_better=True)
    assert close["beats_adam"] and close["best_baseline"] == "sgd-momentum" and close["best_metric"] == 0.90
    assert close["within_5_percent"] and close["step_time_within_target"]
    # 10% above the best tuned loss; an accuracy 5% below the best is just outside as well.
    far = real_suite.judge(figures([0.45, 0.46], [0.85, 0.85], step_ratio=3.5), adam, tuned, higher_is_better=True)
    assert far["beats_adam"] and not far["loss_within_5_percent"] and not far["metric_within_5_percent"]
    assert not far["step_time_within_target"]
    # Lower-is-better metric (bits per char): within 5% of the lowest.
    bits = [figures([1.0, 1.0], [2.0, 2.0]), figures([1.1, 1.1], [2.2, 2.2])]
    assert real_suite.judge(figures([1.04, 1.04], [2.09, 2.09]), None, bits, higher_is_better=False)["within_5_percent"]
    assert not real_suite.judge(figures([1.04, 1.04], [2.2, 2.2]), None, bits, False)["within_5_percent"]
    worse = real_suite.judge(figures([2.0, 2.1], [0.1, 0.1]), adam, tuned, higher_is_better=True)
    assert worse["vs_adam"] == "worse" and not worse["beats_adam"]
    diverged = real_suite.judge(figures([math.inf, 0.3], [0.0, 0.9], diverged=True), adam, tuned, True)
    assert diverged["diverged"] and not diverged["beats_adam"] and not diverged["within_5_percent"]

    counts = real_suite.targets([close, close, far])
    assert counts["beats_adam"] == 3 and counts["within_5_percent"] == 2 and counts["step_time_within_target"] == 2
    assert counts["met"] == {
        "never_diverges": True,
        "beats_adam_on_every_loop": True,
        "within_5_percent_on_two_thirds": True,
        "step_time_within_target_on_every_loop": False,
    }
    assert not counts["all_met"]
    assert real_suite.targets([close, close, close])["all_met"]
    assert not real_suite.targets([close, far, worse])["met"]["within_5_percent_on_two_thirds"]
    assert not real_suite.targets([close, diverged, close])["met"]["never_diverges"]


def test_command_line_lists_and_runs_the_real_suite(tmp_path, capsys, monkeypatch):
    with pytest.raises(SystemExit):
        bench_main(["--help"])
    assert "real" in capsys.readouterr().out
    monkeypatch.setattr(real_suite, "GRIDS", {"adam": (0.001,), "sgd-momentum": (0.1,)})
    argv = [
        "real",
        "--out",
        str(tmp_path),
        "--tasks",
        "mnist-logistic",
        "--steps",
        "3",
        "--seeds",
        "1",
        "--length",
        "short",
    ]
    assert bench_main([*argv, "--optimizers", "--no-progress", "--threads", "1"]) == 0
    assert "| constant | adam@1e-3 |" in capsys.readouterr().out
    assert (tmp_path / "real.png").exists()
    with pytest.raises(ValueError, match="unknown baselines, loops or schedules"):
        real_suite.run_real_suite(tmp_path, loops=["resnet"], progress=False)


def test_model_cards_get_every_loop_row_of_their_optimizer(tmp_path, monkeypatch):
    from benchmarks.real_report import CARD_HEADINGS, update_cards
    from learned_optim import hub

    results = run_tiny(tmp_path / "results")
    write_real_reports(results.data, tmp_path / "results")
    monkeypatch.setattr(real_suite, "LONG_STEPS", 5)
    long_results = run_tiny(tmp_path / "long", steps=None, loops=["mnist-logistic"], length="long")
    write_real_reports(long_results.data, tmp_path / "long")
    card_folder = tmp_path / "hamiltonian-mnist"
    card_folder.mkdir()
    (card_folder / "README.md").write_text("# hamiltonian-mnist\n\n## Evaluation\n\n### Summary\n\nkept\n")
    monkeypatch.setattr(hub, "resolve", lambda name, **options: card_folder)
    assert update_cards(results.data, results.data["summary"]) == [card_folder / "README.md"]
    card = (card_folder / "README.md").read_text()
    assert "### Summary\n\nkept" in card and CARD_HEADINGS["short"] in card
    rows = [line for line in card.splitlines() if line.startswith(("| mnist-logistic |", "| text-transformer |"))]
    assert len(rows) == 2 * len(real_training.SCHEDULES)
    # The long length gets a subsection of its own, pointing at its results; the short one stays.
    assert long_results.data["length"] == "long" and long_results.data["loops"][0]["steps"] == 5
    update_cards(long_results.data, long_results.data["summary"], tmp_path / "long" / "results.md")
    card = (card_folder / "README.md").read_text()
    assert CARD_HEADINGS["short"] in card and CARD_HEADINGS["long"] in card
    assert f"`{(tmp_path / 'long' / 'results.md').as_posix()}`" in card
    with pytest.raises(ValueError, match="length 'medium'"):
        run_tiny(tmp_path / "x", length="medium")


def test_schedules_option_runs_only_those_final_runs_and_a_later_run_merges_them(tmp_path, monkeypatch):
    calls = []
    original = real_suite.run_real_cell
    monkeypatch.setattr(
        real_suite, "run_real_cell", lambda spec, *a, **k: calls.append(spec) or original(spec, *a, **k)
    )
    argv = ["real", "--out", str(tmp_path), "--tasks", "mnist-logistic", "--steps", "4", "--seeds", "1"]
    argv += ["--tuning-seeds", "1", "--optimizers", "hamiltonian-mnist", "--baselines", "adam", "--no-progress"]
    argv += ["--length", "short"]
    assert bench_main([*argv, "--schedules", "cosine"]) == 0
    assert {spec.schedule for spec in calls if spec.evaluate_test} == {"cosine"}
    calls.clear()
    assert bench_main(argv) == 0  # both schedules: only the constant finals are new
    assert calls and {spec.schedule for spec in calls} == {"constant"}
    data = json.loads((tmp_path / "results.json").read_text())
    assert set(data["summary"]["loops"]["mnist-logistic"]) == {"constant", "cosine"}


def _loss(mean: float, diverged: bool = False) -> dict:
    return {"train_loss": {"mean": mean, "std": 0.0}, "diverged": diverged}


def test_relative_table_compares_each_row_with_the_lowest_tuned_baseline():
    from benchmarks.real_report import relative_table

    constant = {
        "a": {
            "adam (tuned)": _loss(0.2),
            "sgd-momentum (tuned)": _loss(0.1),
            "adam@1e-3": _loss(0.3),
            "l": _loss(0.09),
        },
        "b": {"adam (tuned)": _loss(2.0), "sgd-momentum (tuned)": _loss(1.0, True), "adam@1e-3": _loss(4.0)},
    }
    constant["b"]["l"] = _loss(math.inf, True)
    summary = {"loops": {loop: {"constant": rows} for loop, rows in constant.items()}, "targets": {"l": {}}}
    lines = relative_table(summary, {}).splitlines()
    assert lines[2] == "| best tuned baseline | sgd-momentum 0.1 | adam 2 |"  # a diverged baseline is no baseline
    assert lines[3] == "| `l` | -10% | diverged |"
    assert lines[4] == "| Adam at 1e-3 | +200% | +100% |"


def test_recommendation_bar_needs_every_short_loop_and_most_long_ones():
    def counts(loops, beats, diverged=0):
        return {"loops": loops, "beats_adam": beats, "diverged": diverged}

    assert real_suite.meets_recommendation_bar(counts(7, 7), counts(7, 6))  # 6 of 7 is 86% of the long loops
    assert not real_suite.meets_recommendation_bar(counts(7, 7), counts(7, 5))  # 71%
    assert not real_suite.meets_recommendation_bar(counts(7, 6), counts(7, 7))  # one short loop lost
    assert not real_suite.meets_recommendation_bar(counts(7, 7), counts(7, 7, diverged=1))
    assert not real_suite.meets_recommendation_bar(counts(0, 0), counts(7, 7))  # nothing measured


def test_shipped_labels_follow_the_committed_real_results():
    """A generalist is called recommended exactly when the committed `real` results clear the bar at
    both lengths under both schedules; `learned-optim list` and the suites' defaults read the label."""
    committed = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "real"
    short, long = (
        real_suite.summarize(json.loads((folder / "results.json").read_text()))["targets"]
        for folder in (committed, committed / "long")
    )
    judged = []
    for entry in lo.list_pretrained():
        name, label = entry["name"], entry["recommendation"]
        if label == "study object" or name not in short or name not in long:
            continue
        clears = all(
            real_suite.meets_recommendation_bar(short[name][schedule], long[name][schedule]) for schedule in short[name]
        )
        assert label == ("recommended" if clears else "not recommended"), name
        judged.append(name)
    assert {"celo2-small-tasks", "celo2-general", "hamiltonian-general"} <= set(judged)

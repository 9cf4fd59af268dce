"""Symbolic distillation: recording, regression, selection, sympy/LaTeX export, the CLI."""

import json

import pytest
import safetensors.torch
import sympy
import torch

import learned_optim as lo
from learned_optim.cli import main
from learned_optim.expression import Rule, const, op, var
from learned_optim.hub import Pretrained
from learned_optim.meta import distill, sympy_rules
from learned_optim.meta.regression import OperonBackend, SearchSettings
from learned_optim.optimizers.symbolic import BUILTIN_RULES, INPUTS

pytest.importorskip("pyoperon")
FAST_SEARCH = SearchSettings(time_limit=4, population_size=300, generations=200)


def test_recovers_sgd_exactly_from_synthetic_data():
    dataset = distill.record_synthetic(lambda g, state: (0.01 * g, state), coordinates=500, steps=10)
    result = distill.fit(dataset, ["g", "m_tilde"], OperonBackend(), FAST_SEARCH)
    assert result.chosen.rule.tree == op("mul", const(0.01), var("g"))
    assert result.chosen.heldout_r2 > 1 - 1e-9
    sizes = [c.size for c in result.candidates]
    assert sizes == sorted(sizes) and result.chosen.size <= min(sizes)  # the front, smallest first


def test_recording_uses_the_same_inputs_as_the_symbolic_optimizer():
    # A symbolic teacher d = 0.001·m̃: the recorded target must be 0.001 × the recorded m̃ column.
    teacher = lo.Symbolic([torch.nn.Parameter(torch.zeros(1))], rule="adam")
    pretrained = Pretrained("symbolic", teacher.config, teacher.theta)
    dataset = distill.record(
        pretrained, "quadratic", trajectories=2, steps=6, beta1=0.9, beta2=0.999, progress_bar=False
    )
    assert dataset.columns == list(INPUTS) and len(dataset.target) == 2 * 6 * 10
    torch.testing.assert_close(dataset.target, 0.001 * dataset.column("m_tilde"), rtol=1e-5, atol=1e-9)
    assert dataset.heldout_mask(0.5).tolist() == (dataset.trajectory == 1).tolist()


def test_dataset_round_trip_and_foreign_files(tmp_path):
    dataset = distill.record_synthetic(lambda g, state: (g, state), coordinates=10, steps=3, trajectories=2)
    dataset.save(tmp_path / "data.safetensors")
    loaded = distill.Dataset.load(tmp_path / "data.safetensors")
    assert loaded.columns == dataset.columns and loaded.metadata == dataset.metadata
    assert torch.equal(loaded.inputs, dataset.inputs) and torch.equal(loaded.target, dataset.target)
    safetensors.torch.save_file({"x": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="not a learned_optim-distill-dataset"):
        distill.Dataset.load(tmp_path / "other.safetensors")


def test_sympy_round_trip_and_latex():
    rule = Rule.from_json(BUILTIN_RULES["rnnprop-paper"]["rule"], INPUTS)
    back = sympy_rules.from_sympy(sympy_rules.to_sympy(rule))
    x = torch.linspace(-1.5, 1.5, 31, dtype=torch.float64)
    torch.testing.assert_close(back.evaluate({"m_tilde": x}), rule.evaluate({"m_tilde": x}))
    latex = sympy_rules.to_latex(rule)
    assert r"\tilde{m}_t" in latex and "0.0248" in latex and "7.91" in latex and "7.9084" not in latex
    quotient = sympy_rules.from_sympy(sympy.Symbol("g") / (1 + sympy.Symbol("m_tilde") ** 2))
    assert quotient.tree["op"] == "div"
    with pytest.raises(ValueError, match="whitelisted"):
        sympy_rules.from_sympy(sympy.gamma(sympy.Symbol("g")))


def test_sign_mirrored_negates_every_gradient_input_and_the_direction_but_not_the_step():
    dataset = distill.record_synthetic(lambda g, state: (0.01 * g, state), coordinates=20, steps=4, trajectories=2)
    mirrored = dataset.sign_mirrored()
    rows = len(dataset.target)
    assert len(mirrored.target) == 2 * rows and torch.equal(mirrored.target[rows:], -dataset.target)
    for name in dataset.columns:
        expected = dataset.column(name) if name == "inv_step" else -dataset.column(name)
        assert torch.equal(mirrored.column(name)[rows:], expected), name
    assert torch.equal(mirrored.heldout_mask(0.5)[rows:], dataset.heldout_mask(0.5))


def _value_at_zero_gradient(rule: Rule) -> float:
    inputs = {name: torch.zeros(1, dtype=torch.float64) for name in rule.inputs}
    return float(rule.evaluate(inputs).reshape(-1)[0])


def test_sign_symmetric_fit_leaves_out_the_teachers_constant_drift():
    # A teacher that is not odd: it adds a drift of 0.002 to every coordinate's step.
    dataset = distill.record_synthetic(lambda g, state: (0.01 * g + 0.002, state), coordinates=500, steps=10)
    drifting = distill.fit(dataset, ["g"], OperonBackend(), FAST_SEARCH).chosen.rule
    odd = distill.fit(dataset, ["g"], OperonBackend(), FAST_SEARCH, sign_symmetric=True).chosen.rule
    assert _value_at_zero_gradient(drifting) == pytest.approx(0.002, rel=1e-3)
    assert _value_at_zero_gradient(odd) == pytest.approx(0.0, abs=1e-6)
    g = torch.linspace(-1.0, 1.0, 11, dtype=torch.float64)
    torch.testing.assert_close(odd.evaluate({"g": g}), 0.01 * g, rtol=1e-3, atol=1e-6)


def test_tidy_drops_negligible_constants_and_rounds():
    dataset = distill.record_synthetic(lambda g, state: (0.5 * g, state), coordinates=200, steps=5)
    heldout = dataset.heldout_mask(0.2)
    noisy = Rule.from_json(op("add", const(3e-12), op("mul", const(0.50000001), var("g"))))
    tidied = distill.tidy(distill.score(noisy, dataset, heldout), dataset, heldout)
    assert tidied.rule.infix() == "(0.5 * g)"


def test_distill_cli_writes_symbolic_weights(tmp_path, capsys):
    teacher = lo.Symbolic([torch.nn.Parameter(torch.zeros(1))], rule="adam")
    teacher.save_pretrained(tmp_path / "teacher")
    out = tmp_path / "distilled"
    argv = ["distill", str(tmp_path / "teacher"), "--task", "quadratic", "--inputs", "m_tilde,g"]
    argv += ["--trajectories", "4", "--steps", "10", "--time-limit", "3", "--out", str(out)]
    argv += ["--work-dir", str(tmp_path / "work"), "--no-progress", "--beta1", "0.9", "--beta2", "0.999"]
    assert main(argv) == 0
    assert "held-out R²" in capsys.readouterr().out
    document = json.loads((out / "config.json").read_text())
    assert document["architecture"] == "symbolic" and document["metrics"]["fidelity"]["heldout_r2"] > 0.99
    assert (out / "response.png").stat().st_size > 0 and "$$d_t =" in (out / "README.md").read_text()
    assert (
        document["recipe"]["command"].startswith("learned-optim distill ")
        and "--time-limit 3" in document["recipe"]["command"]
    )
    optimizer = lo.load(str(out), [torch.nn.Parameter(torch.zeros(3))])
    assert isinstance(optimizer, lo.Symbolic) and "m_tilde" in optimizer.rule.inputs
    assert main(argv) == 0  # a second run reuses the recorded dataset
    assert "reusing the recorded dataset" in capsys.readouterr().out
    typo = [*argv[:5], "m_tilde,inv_stpe", *argv[6:]]
    assert main(typo) == 1 and "unknown rule inputs ['inv_stpe']" in capsys.readouterr().err


def test_distill_cli_takes_the_input_decays_from_a_hamiltonian_teacher(tmp_path):
    # Hamiltonian's one decay, ``beta``, averages g²: the rule's v̂ must use it unless told otherwise.
    teacher = lo.Hamiltonian([torch.nn.Parameter(torch.zeros(1))], hidden_size=0, beta=0.97)
    teacher.save_pretrained(tmp_path / "teacher")
    out = tmp_path / "distilled"
    argv = ["distill", str(tmp_path / "teacher"), "--task", "quadratic", "--inputs", "m_tilde"]
    argv += ["--trajectories", "2", "--steps", "5", "--time-limit", "2", "--out", str(out)]
    argv += ["--work-dir", str(tmp_path / "work"), "--no-progress", "--beta1", "0.9"]
    assert main(argv) == 0
    config = json.loads((out / "config.json").read_text())["config"]
    assert (config["beta1"], config["beta2"]) == (0.9, 0.97)


def test_recording_broadcasts_the_step_input():
    teacher = lo.Symbolic([torch.nn.Parameter(torch.zeros(1))], rule=op("mul", const(0.1), var("inv_step")))
    pretrained = Pretrained("symbolic", teacher.config, teacher.theta)
    dataset = distill.record(pretrained, "quadratic", trajectories=1, steps=3, progress_bar=False)
    torch.testing.assert_close(dataset.column("inv_step"), 1.0 / dataset.step.double())
    torch.testing.assert_close(dataset.target, 0.1 * dataset.column("inv_step"))


def test_recording_on_a_distribution_draws_a_new_instance_per_trajectory():
    # Adam as the teacher: its direction is exactly 0.001·m̃ on any instance, so the rows must hold
    # that, and the trajectories must come from instances of different sizes (rows per step = 16
    # coordinates per tensor, at most, of each instance's tensors).
    teacher = lo.Symbolic([torch.nn.Parameter(torch.zeros(1))], rule="adam")
    pretrained = Pretrained("symbolic", teacher.config, teacher.theta)
    dataset = distill.record(
        pretrained, "small-tasks", trajectories=3, steps=2, beta1=0.9, beta2=0.999, seed=3, progress_bar=False
    )
    assert dataset.metadata["task"] == "small-tasks"
    torch.testing.assert_close(dataset.target, 0.001 * dataset.column("m_tilde"), rtol=1e-5, atol=1e-9)
    rows_per_step = [int(((dataset.trajectory == t) & (dataset.step == 1)).sum()) for t in range(3)]
    assert len(set(rows_per_step)) > 1, rows_per_step

"""Symbolic rules: the safe expression tree, the Symbolic optimizer's inputs and built-in rules."""

import json
import math

import pytest
import torch

import learned_optim as lo
from learned_optim.errors import WeightsError
from learned_optim.expression import Rule, RuleError, const, integer_power, op, var
from learned_optim.optimizers.symbolic import BUILTIN_RULES, INPUTS


def test_adam_rule_equals_torch_adam():
    torch.manual_seed(0)
    w = torch.randn(500, requires_grad=True)
    w_ref = w.detach().clone().requires_grad_()
    optimizer, reference = lo.Symbolic([w], rule="adam"), torch.optim.Adam([w_ref], lr=1e-3)
    for _ in range(20):
        for p, opt in ((w, optimizer), (w_ref, reference)):
            opt.zero_grad()
            (p.sin() * p).sum().backward()
            opt.step()
    torch.testing.assert_close(w, w_ref, rtol=0, atol=1e-6)
    assert set(optimizer.state[w]) == {"step", "exp_avg", "exp_avg_sq"}  # Adam's memory, no more


def test_published_rnnprop_rule_is_the_papers_formula():
    w = torch.nn.Parameter(torch.tensor([0.5, -2.0, 0.0, 3.0]))
    optimizer = lo.Symbolic([w], rule="rnnprop-paper")
    w.grad = torch.tensor([0.3, -0.2, 0.0, 1e-3])
    before = w.detach().clone()
    optimizer.step()
    g = w.grad
    m, v = 0.05 * g, 0.05 * g * g  # one step of β1 = β2 = 0.95 averages
    m_tilde = (m / 0.05) / ((v / 0.05).sqrt() + 1e-8)
    paper = torch.tanh(torch.tanh(0.0248 + torch.sinh((-1.99234 * m_tilde) ** 3))) * 0.01  # added to θ
    # ...except that a coordinate that has only seen zero gradients stays put (the frozen-row rule).
    paper = torch.where(g == 0, 0.0, paper)
    torch.testing.assert_close(w.detach(), before + paper)
    assert w[2] == 0.0


def _run_rule(tree, grads, **config):
    w = torch.nn.Parameter(torch.zeros(len(grads[0])))
    optimizer = lo.Symbolic([w], rule=tree, **config)
    directions = []
    for grad in grads:
        before = w.detach().clone()
        w.grad = torch.tensor(grad)
        optimizer.step()
        directions.append(before - w.detach())
    return directions, optimizer.state[w]


def test_inputs_follow_their_definitions():
    grads = [[1.0, -2.0], [3.0, 0.5], [-1.0, 4.0], [2.0, 2.0]]
    g = torch.tensor(grads)
    lags, _ = _run_rule(op("add", var("g_lag1"), op("mul", const(10.0), var("g_lag2"))), grads)
    torch.testing.assert_close(lags[3], g[2] + 10 * g[1])
    torch.testing.assert_close(lags[0], torch.zeros(2))
    momentum, state = _run_rule(var("m_0.9"), grads)
    expected = sum(0.1 * 0.9 ** (3 - i) * g[i] for i in range(4)) / (1 - 0.9**4)
    torch.testing.assert_close(momentum[3], expected)
    assert set(state) == {"step", "ema_0.9"}
    normalized, _ = _run_rule(var("g_tilde"), grads, beta2=0.5)
    v = sum(0.5 * 0.5 ** (3 - i) * g[i] ** 2 for i in range(4)) / (1 - 0.5**4)
    torch.testing.assert_close(normalized[3], g[3] / (v.sqrt() + 1e-8))
    # 1/t is one number per step shared by all coordinates; it needs no state.
    fading, state = _run_rule(op("mul", var("g"), var("inv_step")), grads)
    for t in range(4):
        torch.testing.assert_close(fading[t], g[t] / (t + 1))
    assert set(state) == {"step"}


def test_constants_are_the_learnable_weights():
    rule = op("mul", const(0.01), op("tanh", op("mul", const(2.0), var("m_tilde"))))
    optimizer = lo.Symbolic([torch.nn.Parameter(torch.zeros(3))], rule=rule)
    assert optimizer.theta["constants"].tolist() == pytest.approx([0.01, 2.0])
    optimizer.theta = {"constants": torch.tensor([0.02, 3.0])}
    assert optimizer.rule.constants == pytest.approx((0.02, 3.0))
    assert optimizer.rule.infix() == "(0.02 * tanh((3 * m_tilde)))"


def test_symbolic_weights_round_trip_as_json(tmp_path):
    rule = BUILTIN_RULES["rnnprop-paper"]["rule"]
    optimizer = lo.Symbolic([torch.nn.Parameter(torch.zeros(3))], rule="rnnprop-paper")
    optimizer.save_pretrained(tmp_path / "rule")
    document = json.loads((tmp_path / "rule" / "config.json").read_text())
    assert document["architecture"] == "symbolic" and document["config"]["rule"] == rule
    loaded = lo.load(str(tmp_path / "rule"), [torch.nn.Parameter(torch.zeros(3))])
    assert isinstance(loaded, lo.Symbolic) and loaded.config == optimizer.config


@pytest.mark.parametrize(
    ("tree", "message"),
    [
        ({"op": "system", "args": [{"input": "g"}]}, "unknown operator"),
        ({"input": "__import__('os')"}, "unknown input"),
        ({"const": math.inf}, "finite number"),
        ({"const": "1.0"}, "finite number"),
        ({"op": "add", "args": [{"input": "g"}]}, "takes 2"),
        ({"op": "powi", "args": [{"input": "g"}], "exponent": 100}, "exponent"),
        ({"op": "tanh", "args": [{"input": "g"}], "code": "x"}, "must have keys"),
        ("g * 2", "must be an object"),
    ],
)
def test_malformed_rules_are_refused(tree, message):
    with pytest.raises(RuleError, match=message):
        Rule.from_json(tree, INPUTS)
    if isinstance(tree, dict):  # a string names a built-in rule instead
        with pytest.raises(WeightsError, match=message):
            lo.Symbolic([torch.nn.Parameter(torch.zeros(1))], rule=tree)


def test_deep_rules_are_refused():
    tree = var("g")
    for _ in range(40):
        tree = op("tanh", tree)
    with pytest.raises(RuleError, match="deeper"):
        Rule.from_json(tree)


def test_unknown_builtin_rule_names_the_choices():
    with pytest.raises(ValueError, match="rnnprop-paper"):
        lo.Symbolic([torch.nn.Parameter(torch.zeros(1))], rule="nope")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_tanh_operator_is_tanh_within_two_ulp_of_one(dtype):
    tanh = lo.expression.OPERATORS["tanh"].torch_fn
    x = torch.linspace(-30, 30, 60001, dtype=dtype, requires_grad=True)
    value = tanh(x)
    value.sum().backward()
    exact = torch.tanh(x.detach().double())
    ulp = torch.finfo(dtype).eps
    assert (value.detach().double() - exact).abs().max() <= 2 * ulp
    torch.testing.assert_close(x.grad.double(), 1 - exact**2, rtol=0, atol=4 * ulp)
    assert tanh(torch.tensor([-1000.0, 0.0, 1000.0], dtype=dtype)).tolist() == [-1.0, 0.0, 1.0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sinh_operator_agrees_with_torch_sinh_and_its_gradient_is_cosh(dtype):
    sinh = lo.expression.OPERATORS["sinh"].torch_fn
    generator = torch.Generator().manual_seed(0)
    # Both sides of the series/exponential switch at |x| = 1, tiny values, and up to overflow.
    magnitudes = torch.cat([torch.logspace(-30, 1.9, 2000, dtype=torch.float64), torch.tensor([0.0, 1.0])])
    x = (magnitudes * torch.randn(magnitudes.shape, generator=generator, dtype=torch.float64).sign()).to(dtype)
    x.requires_grad_(True)
    value = sinh(x)
    value.sum().backward()
    exact = torch.sinh(x.detach().double())
    ulp = torch.finfo(dtype).eps
    relative = (value.detach().double() - exact).abs() / exact.abs().clamp_min(torch.finfo(dtype).tiny)
    assert relative.max() <= 2 * ulp, f"off by {relative.max() / ulp:.1f} ulp"
    torch.testing.assert_close(x.grad.double(), torch.cosh(x.detach().double()), rtol=4 * ulp, atol=0)
    huge = torch.tensor([-1000.0, 1000.0], dtype=dtype, requires_grad=True)
    sinh(huge).sum().backward()
    assert sinh(huge.detach()).tolist() == [-math.inf, math.inf] and huge.grad.tolist() == [math.inf, math.inf]


@pytest.mark.parametrize("exponent", [e for e in range(-8, 9) if e])
def test_integer_power_is_pow_and_so_is_its_gradient(exponent):
    x = torch.linspace(0.3, 1.7, 11, dtype=torch.float64).requires_grad_()
    powered = integer_power(x, exponent)
    torch.testing.assert_close(powered, x.detach() ** exponent, rtol=1e-14, atol=0)
    (gradient,) = torch.autograd.grad(powered.sum(), x)
    torch.testing.assert_close(gradient, exponent * x.detach() ** (exponent - 1), rtol=1e-13, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_bias_correction_of_a_tensor_step_matches_the_power_it_replaces(dtype):
    from learned_optim.features import bias_correction

    steps = torch.arange(1, 20001, dtype=dtype)
    for decay in (0.0, 0.5, 0.9, 0.999):
        exact = 1.0 - decay ** steps.double()
        got = bias_correction(decay, steps)
        assert got.dtype == dtype
        # float32: β itself rounds to float32 in a tensor power; here ln β stays in double, so no worse.
        torch.testing.assert_close(got.double(), exact, rtol=2e-5 if dtype == torch.float32 else 1e-12, atol=0)
        assert bias_correction(decay, 7) == 1.0 - decay**7

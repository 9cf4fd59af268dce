"""Celo2's learned per-tensor step scale: off and fresh it is the reference; trained, it scales each tensor's step."""

import math

import pytest
import torch
from torch.func import vmap

import learned_optim as lo
from learned_optim.optimizers import celo2, celo2_step_scale
from learned_optim.optimizers.celo2_config import Celo2Config

SCALED = Celo2Config(step_scale_hidden=8)


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3))


def _train(optimizer_factory, steps: int = 12) -> list[torch.Tensor]:
    model = _model()
    optimizer = optimizer_factory(model.parameters())
    data = torch.randn(16, 6, generator=torch.Generator().manual_seed(1))
    for _ in range(steps):
        optimizer.zero_grad()
        model(data).pow(2).mean().backward()
        optimizer.step()
    return [p.detach().clone() for p in model.parameters()]


def test_fresh_scale_network_is_the_reference_bit_for_bit():
    reference = lo.Celo2(_model().parameters(), seed=3)
    theta = {**reference.theta, **celo2_step_scale.init_scale_theta(8, torch.Generator().manual_seed(0))}
    plain = _train(lambda params: lo.Celo2(params, theta=reference.theta))
    scaled = _train(lambda params: lo.Celo2(params, config=SCALED, theta=theta))
    for a, b in zip(plain, scaled, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("shape", [(7, 9), (9,)])
def test_trained_scale_multiplies_the_direction_within_its_bounds(shape):
    generator = torch.Generator().manual_seed(0)
    theta = celo2.init_theta(SCALED, generator)
    param, grad = torch.randn(shape, generator=generator), torch.randn(shape, generator=generator)
    state = celo2.init_state(param, SCALED)
    plain, _ = celo2.update(theta, grad, state, torch.tensor(1.0), SCALED, param=param)
    limit = math.log(100.0)
    for bias, expected in ((2.0, math.exp(limit * math.tanh(2.0 / limit))), (1e6, 100.0), (-1e6, 0.01)):
        theta["scale_b1"] = torch.tensor([bias])
        scaled, _ = celo2.update(theta, grad, state, torch.tensor(1.0), SCALED, param=param)
        torch.testing.assert_close(scaled, plain * expected, rtol=1e-5, atol=0)


def test_statistics_are_scale_free_except_the_gradient_and_parameter_sizes():
    generator = torch.Generator().manual_seed(0)
    param, grad = torch.randn(5, 6, generator=generator), torch.randn(5, 6, generator=generator)
    fast, slow = 0.1 * grad + torch.randn(5, 6, generator=generator), 0.01 * grad
    base = celo2_step_scale.statistics(param, grad, fast, slow, torch.tensor(10.0), adamw=False)
    bigger = celo2_step_scale.statistics(param, 100 * grad, 100 * fast, 100 * slow, torch.tensor(10.0), adamw=False)
    change = bigger - base
    torch.testing.assert_close(change[1], torch.tensor(math.log(100.0)))
    assert change[[0, 2, 3, 4, 5, 6, 7, 8]].abs().max() < 1e-5
    torch.testing.assert_close(base[6], torch.tensor(math.log(10.0)))


def test_untouched_coordinates_stay_put_with_a_scale():
    theta = celo2.init_theta(SCALED, torch.Generator().manual_seed(0))
    theta["scale_b1"] = torch.tensor([1.5])
    param = torch.randn(4, 5)
    grad = torch.randn(4, 5)
    grad[:, 2] = 0.0
    direction, _ = celo2.update(theta, grad, celo2.init_state(param, SCALED), torch.tensor(1.0), SCALED, param=param)
    assert torch.equal(direction[:, 2], torch.zeros(4))
    assert direction[:, 0].abs().min() > 0


def test_the_update_runs_under_vmap_as_one_instance_at_a_time():
    generator = torch.Generator().manual_seed(0)
    copies = 3
    theta = celo2.init_theta(SCALED, generator)
    theta["scale_w1"] = torch.randn(8, 1, generator=generator)
    thetas = {k: v + 0.01 * torch.randn(copies, *v.shape, generator=generator) for k, v in theta.items()}
    for shape in ((6, 7), (7,), (2, 3, 3, 3)):
        params, grads = (
            torch.randn(copies, *shape, generator=generator),
            torch.randn(copies, *shape, generator=generator),
        )
        grads[1, 0] = float("nan")  # masked inside vmap too: no Python bool is read there
        state = {k: v.expand(copies, *v.shape).clone() for k, v in celo2.init_state(torch.zeros(shape), SCALED).items()}

        def one(th, g, st, p):
            return celo2.update(th, g, st, torch.tensor(4.0), SCALED, param=p)

        batched, batched_state = vmap(one)(thetas, grads, state, params)
        for i in range(copies):
            direction, new_state = one(
                {k: v[i] for k, v in thetas.items()}, grads[i], {k: v[i] for k, v in state.items()}, params[i]
            )
            torch.testing.assert_close(batched[i], direction, rtol=1e-4, atol=1e-5)
            for key, value in new_state.items():
                torch.testing.assert_close(batched_state[key][i], value)


def test_weights_with_a_scale_network_save_and_load(tmp_path):
    theta = celo2.init_theta(SCALED, torch.Generator().manual_seed(0))
    theta["scale_b1"] = torch.tensor([0.7])
    optimizer = lo.Celo2(_model().parameters(), config=SCALED, theta=theta)
    optimizer.save_pretrained(tmp_path / "scaled")
    loaded = lo.load(str(tmp_path / "scaled"), _model().parameters())
    assert loaded.config.step_scale_hidden == 8
    assert torch.equal(loaded.theta["scale_b1"], theta["scale_b1"])


def test_negative_hidden_size_is_refused():
    with pytest.raises(ValueError, match="step_scale_hidden"):
        Celo2Config(step_scale_hidden=-1)


@pytest.mark.parametrize("adamw", [False, True])
def test_the_scale_outside_autograd_is_the_differentiable_scale(adamw):
    generator = torch.Generator().manual_seed(3)
    theta = celo2_step_scale.init_scale_theta(16, generator)
    theta = {k: v + torch.randn(v.shape, generator=generator) for k, v in theta.items()}
    param, grad, fast, slow = (torch.randn(40, 30, generator=generator) * s for s in (0.1, 1e-3, 1e-3, 1e-4))
    step = torch.tensor(250.0)
    features = celo2_step_scale.statistics(param, grad, fast, slow, step, adamw)
    differentiable = celo2_step_scale.step_scale(theta, features).item()
    assert abs(differentiable - 1.0) > 0.05  # the network moves s: its inputs matter
    lean = celo2_step_scale.step_scale_outside_autograd(theta, param, grad, fast, slow, step, adamw)
    assert lean == pytest.approx(differentiable, rel=1e-5)
    theta["scale_w1"] = theta["scale_w1"].requires_grad_()  # meta-training: the graph reaches φ
    with torch.enable_grad():
        direction, _ = celo2.update(
            theta | {k: v for k, v in celo2.init_theta(SCALED).items() if not k.startswith("scale_")},
            grad,
            celo2.init_state(param, SCALED),
            step,
            SCALED,
            param=param,
        )
    assert direction.requires_grad

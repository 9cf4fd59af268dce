"""LSTMOptimizer's normalize_gradient option: scale invariance, its state, and the runtime contract."""

import pytest
import torch

import learned_optim as lo
from learned_optim.optimizers import lstm


def directions(config: lo.LSTMConfig, grads: list[torch.Tensor]) -> list[torch.Tensor]:
    theta = lstm.init_theta(config, torch.Generator().manual_seed(0))
    state = lstm.init_state(grads[0], config)
    out = []
    for step, grad in enumerate(grads, start=1):
        direction, state = lstm.update(theta, grad, state, torch.tensor(float(step)), config)
        out.append(direction)
    return out


@pytest.mark.parametrize("scale", [1e-4, 1e3])
def test_normalized_gradients_make_every_step_independent_of_the_loss_scale(scale):
    generator = torch.Generator().manual_seed(1)
    grads = [torch.randn(50, generator=generator) for _ in range(6)]
    normalized = lo.LSTMConfig(normalize_gradient=True)
    for ours, scaled in zip(
        directions(normalized, grads), directions(normalized, [scale * g for g in grads]), strict=True
    ):
        torch.testing.assert_close(scaled, ours, rtol=1e-3, atol=1e-7)
    # The paper's optimizer (the default) reads log|g|: a scaled loss moves it differently.
    default = lo.LSTMConfig()
    assert not torch.allclose(directions(default, [scale * g for g in grads])[-1], directions(default, grads)[-1])


def test_the_default_keeps_the_papers_state_and_the_option_adds_one_number_per_coordinate():
    param = torch.zeros(3, 4)
    default = lstm.init_state(param, lo.LSTMConfig())
    normalized = lstm.init_state(param, lo.LSTMConfig(normalize_gradient=True))
    assert set(normalized) - set(default) == {"exp_avg_sq"} and normalized["exp_avg_sq"].shape == param.shape


def test_with_normalized_gradients_frozen_rows_stay_frozen_and_state_dict_resumes():
    generator = torch.Generator().manual_seed(2)
    start = torch.randn(4, 3, generator=generator)
    grads = [torch.randn(4, 3, generator=generator) for _ in range(4)]
    for grad in grads:
        grad[1] = 0.0  # row 1 never receives a gradient

    def train(weight, optimizer, steps):
        for grad in steps:
            weight.grad = grad.clone()
            optimizer.step()

    straight = torch.nn.Parameter(start.clone())
    optimizer = lo.LSTMOptimizer([straight], normalize_gradient=True, lr=0.1)
    train(straight, optimizer, grads)
    assert torch.equal(straight[1], start[1]) and not torch.equal(straight[0], start[0])

    resumed = torch.nn.Parameter(start.clone())
    first = lo.LSTMOptimizer([resumed], normalize_gradient=True, lr=0.1)
    train(resumed, first, grads[:2])
    second = lo.LSTMOptimizer([resumed], normalize_gradient=True, lr=0.1)
    second.load_state_dict(first.state_dict())
    assert "exp_avg_sq" in second.state[resumed]
    train(resumed, second, grads[2:])
    torch.testing.assert_close(resumed, straight, rtol=0, atol=0)
    with pytest.raises(ValueError, match="beta parameter at index 1"):
        lo.LSTMOptimizer([torch.nn.Parameter(torch.ones(2))], normalize_gradient=True, beta2=1.0)

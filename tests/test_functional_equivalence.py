"""Optimizer.step and the pure update function under torch.func give the same numbers, bit for bit."""

import torch
from conftest import loss_of, small_model, train
from torch.func import functional_call, grad

from learned_optim.meta.inner_step import init_optimizer_state, is_per_tensor, optimizer_step


def test_runtime_step_equals_functional_unroll(optimizer_class):
    lr, steps = 0.5, 4
    model = small_model()
    params = {name: p.detach().clone() for name, p in model.named_parameters()}
    optimizer = optimizer_class(model.parameters(), lr=lr)
    train(model, optimizer, steps)

    functional_model = small_model()
    theta = optimizer_class([torch.nn.Parameter(torch.zeros(1))], lr=lr).theta
    if is_per_tensor(optimizer_class):  # the engines' per-tensor state: "<name>/<key>"
        states = {name: init_optimizer_state(optimizer_class, optimizer.config, [name], params) for name in params}
    else:
        states = {name: optimizer_class.init_state(p, optimizer.config) for name, p in params.items()}

    def loss_fn(p, seed):
        return loss_of_params(functional_model, p, seed)

    for step in range(1, steps + 1):
        grads = grad(loss_fn)(params, step - 1)
        new_params = {}
        for name, p in params.items():
            direction, states[name] = optimizer_step(
                optimizer_class,
                theta,
                optimizer.config,
                grads[name],
                states[name],
                torch.tensor(float(step)),
                names=[name],
                params=params,
            )
            new_params[name] = p - lr * direction.view_as(p)
        params = new_params

    for name, p in model.named_parameters():
        assert torch.equal(p.detach(), params[name]), name


def loss_of_params(model, params, seed):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(16, 6, generator=generator)
    y = torch.randn(16, 3, generator=generator)
    return torch.nn.functional.mse_loss(functional_call(model, params, (x,)), y)


def test_loss_helpers_agree():
    # loss_of_params must be the same loss the runtime test trains on, or the comparison is void.
    model = small_model()
    params = dict(model.named_parameters())
    assert torch.equal(loss_of(model, 3), loss_of_params(model, params, 3))


def test_update_is_differentiable_with_respect_to_theta(optimizer_class):
    # Meta-training differentiates the update through theta; it must stay a pure torch function.
    optimizer = optimizer_class([torch.nn.Parameter(torch.zeros(1))])
    theta = {k: v.clone().requires_grad_() for k, v in optimizer.theta.items()}
    g = torch.randn(5, 2)
    config = optimizer.config
    if is_per_tensor(optimizer_class):  # it also reads the parameter
        params = {"p": torch.randn(5, 2)}
        state = init_optimizer_state(optimizer_class, config, ["p"], params)
        for step in (1.0, 2.0):
            direction, state = optimizer_step(
                optimizer_class, theta, config, g, state, torch.tensor(step), names=["p"], params=params
            )
    else:
        state = optimizer_class.init_state(g, config)
        direction, new_state = optimizer_class.update(theta, g, state, torch.tensor(1.0), config)
        direction, _ = optimizer_class.update(theta, g, new_state, torch.tensor(2.0), config)
    gradients = torch.autograd.grad(direction.sum(), list(theta.values()))
    assert all(torch.isfinite(t).all() for t in gradients)
    assert sum(t.abs().sum() for t in gradients) > 0

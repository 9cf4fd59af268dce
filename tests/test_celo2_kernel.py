"""Celo2's CPU kernel (fused=True): the eager step's numbers to float32 rounding, on every layout."""

import pytest
import torch
from celo2_reference_model import reference_weights

import learned_optim as lo
from learned_optim.optimizers import celo2, celo2_kernel

pytestmark = pytest.mark.skipif(celo2_kernel.extension() is None, reason="no C++ compiler for the kernel")

# Matrices and tails of 8 lanes, both factored orders, convolutions (3×3 walked with the factored
# axes last, 7×7 with one factored axis last, 1×1 as single-coordinate matrices), stacks of matrices.
SHAPES = [(5, 9), (9, 5), (37, 1029), (4, 2, 3, 3), (2, 3, 5), (3, 3, 3, 3), (6, 4, 1, 1), (5, 1, 1), (16, 3, 7, 7)]
OPTIONS = [{"orthogonalize": False}, {"exp_mult": 0.5, "rmsmult": 2.0, "param_scale_mult": True}]


def _inputs(shape, options, untouched_rows=0):
    generator = torch.Generator().manual_seed(sum(shape))
    theta = reference_weights()
    options = {**celo2.DEFAULT_OPTIONS, **options}
    param = torch.randn(shape, generator=generator)
    state = celo2.init_state(param, lo.Celo2Config(), options)
    state = {k: v + torch.rand(v.shape, generator=generator) for k, v in state.items()}
    grad = torch.randn(shape, generator=generator)
    if untouched_rows:  # coordinates that have never had a gradient: zero momenta, zero gradient
        state["momentum"][:, :untouched_rows] = 0.0
        grad[:untouched_rows] = 0.0
    return theta, param, grad, state, options


def _in_float64(*tensor_dicts_or_tensors):
    return [
        {k: v.double() for k, v in x.items()} if isinstance(x, dict) else x.double() for x in tensor_dicts_or_tensors
    ]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("options", OPTIONS, ids=["base", "all-options"])
def test_the_kernel_step_is_the_eager_step_to_float32_rounding(shape, options):
    theta, param, grad, state, options = _inputs(shape, options, untouched_rows=1)
    config = lo.Celo2Config()
    with torch.no_grad():
        assert celo2_kernel.applies(param, config)
        kernel, kernel_state = celo2.update(
            theta, grad, state, 3, config, param=param, options=options, learned=celo2.kernel_learned_step
        )
        eager, eager_state = celo2.update(theta, grad, state, 3, config, param=param, options=options)
        theta64, grad64, state64, param64 = _in_float64(theta, grad, state, param)
        exact, _ = celo2.update(theta64, grad64, state64, 3, config, param=param64, options=options)
    # Float32 rounding, summed in another order: no further from the float64 step than the eager
    # float32 step is (within a factor), where any error in the math would be of the step's size.
    scale = exact.abs().max()
    kernel_error = (kernel.double() - exact).abs().max()
    eager_error = (eager.double() - exact).abs().max()
    assert kernel_error <= 3 * max(eager_error, 1e-6 * scale), (kernel_error / scale, eager_error / scale)
    assert torch.equal(kernel == 0, eager == 0) and (eager[0] == 0).all()  # untouched stay put
    for key, value in eager_state.items():
        assert torch.equal(kernel_state[key], value)  # the accumulators are the same torch code


def test_a_changed_weight_changes_the_kernel_step():
    theta, param, grad, state, options = _inputs((6, 10), OPTIONS[0])
    config = lo.Celo2Config()
    with torch.no_grad():
        before, _ = celo2.kernel_learned_step(theta, param, grad, state, config, options)
        theta = {**theta, "w0.2": theta["w0.2"] + 0.5}  # the parameter's feature
        after, _ = celo2.kernel_learned_step(theta, param, grad, state, config, options)
        eager, _ = celo2.learned_step(theta, param, grad, state, config, options)
    assert not torch.allclose(before, after, atol=1e-3)
    torch.testing.assert_close(after, eager, rtol=0, atol=1e-5 * eager.abs().max())


def test_fused_celo2_on_a_cpu_runs_the_kernel_and_keeps_the_eager_trajectory():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.Flatten(), torch.nn.Linear(8 * 6 * 6, 5))
    twin = [p.detach().clone().requires_grad_() for p in model.parameters()]
    fused = lo.Celo2(model.parameters(), fused=True, theta=reference_weights())
    eager = lo.Celo2(twin, theta=reference_weights())
    with torch.no_grad():  # as in step()
        assert fused.kernel_update(next(model.parameters())) is not None
    for _ in range(4):
        grads = [torch.randn_like(p) for p in twin]
        for p, q, g in zip(model.parameters(), twin, grads, strict=True):
            p.grad, q.grad = g.clone(), g.clone()
        fused.step()
        eager.step()
    for p, q in zip(model.parameters(), twin, strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_the_kernel_stays_out_of_autograd_and_other_dtypes():
    config = lo.Celo2Config()
    param = torch.randn(4, 5)
    assert not celo2_kernel.applies(param, config)  # grad mode on: meta-training's path
    with torch.no_grad():
        assert celo2_kernel.applies(param, config)
        assert not celo2_kernel.applies(param.double(), config)
        assert celo2_kernel.applies(param.bfloat16(), config)  # computed in float32
        assert not celo2_kernel.applies(torch.randn(7), config)
        assert not celo2_kernel.applies(param, lo.Celo2Config(ff_hidden_size=4))


@pytest.mark.parametrize("shape", [(37, 1029), (4, 2, 3, 3), (7,)])
def test_forward_update_runs_the_kernel_outside_autograd_and_the_update_inside(shape):
    """PES's copies and validation call ``forward_update``: the kernel where it applies, the same
    numbers as ``update`` to float32 rounding; with autograd on, ``update`` itself, bit for bit."""
    theta, param, grad, state, options = _inputs(shape, {"orthogonalize": False})
    config = lo.Celo2Config()
    expected, expected_state = celo2.update(theta, grad, state, torch.tensor(3.0), config, param=param, options=options)
    with torch.no_grad():
        got, got_state = celo2.forward_update(
            theta, grad, state, torch.tensor(3.0), config, param=param, options=options
        )
    torch.testing.assert_close(got, expected, rtol=2e-4, atol=2e-5)
    for key, value in expected_state.items():
        torch.testing.assert_close(got_state[key], value)
    inside, _ = celo2.forward_update(theta, grad, state, torch.tensor(3.0), config, param=param, options=options)
    assert torch.equal(inside, expected)


@pytest.mark.parametrize("shape", [(5, 9), (37, 1029), (3, 3, 3, 3), (3000, 7)])
@pytest.mark.parametrize("adamw", [False, True])
def test_the_kernel_step_scale_is_the_torch_scale(shape, adamw):
    from learned_optim.optimizers import celo2_step_scale

    generator = torch.Generator().manual_seed(len(shape))
    theta = celo2_step_scale.init_scale_theta(16, generator)
    theta = {k: v + torch.randn(v.shape, generator=generator) for k, v in theta.items()}  # o ≠ 0
    param, grad, fast, slow = (torch.randn(shape, generator=generator) * scale for scale in (0.1, 1e-3, 1e-3, 1e-4))
    step = torch.tensor(17.0)
    torch_scale = celo2_step_scale.step_scale(
        {k: v.double() for k, v in theta.items()},
        celo2_step_scale.statistics(param.double(), grad.double(), fast.double(), slow.double(), step, adamw),
    )
    kernel_scale = celo2_kernel.step_scale(theta, param, grad, fast, slow, step, adamw)
    assert abs(torch_scale.item() - 1.0) > 0.05  # the network moves s: its inputs matter
    assert kernel_scale == pytest.approx(torch_scale.item(), rel=1e-5)
    other = celo2_kernel.step_scale(theta, param, grad, slow, fast, step, adamw)
    assert other != pytest.approx(kernel_scale, rel=1e-3)  # momenta swapped: another scale


def test_fused_celo2_with_a_step_scale_keeps_the_eager_trajectory():
    torch.manual_seed(0)
    config = lo.Celo2Config(step_scale_hidden=8)
    theta = celo2.init_theta(config, torch.Generator().manual_seed(1))
    theta["scale_w1"] = torch.randn(theta["scale_w1"].shape, generator=torch.Generator().manual_seed(2))
    model = torch.nn.Sequential(torch.nn.Linear(6, 12), torch.nn.Tanh(), torch.nn.Linear(12, 3))
    x, y = torch.randn(32, 6), torch.randn(32, 3)
    finals = []
    for fused in (False, True):
        net = __import__("copy").deepcopy(model)
        optimizer = lo.Celo2(net.parameters(), config=config, theta=theta, fused=fused)
        for _ in range(10):
            optimizer.zero_grad()
            torch.nn.functional.mse_loss(net(x), y).backward()
            optimizer.step()
        finals.append(torch.cat([p.detach().reshape(-1) for p in net.parameters()]))
    moved = (finals[0] - torch.cat([p.detach().reshape(-1) for p in model.parameters()])).abs().max()
    assert (finals[1] - finals[0]).abs().max() <= 1e-4 * moved

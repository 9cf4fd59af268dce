"""The port-Hamiltonian optimizer: heavy-ball as a special case, and energy dissipation."""

import math

import pytest
import torch

import learned_optim as lo
from learned_optim.optimizers.hamiltonian import _inverse_softplus, kinetic_energy

# The default network and the compact one (no hidden layer, softsign momentum feature).
ARCHITECTURES = [{}, {"hidden_size": 0, "momentum_feature": "softsign"}]


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_quadratic_kinetic_energy_and_constant_damping_is_heavy_ball(architecture):
    dissipation, gain, lr = 0.2, 1.5, 0.3
    config = lo.HamiltonianConfig(kinetic_terms=0, normalize=False, step_scale=0.1, **architecture)
    theta = lo.Hamiltonian.init_theta(config, torch.Generator().manual_seed(0))
    theta["output.weight"] = torch.zeros_like(theta["output.weight"])  # R and b no longer depend on x
    theta["output.bias"] = torch.tensor([_inverse_softplus(dissipation), _inverse_softplus(gain)])
    theta["kinetic.quadratic"] = torch.tensor([_inverse_softplus(1.0)])  # K = p²/2

    torch.manual_seed(0)
    target = torch.randn(7)
    x_learned = torch.nn.Parameter(torch.randn(7))
    x_heavy = torch.nn.Parameter(x_learned.detach().clone())
    learned = lo.Hamiltonian([x_learned], lr=lr, config=config, theta=theta)
    b = config.step_scale * gain
    heavy = torch.optim.SGD([x_heavy], lr=lr * b**2, momentum=math.exp(-dissipation))
    for _ in range(25):
        for x, optimizer in ((x_learned, learned), (x_heavy, heavy)):
            optimizer.zero_grad()
            ((x - target) ** 2).sum().backward()
            optimizer.step()
    torch.testing.assert_close(x_learned, x_heavy, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_discrete_energy_decreases_for_small_steps_on_random_quadratics(seed, normalize, architecture):
    generator = torch.Generator().manual_seed(seed)
    step_scale = 0.02 if normalize else 0.05
    config = lo.HamiltonianConfig(step_scale=step_scale, normalize=normalize, kinetic_terms=3, **architecture)
    # Random (not tuned) network weights, with a random kinetic energy mixing both kinds of term.
    theta = lo.Hamiltonian.init_theta(config, generator)
    theta["output.weight"] = torch.randn(theta["output.weight"].shape, generator=generator)
    theta["kinetic.weights"] = torch.randn(3, generator=generator)
    theta = {k: v.double() for k, v in theta.items()}
    basis = torch.randn(10, 10, generator=generator, dtype=torch.float64)
    hessian = basis @ basis.T / 10 + 0.1 * torch.eye(10, dtype=torch.float64)
    position = torch.randn(10, generator=generator, dtype=torch.float64)
    state = lo.Hamiltonian.init_state(position, config)

    def energy(position, momentum):
        return 0.5 * position @ hessian @ position + kinetic_energy(theta, momentum).sum()

    energies = [energy(position, state["momentum"])]
    for step in range(1, 401):
        direction, state = lo.Hamiltonian.update(theta, hessian @ position, state, float(step), config)
        position = position - direction
        energies.append(energy(position, state["momentum"]))
    energies = torch.stack(energies)
    increases = (energies[1:] - energies[:-1]).clamp_min(0)
    assert increases.max() <= 1e-6 * energies[0], f"energy rose by {increases.max():.3g}"
    assert energies[-1] < 0.5 * energies[0]  # and it does dissipate, not just stand still


def test_state_is_two_numbers_per_parameter_like_adam():
    param = torch.nn.Parameter(torch.randn(3, 4))
    param.grad = torch.randn(3, 4)
    optimizer = lo.Hamiltonian([param])
    optimizer.step()
    tensors = [v for k, v in optimizer.state[param].items() if k != "step"]
    assert sum(t.numel() for t in tensors) == 2 * param.numel()


def test_compact_network_has_no_hidden_layer():
    optimizer = lo.Hamiltonian([torch.nn.Parameter(torch.ones(2))], hidden_size=0, kinetic_terms=1)
    shapes = {name: tuple(value.shape) for name, value in optimizer.theta.items()}
    assert shapes == {
        "output.weight": (2, 2),
        "output.bias": (2,),
        "kinetic.quadratic": (1,),
        "kinetic.weights": (1,),
        "kinetic.scales": (1,),
    }


@pytest.mark.parametrize(
    ("override", "message"),
    [({"momentum_feature": "relu"}, "momentum_feature"), ({"hidden_size": -1}, "hidden_size")],
)
def test_invalid_config_is_refused(override, message):
    with pytest.raises(ValueError, match=message):
        lo.HamiltonianConfig(**override)
    with pytest.raises(ValueError, match=message):  # a bad value, as torch.optim raises it
        lo.Hamiltonian([torch.nn.Parameter(torch.ones(2))], **override)


@pytest.mark.parametrize("fused", [False, True])
def test_compact_network_takes_larger_default_chunks(fused):
    param = [torch.nn.Parameter(torch.ones(2))]
    compact = lo.Hamiltonian(param, hidden_size=0, fused=fused)
    assert compact.chunk_size > lo.Hamiltonian(param, fused=fused).chunk_size
    assert lo.Hamiltonian(param, hidden_size=0, fused=fused, chunk_size=5).chunk_size == 5

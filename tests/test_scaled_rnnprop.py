"""ScaledRNNprop: fresh it is RNNprop bit for bit; trained, its scale network sets each tensor's step."""

import json
import math

import pytest
import torch
from conftest import all_equal, parameters_of, small_model, train
from torch.func import vmap

import learned_optim as lo
from learned_optim.optimizers import scaled_rnnprop

CONFIG = lo.ScaledRNNpropConfig(step_scale_hidden=8)
OPTIONS = {"weight_decay": 0.0}


def _trained(optimizer_factory) -> list[torch.Tensor]:
    model = small_model()
    train(model, optimizer_factory(model.parameters()), steps=8)
    return parameters_of(model)


@pytest.mark.parametrize("fused", [False, True])
def test_fresh_it_is_rnnprop_bit_for_bit(fused):
    plain = _trained(lambda params: lo.RNNprop(params, seed=3))
    scaled = _trained(lambda params: lo.ScaledRNNprop(params, seed=3, config=CONFIG))
    assert all_equal(plain, scaled)
    if fused:  # the compiled step keeps the eager trajectory
        compiled = _trained(lambda params: lo.ScaledRNNprop(params, seed=3, config=CONFIG, fused=True))
        for a, b in zip(scaled, compiled, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_the_scale_multiplies_rnnprops_direction_within_its_bounds():
    generator = torch.Generator().manual_seed(0)
    theta = scaled_rnnprop.init_theta(CONFIG, generator)
    param, grad = torch.randn(7, 9, generator=generator), torch.randn(7, 9, generator=generator)
    state = scaled_rnnprop.init_state(param, CONFIG)
    step = torch.tensor(1.0)
    plain, _ = lo.RNNprop.update(theta, grad, state, step, CONFIG)
    limit = math.log(100.0)
    for bias, expected in ((2.0, math.exp(limit * math.tanh(2.0 / limit))), (1e6, 100.0), (-1e6, 0.01)):
        theta["scale_b1"] = torch.tensor([bias])
        scaled, _ = scaled_rnnprop.update(theta, grad, state, step, CONFIG, param=param, options=OPTIONS)
        torch.testing.assert_close(scaled, plain * expected, rtol=1e-5, atol=0)


def test_two_tensors_that_rnnprop_moves_alike_move_by_their_own_scales():
    """The parameter's RMS is an input of the scale: a tensor 10x larger gets another step, where
    RNNprop (Adam-normalised inputs only) moves both the same."""
    generator = torch.Generator().manual_seed(0)
    theta = scaled_rnnprop.init_theta(CONFIG, generator)
    theta["scale_w1"] = torch.randn(8, 1, generator=generator)
    param, grad = torch.randn(5, 6, generator=generator), torch.randn(5, 6, generator=generator)
    state = scaled_rnnprop.init_state(param, CONFIG)
    step = torch.tensor(3.0)
    small, _ = scaled_rnnprop.update(theta, grad, state, step, CONFIG, param=param, options=OPTIONS)
    large, _ = scaled_rnnprop.update(theta, grad, state, step, CONFIG, param=10 * param, options=OPTIONS)
    ratio = large / small
    torch.testing.assert_close(ratio, ratio.flatten()[0].expand_as(ratio))  # one scale per tensor
    assert abs(ratio.flatten()[0].item() - 1) > 1e-3


def test_non_finite_gradients_and_weight_decay():
    theta = scaled_rnnprop.init_theta(CONFIG, torch.Generator().manual_seed(0))
    theta["scale_b1"] = torch.tensor([1.0])
    param, grad = torch.randn(4, 5), torch.randn(4, 5)
    grad[0, 0], grad[2, 3] = float("nan"), float("inf")
    state = scaled_rnnprop.init_state(param, CONFIG)
    step = torch.tensor(1.0)
    direction, new_state = scaled_rnnprop.update(theta, grad, state, step, CONFIG, param=param, options=OPTIONS)
    assert torch.isfinite(direction).all() and direction[0, 0] == 0 and direction[2, 3] == 0
    assert all(torch.isfinite(value).all() for value in new_state.values())
    decayed, _ = scaled_rnnprop.update(theta, grad, state, step, CONFIG, param=param, options={"weight_decay": 0.1})
    torch.testing.assert_close(decayed - direction, 0.1 * param)


def test_the_update_runs_under_vmap_as_one_instance_at_a_time():
    generator = torch.Generator().manual_seed(0)
    copies = 3
    theta = scaled_rnnprop.init_theta(CONFIG, generator)
    theta["scale_w1"] = torch.randn(8, 1, generator=generator)
    thetas = {k: v + 0.01 * torch.randn(copies, *v.shape, generator=generator) for k, v in theta.items()}
    for shape in ((6, 7), (7,)):
        params = torch.randn(copies, *shape, generator=generator)
        grads = torch.randn(copies, *shape, generator=generator)
        grads[1, 0] = float("nan")
        fresh = scaled_rnnprop.init_state(torch.zeros(shape), CONFIG)
        state = {k: v.expand(copies, *v.shape).clone() for k, v in fresh.items()}

        def one(th, g, st, p):
            return scaled_rnnprop.update(th, g, st, torch.tensor(4.0), CONFIG, param=p, options=OPTIONS)

        batched, _ = vmap(one)(thetas, grads, state, params)
        for i in range(copies):
            direction, _ = one(
                {k: v[i] for k, v in thetas.items()}, grads[i], {k: v[i] for k, v in state.items()}, params[i]
            )
            torch.testing.assert_close(batched[i], direction, rtol=1e-4, atol=1e-6)


def test_meta_training_reaches_the_scale_network_and_exports_loadable_weights(tmp_path):
    from learned_optim.meta.export import export_weights
    from learned_optim.meta.trainer import MetaTrainConfig, MetaTrainer

    recipe = {"architecture": "scaled-rnnprop", "optimizer_config": {"step_scale_hidden": 4}, "task": "quadratic"}
    recipe |= {"horizons": [6], "unroll": 3, "meta_epochs": 1, "trajectories_per_epoch": 1, "meta_lr": 0.01}
    recipe |= {"validation_trajectories": 1}
    config_path = tmp_path / "tiny.json"
    config_path.write_text(json.dumps(recipe))
    trainer = MetaTrainer(MetaTrainConfig.from_file(config_path), tmp_path / "run")
    before = trainer.theta["scale_w1"].detach().clone()
    result = trainer.run(progress_bar=False)
    assert not torch.equal(result.theta["scale_w1"], before)  # the meta-gradient reached s
    out = export_weights(trainer, result, tmp_path / "weights", "pytest")
    loaded = lo.load(str(out), small_model().parameters())
    assert isinstance(loaded, lo.ScaledRNNprop) and loaded.config.step_scale_hidden == 4


def test_meta_training_starts_from_rnnprop_weights_with_a_fresh_scale(tmp_path):
    from learned_optim.meta.trainer import MetaTrainConfig, MetaTrainer

    start = lo.RNNprop([torch.nn.Parameter(torch.zeros(2))], seed=7, hidden_size=6)
    start.save_pretrained(tmp_path / "rnnprop")
    values = {"architecture": "scaled-rnnprop", "initial_weights": str(tmp_path / "rnnprop"), "task": "quadratic"}
    values |= {"optimizer_config": {"step_scale_hidden": 4}, "meta_train_only": ["scale_"]}
    trainer = MetaTrainer(MetaTrainConfig.from_dict(values), tmp_path / "run")
    assert trainer.optimizer_config == lo.ScaledRNNpropConfig(hidden_size=6, step_scale_hidden=4)
    assert all(torch.equal(trainer.theta[name], value) for name, value in start.theta.items())
    assert torch.equal(trainer.theta["scale_w1"], torch.zeros(4, 1))  # s = 1: RNNprop's trajectory exactly
    assert trainer.trained == {"scale_w0", "scale_b0", "scale_w1", "scale_b1"}
    # Weights of an architecture it does not extend are refused, as before.
    lo.Hamiltonian([torch.nn.Parameter(torch.zeros(2))]).save_pretrained(tmp_path / "hamiltonian")
    with pytest.raises(ValueError, match="are 'hamiltonian' weights"):
        MetaTrainer(MetaTrainConfig.from_dict({**values, "initial_weights": str(tmp_path / "hamiltonian")}), tmp_path)


def test_a_non_positive_hidden_size_is_refused():
    with pytest.raises(ValueError, match="step_scale_hidden"):
        lo.ScaledRNNpropConfig(step_scale_hidden=0)

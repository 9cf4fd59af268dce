"""The torch.optim contract, for every learned optimizer (see docs/architecture.md)."""

import copy
import dataclasses
import inspect
import math
import pickle
import re

import pytest
import torch
from conftest import NETWORK_OPTIMIZERS, all_equal, loss_of, none_equal, parameters_of, small_model, train

import learned_optim as lo


def test_one_line_swap_reduces_a_loss(optimizer_class):
    model = small_model()
    optimizer = optimizer_class(model.parameters(), lr=0.1)
    before = loss_of(model).item()
    for _ in range(30):
        optimizer.zero_grad()
        loss_of(model).backward()
        optimizer.step()
    # A fresh network is no good optimizer, but every step must be finite and move the params.
    after = loss_of(model).item()
    assert after == after and after != before


def test_param_groups_have_their_own_lr(optimizer_class):
    model = small_model()
    first, second = model[0], model[2]
    optimizer = optimizer_class([{"params": first.parameters()}, {"params": second.parameters(), "lr": 0.0}], lr=1.0)
    frozen = parameters_of(second)
    moving = parameters_of(first)
    train(model, optimizer, 2)
    assert all_equal(frozen, parameters_of(second))
    assert none_equal(moving, parameters_of(first))


def test_add_param_group(optimizer_class):
    model = small_model()
    optimizer = optimizer_class(model[0].parameters())
    optimizer.add_param_group({"params": model[2].parameters(), "lr": 0.5})
    assert [group["lr"] for group in optimizer.param_groups] == [optimizer.defaults["lr"], 0.5]
    before = parameters_of(model)
    train(model, optimizer, 1)
    assert none_equal(before, parameters_of(model))


def test_zero_lr_is_exactly_no_update_even_with_weight_decay(optimizer_class):
    model = small_model()
    optimizer = optimizer_class(model.parameters(), lr=0.0, weight_decay=0.1)
    before = parameters_of(model)
    train(model, optimizer, 3)
    assert all_equal(before, parameters_of(model))
    assert optimizer.state[model[0].weight]["step"].item() == 3  # the state still advances


def _one_step_delta(optimizer_class, **kwargs):
    model = small_model()
    optimizer = optimizer_class(model.parameters(), **kwargs)
    before = parameters_of(model)
    train(model, optimizer, 1)
    return [after - b for after, b in zip(parameters_of(model), before, strict=True)], before


def test_lr_multiplies_the_learned_step(optimizer_class):
    full, _ = _one_step_delta(optimizer_class, lr=1.0)
    quarter, _ = _one_step_delta(optimizer_class, lr=0.25)
    for a, b in zip(full, quarter, strict=True):
        torch.testing.assert_close(b, a * 0.25, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("shape", [(), (1,), (1, 1)], ids=["0-dim", "1", "1x1"])
def test_a_one_element_tensor_lr_of_any_shape_is_the_float_lr(optimizer_class, fused, shape):
    as_float, _ = _one_step_delta(optimizer_class, lr=0.25, weight_decay=0.1, fused=fused)
    as_tensor, _ = _one_step_delta(optimizer_class, lr=torch.full(shape, 0.25), weight_decay=0.1, fused=fused)
    for a, b in zip(as_float, as_tensor, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-8)


def test_a_tensor_lr_of_several_elements_is_refused(optimizer_class):
    with pytest.raises(ValueError, match="1-element"):
        optimizer_class([torch.nn.Parameter(torch.zeros(2))], lr=torch.tensor([0.1, 0.2]))


def test_decoupled_weight_decay(optimizer_class):
    lr, decay = 0.5, 0.2
    plain, before = _one_step_delta(optimizer_class, lr=lr)
    decayed, _ = _one_step_delta(optimizer_class, lr=lr, weight_decay=decay)
    for delta, delta_decayed, p in zip(plain, decayed, before, strict=True):
        torch.testing.assert_close(delta_decayed, delta - lr * decay * p, rtol=1e-5, atol=1e-6)


def test_maximize_equals_minimizing_the_negated_loss(optimizer_class):
    model_a, model_b = small_model(), small_model()
    opt_a = optimizer_class(model_a.parameters(), maximize=True)
    opt_b = optimizer_class(model_b.parameters())
    for step in range(3):
        opt_a.zero_grad()
        opt_b.zero_grad()
        loss_of(model_a, step).backward()
        (-loss_of(model_b, step)).backward()
        opt_a.step()
        opt_b.step()
    assert all_equal(parameters_of(model_a), parameters_of(model_b))


@pytest.mark.parametrize("maximize", [False, True])
@pytest.mark.parametrize("name", [w["name"] for w in lo.list_pretrained() if w["recommendation"] == "recommended"])
def test_recommended_weights_go_the_right_direction_with_adamw_sized_weight_decay(name, maximize):
    """torch's test_forloop_goes_right_direction, with AdamW's decay per step (lr 1e-3 × 0.1).

    The decay per step is lr · weight_decay; at the default lr of 1 that is weight_decay itself, so
    torch's weight_decay=0.1 would shrink every weight by 10% a step and no ascent could win. (A
    fresh, untrained network is no descent method, so this needs trained weights.)
    """
    torch.manual_seed(0)
    weight, bias = torch.nn.Parameter(torch.randn(10, 5)), torch.nn.Parameter(torch.randn(10))
    inputs = torch.randn(5)
    optimizer = lo.load(name, [weight, bias], maximize=maximize)
    for group in optimizer.param_groups:
        group["weight_decay"] = 1e-4 / group["lr"]

    def closure():
        optimizer.zero_grad()
        loss = (weight.mv(inputs) + bias).pow(2).sum()
        loss.backward()
        return loss

    initial = closure().item()
    for _ in range(20):
        optimizer.step(closure)
    final = closure().item()
    assert final > initial if maximize else final < initial


def test_step_with_closure_returns_the_loss(optimizer_class):
    model = small_model()
    optimizer = optimizer_class(model.parameters())

    def closure():
        optimizer.zero_grad()
        loss = loss_of(model)
        loss.backward()
        return loss

    loss = optimizer.step(closure)
    assert isinstance(loss, torch.Tensor) and loss.item() == pytest.approx(loss_of(small_model()).item())


def test_parameters_without_grad_are_skipped(optimizer_class):
    model = small_model()
    model[2].weight.requires_grad_(False)
    optimizer = optimizer_class(model.parameters())
    before = model[2].weight.detach().clone()
    train(model, optimizer, 2)
    assert torch.equal(before, model[2].weight)
    assert model[2].weight not in optimizer.state


def test_state_dict_resumes_bit_identically_in_a_fresh_optimizer(optimizer_class):
    model = small_model()
    optimizer = optimizer_class(model.parameters(), lr=0.3, weight_decay=0.01)
    train(model, optimizer, 4)
    checkpoint = copy.deepcopy({"model": model.state_dict(), "optimizer": optimizer.state_dict()})
    train(model, optimizer, 4, first_seed=4)
    expected = parameters_of(model)

    resumed_model = small_model(seed=1)
    resumed_model.load_state_dict(checkpoint["model"])
    # Different seed: the learned network itself must come from the checkpoint.
    resumed = optimizer_class(resumed_model.parameters(), lr=0.3, weight_decay=0.01, seed=123)
    resumed.load_state_dict(checkpoint["optimizer"])
    train(resumed_model, resumed, 4, first_seed=4)
    assert all_equal(expected, parameters_of(resumed_model))
    for p, q in zip(model.parameters(), resumed_model.parameters(), strict=True):
        for key, value in optimizer.state[p].items():
            assert torch.equal(value, resumed.state[q][key]), key


def test_state_dict_loads_onto_another_dtype(optimizer_class):
    model = small_model()
    optimizer = optimizer_class(model.parameters())
    train(model, optimizer, 3)
    saved = optimizer.state_dict()

    model64 = small_model(dtype=torch.float64)
    model64.load_state_dict(model.state_dict())
    optimizer64 = optimizer_class(model64.parameters())
    optimizer64.load_state_dict(saved)
    for p, q in zip(model.parameters(), model64.parameters(), strict=True):
        for key, value in optimizer.state[p].items():
            loaded = optimizer64.state[q][key]
            if key == "step":
                assert loaded.item() == 3
            else:
                assert loaded.dtype == torch.float64 and torch.equal(loaded, value.double())
    train(model64, optimizer64, 2, first_seed=3)
    assert all(torch.isfinite(p).all() for p in model64.parameters())


def test_half_precision_params_keep_float32_state_through_a_checkpoint(optimizer_class):
    model = small_model(dtype=torch.bfloat16)
    optimizer = optimizer_class(model.parameters())
    train(model, optimizer, 2)
    state = optimizer.state[model[0].weight]
    assert all(v.dtype == torch.float32 for k, v in state.items())
    fresh = optimizer_class(model.parameters())
    fresh.load_state_dict(optimizer.state_dict())
    for key, value in state.items():
        assert torch.equal(fresh.state[model[0].weight][key], value), key


def test_deepcopy_and_pickle_keep_the_learned_network(optimizer_class):
    model = small_model()
    optimizer = optimizer_class(model.parameters(), seed=7)
    train(model, optimizer, 2)
    for clone in (copy.deepcopy(optimizer), pickle.loads(pickle.dumps(optimizer))):
        assert clone.config == optimizer.config
        assert all(torch.equal(clone.theta[k], v) for k, v in optimizer.theta.items())
        assert clone.state_dict()["learned_optimizer"]["architecture"] == optimizer.architecture
    # Copied together, model and optimizer continue exactly like the originals.
    model_copy, optimizer_copy = copy.deepcopy((model, optimizer))
    train(model, optimizer, 2, first_seed=2)
    train(model_copy, optimizer_copy, 2, first_seed=2)
    assert all_equal(parameters_of(model), parameters_of(model_copy))


@pytest.mark.parametrize("optimizer_class", NETWORK_OPTIMIZERS, ids=lambda cls: cls.__name__)
def test_same_seed_same_network_and_different_seed_different(optimizer_class):
    params = [torch.nn.Parameter(torch.zeros(3))]
    a, b, c = (optimizer_class(params, seed=s).theta for s in (0, 0, 1))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


@pytest.mark.parametrize(
    "make_scheduler",
    [
        lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.0),
        lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=2, eta_min=0.0),
        lambda opt: torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=1.0, total_steps=3, cycle_momentum=False, final_div_factor=float("inf")
        ),
    ],
    ids=["StepLR", "CosineAnnealingLR", "OneCycleLR"],
)
def test_lr_schedulers_drive_the_step(optimizer_class, make_scheduler):
    model = small_model()
    optimizer = optimizer_class(model.parameters())
    scheduler = make_scheduler(optimizer)
    for step in range(2):
        train(model, optimizer, 1, first_seed=step)
        scheduler.step()
    # Each schedule has brought lr to 0 by now: the parameters must stop moving.
    assert optimizer.param_groups[0]["lr"] == 0.0
    before = parameters_of(model)
    train(model, optimizer, 1, first_seed=5)
    assert all_equal(before, parameters_of(model))


def test_grad_scaler_unscales_and_skips_inf_steps(optimizer_class):
    scaled_model, plain_model = small_model(), small_model()
    scaled_opt = optimizer_class(scaled_model.parameters())
    plain_opt = optimizer_class(plain_model.parameters())
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    for step in range(3):
        scaled_opt.zero_grad()
        scaler.scale(loss_of(scaled_model, step)).backward()
        scaler.step(scaled_opt)
        scaler.update()
        train(plain_model, plain_opt, 1, first_seed=step)
    # Power-of-two scaling is exact, so the trajectories agree to the last bit.
    assert all_equal(parameters_of(scaled_model), parameters_of(plain_model))

    before = parameters_of(scaled_model)
    scaled_opt.zero_grad()
    scaler.scale(loss_of(scaled_model) * float("inf")).backward()
    scaler.step(scaled_opt)
    scaler.update()
    assert all_equal(before, parameters_of(scaled_model))


def test_step_hooks_run(optimizer_class):
    model = small_model()
    optimizer = optimizer_class(model.parameters())
    calls = []
    optimizer.register_step_pre_hook(lambda opt, args, kwargs: calls.append("pre"))
    optimizer.register_step_post_hook(lambda opt, args, kwargs: calls.append("post"))
    train(model, optimizer, 1)
    assert calls == ["pre", "post"]


def test_conv_scalar_and_empty_parameters(optimizer_class):
    conv = torch.nn.Parameter(torch.randn(4, 3, 3, 3))
    scalar = torch.nn.Parameter(torch.tensor(1.5))
    empty = torch.nn.Parameter(torch.randn(0, 5))
    optimizer = optimizer_class([conv, scalar, empty])
    for p in (conv, scalar, empty):
        p.grad = torch.randn_like(p)
    before = conv.detach().clone(), scalar.detach().clone()
    optimizer.step()
    assert not torch.equal(before[0], conv) and not torch.equal(before[1], scalar)
    assert empty.shape == (0, 5)
    for key, value in optimizer.state[conv].items():  # state is shaped (*extra, *param.shape)
        per_tensor = key in optimizer.tensor_state  # a per-tensor statistic (e.g. Adafactor's row moments)
        assert key == "step" or per_tensor or value.shape[value.dim() - 4 :] == conv.shape, key


def test_non_contiguous_parameter(optimizer_class):
    base = torch.randn(5, 4)
    param = torch.nn.Parameter(base.t())  # a transposed, non-contiguous leaf
    assert not param.is_contiguous()
    reference = torch.nn.Parameter(base.t().contiguous())
    for p in (param, reference):
        p.grad = torch.arange(20.0).reshape(4, 5) / 10
    optimizer_class([param]).step()
    optimizer_class([reference]).step()
    assert torch.equal(param, reference)


def test_sparse_gradients_are_refused_and_nothing_changes(optimizer_class):
    embedding = torch.nn.Embedding(10, 3, sparse=True)
    dense = torch.nn.Linear(3, 1)
    optimizer = optimizer_class([*dense.parameters(), *embedding.parameters()])
    dense(embedding(torch.tensor([1, 2]))).sum().backward()
    before = [p.detach().clone() for p in (*dense.parameters(), embedding.weight)]
    with pytest.raises(RuntimeError, match="sparse gradients"):
        optimizer.step()
    after = [p.detach() for p in (*dense.parameters(), embedding.weight)]
    assert all_equal(before, after)
    assert len(optimizer.state) == 0


def test_complex_parameters_are_refused(optimizer_class):
    with pytest.raises(ValueError, match="complex"):
        optimizer_class([torch.nn.Parameter(torch.zeros(3, dtype=torch.complex64))])


def test_non_finite_gradients_leave_their_coordinates_and_state_untouched(optimizer_class):
    param = torch.nn.Parameter(torch.randn(6))
    optimizer = optimizer_class([param])
    param.grad = torch.randn(6)
    optimizer.step()
    state_before = {k: v.clone() for k, v in optimizer.state[param].items()}
    before = param.detach().clone()
    param.grad = torch.tensor([float("nan"), 1.0, float("inf"), -2.0, float("-inf"), 0.5])
    optimizer.step()
    bad = torch.tensor([True, False, True, False, True, False])
    assert torch.equal(param[bad], before[bad])
    assert not torch.equal(param[~bad], before[~bad])
    for key, value in optimizer.state[param].items():
        assert torch.isfinite(value).all(), key
        if key != "step":
            assert torch.equal(value[..., bad], state_before[key][..., bad]), key
    param.grad = torch.randn(6)
    optimizer.step()
    assert torch.isfinite(param).all()


def test_chunked_step_matches_unchunked(optimizer_class):
    whole, chunked = torch.nn.Parameter(torch.randn(37, 3)), torch.nn.Parameter(torch.randn(37, 3))
    with torch.no_grad():
        chunked.copy_(whole)
    opt_whole = optimizer_class([whole])
    opt_chunked = optimizer_class([chunked], chunk_size=10)
    for step in range(3):
        grad = torch.randn(37, 3, generator=torch.Generator().manual_seed(step))
        whole.grad, chunked.grad = grad.clone(), grad.clone()
        opt_whole.step()
        opt_chunked.step()
    torch.testing.assert_close(chunked, whole, rtol=1e-6, atol=1e-7)


def test_invalid_arguments_are_refused(optimizer_class):
    params = [torch.nn.Parameter(torch.zeros(2))]
    with pytest.raises(ValueError, match="learning rate"):
        optimizer_class(params, lr=-1.0)
    with pytest.raises(ValueError, match="weight_decay"):
        optimizer_class(params, weight_decay=-0.1)
    with pytest.raises(TypeError, match="hidden_sise"):
        optimizer_class(params, hidden_sise=3)
    defaults = optimizer_class.Config()
    numeric = next(f.name for f in dataclasses.fields(defaults) if type(getattr(defaults, f.name)) in (int, float))
    with pytest.raises(TypeError, match=f"{numeric} must be"):
        optimizer_class(params, **{numeric: "2"})


# The recurrent architectures: those whose network has a hidden size and stacked LSTM layers.
RECURRENT_OPTIMIZERS = [
    cls
    for cls in NETWORK_OPTIMIZERS
    if {"hidden_size", "num_layers"} <= {f.name for f in dataclasses.fields(cls.Config)}
]


@pytest.mark.parametrize("optimizer_class", RECURRENT_OPTIMIZERS, ids=lambda cls: cls.__name__)
def test_config_overrides_change_the_network(optimizer_class):
    optimizer = optimizer_class([torch.nn.Parameter(torch.zeros(2))], hidden_size=7, num_layers=1)
    assert optimizer.config.hidden_size == 7
    assert optimizer.theta["lstm.0.weight"].shape[0] == 28
    assert "lstm.1.weight" not in optimizer.theta


def test_repr_shows_groups_and_config(optimizer_class):
    text = repr(optimizer_class([torch.nn.Parameter(torch.zeros(2))], lr=0.5))
    assert "lr: 0.5" in text and repr(optimizer_class.Config()) in text


def test_a_number_step_in_a_loaded_state_dict_resumes_as_a_tensor_step(optimizer_class):
    """Older checkpoints and other tools store ``step`` as a number; it resumes the same trajectory."""
    model = small_model()
    optimizer = optimizer_class(model.parameters(), lr=0.3)
    train(model, optimizer, 3)
    checkpoint = copy.deepcopy({"model": model.state_dict(), "optimizer": optimizer.state_dict()})
    train(model, optimizer, 2, first_seed=3)
    expected = parameters_of(model)

    for state in checkpoint["optimizer"]["state"].values():
        state["step"] = state["step"].item()
    resumed_model = small_model()
    resumed_model.load_state_dict(checkpoint["model"])
    resumed = optimizer_class(resumed_model.parameters(), lr=0.3)
    resumed.load_state_dict(checkpoint["optimizer"])
    assert all(isinstance(state["step"], torch.Tensor) for state in resumed.state.values())
    train(resumed_model, resumed, 2, first_seed=3)
    assert all_equal(expected, parameters_of(resumed_model))


def _after_zero_gradient_steps(model, optimizer, steps=3):
    for _ in range(steps):
        for p in model.parameters():
            p.grad = torch.zeros_like(p)
        optimizer.step()
    return parameters_of(model)


@pytest.mark.parametrize("fused", [False, True])
def test_zero_gradients_since_the_start_never_move_a_coordinate(optimizer_class, fused):
    # Rows frozen by zeroing their gradients stay frozen (torch's test_step_is_noop_for_zero_grads);
    # the other rows train, and a coordinate that has seen a gradient keeps its own dynamics.
    model = small_model()
    frozen_rows = slice(0, 3)
    model[0].weight.register_hook(lambda grad: grad.index_fill(0, torch.arange(3), 0.0))
    model[0].bias.register_hook(lambda grad: grad.index_fill(0, torch.arange(3), 0.0))
    optimizer = optimizer_class(model.parameters(), fused=fused)
    before = parameters_of(model)
    train(model, optimizer, 4)
    after = parameters_of(model)
    for index in (0, 1):  # first layer's weight and bias
        assert torch.equal(after[index][frozen_rows], before[index][frozen_rows])
        assert not torch.equal(after[index][3:], before[index][3:])

    all_zero = small_model()
    optimizer = optimizer_class(all_zero.parameters(), fused=fused)
    before = parameters_of(all_zero)
    assert all_equal(before, _after_zero_gradient_steps(all_zero, optimizer))


@pytest.mark.parametrize("name", [entry["name"] for entry in lo.list_pretrained()])
def test_shipped_weights_never_move_a_coordinate_on_zero_gradients(name):
    model = small_model()
    optimizer = lo.load(name, model.parameters())
    before = parameters_of(model)
    assert all_equal(before, _after_zero_gradient_steps(model, optimizer))


def test_every_option_is_named_in_the_signature(optimizer_class):
    parameters = inspect.signature(optimizer_class).parameters
    assert not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    options = {"lr", "weight_decay", "maximize", "config", "theta", "seed", "chunk_size", "fused"}
    fields = {field.name for field in dataclasses.fields(optimizer_class.Config)}
    assert options | fields <= set(parameters)
    assert "Tensor" in str(parameters["lr"].annotation)
    # Every named config field is accepted as a keyword (as the signature promises).
    defaults = optimizer_class.Config()
    for name in fields:
        optimizer = optimizer_class([torch.nn.Parameter(torch.zeros(2))], **{name: getattr(defaults, name)})
        assert getattr(optimizer.config, name) == getattr(defaults, name)


@pytest.mark.parametrize(
    ("optimizer_class", "option", "message"),
    [
        (lo.RNNprop, {"beta1": 1.0}, "Invalid beta parameter at index 0: 1.0"),
        (lo.RNNprop, {"beta2": -0.1}, "Invalid beta parameter at index 1: -0.1"),
        (lo.RNNprop, {"num_layers": 0}, "Invalid num_layers value: 0"),
        (lo.RNNprop, {"hidden_size": 0}, "Invalid hidden_size value: 0"),
        (lo.RNNprop, {"eps": -1.0}, "Invalid epsilon value: -1.0"),
        (lo.LSTMOptimizer, {"hidden_size": 0}, "Invalid hidden_size value: 0"),
        (lo.LSTMOptimizer, {"preprocess_p": 0.0}, "Invalid preprocess_p value: 0.0"),
        (lo.Hamiltonian, {"beta": 1.0}, "Invalid beta parameter at index 0: 1.0"),
        (lo.Hamiltonian, {"kinetic_terms": -1}, "Invalid kinetic_terms value: -1"),
        (lo.Symbolic, {"beta2": 1.5}, "Invalid beta parameter at index 1: 1.5"),
        (lo.Symbolic, {"eps": 0.0}, "Invalid epsilon value: 0.0"),
    ],
    ids=lambda value: str(value) if isinstance(value, dict) else None,
)
def test_invalid_config_values_are_refused_in_torch_wording(optimizer_class, option, message):
    params = [torch.nn.Parameter(torch.zeros(2))]
    with pytest.raises(ValueError, match=re.escape(message)):
        optimizer_class(params, **option)
    name, value = next(iter(option.items()))
    with pytest.raises(ValueError, match=re.escape(message)):
        dataclasses.replace(optimizer_class.Config(), **{name: value})


def test_every_numeric_config_field_refuses_nan(optimizer_class):
    """Each architecture validates all its numbers, not only those listed above."""
    defaults = optimizer_class.Config()
    for field in dataclasses.fields(defaults):
        value = getattr(defaults, field.name)
        if type(value) is float:
            with pytest.raises(ValueError, match="Invalid"):
                dataclasses.replace(defaults, **{field.name: math.nan})
        elif type(value) is int:
            with pytest.raises(ValueError, match="Invalid"):
                dataclasses.replace(defaults, **{field.name: -1})


def test_fused_refuses_parameters_on_an_unsupported_device(optimizer_class):
    param = torch.nn.Parameter(torch.zeros(3, device="meta"))
    param.grad = torch.zeros(3, device="meta")
    with pytest.raises(RuntimeError, match="`fused=True` requires"):
        optimizer_class([param], fused=True).step()

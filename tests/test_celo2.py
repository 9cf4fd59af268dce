"""Celo2: the reference's format loads, and its trajectory matches the recorded reference to 1e-5."""

from pathlib import Path

import celo2_transcription
import pytest
import safetensors.torch
import torch
from celo2_reference_model import (
    RECORDED_STEPS,
    SCENARIOS,
    STEPS,
    ReferenceModel,
    loss_at,
    reference_weights,
    write_reference_folder,
)
from hub_server import FakeHub

import learned_optim as lo
from learned_optim.optimizers import celo2

TRAJECTORY = Path(__file__).parent / "data" / "celo2_reference" / "trajectory.safetensors"
RESUME_AT = 25


@pytest.fixture(scope="module")
def recorded():
    return safetensors.torch.load_file(str(TRAJECTORY))


@pytest.fixture
def reference_folder(tmp_path):
    return write_reference_folder(tmp_path / "celo2")


def _run(make_optimizer, scenario, resume=False, fused=False):
    """Train the reference model; returns the parameters at the recorded steps."""
    kwargs, scheduled = SCENARIOS[scenario]
    model = ReferenceModel()

    def build():
        optimizer = make_optimizer(model.param_groups(), fused=fused, **kwargs)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=STEPS) if scheduled else None
        return optimizer, scheduler

    optimizer, scheduler = build()
    seen = {}
    for step in range(1, STEPS + 1):
        optimizer.zero_grad()
        loss_at(model, step).backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        if resume and step == RESUME_AT:  # a fresh optimizer and scheduler continue from the checkpoint
            saved = (optimizer.state_dict(), scheduler.state_dict() if scheduler else None)
            optimizer, scheduler = build()
            optimizer.load_state_dict(saved[0])
            if scheduler is not None:
                scheduler.load_state_dict(saved[1])
        if step in RECORDED_STEPS:
            seen.update({f"{scenario}.{step}.{name}": p.detach().clone() for name, p in model.named_parameters()})
    return seen


def _assert_matches(seen, recorded):
    assert seen.keys() <= recorded.keys() and len(seen) > 0
    for key, value in seen.items():
        torch.testing.assert_close(value, recorded[key], rtol=0, atol=1e-5, msg=key)


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_reference_folder_loads_and_matches_the_recorded_reference(reference_folder, recorded, scenario):
    seen = _run(lambda params, **kw: lo.load(str(reference_folder), params, **kw), scenario)
    _assert_matches(seen, recorded)


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_a_state_dict_round_trip_mid_run_keeps_the_reference_trajectory(reference_folder, recorded, scenario):
    seen = _run(lambda params, **kw: lo.load(str(reference_folder), params, **kw), scenario, resume=True)
    _assert_matches(seen, recorded)


def test_fused_matches_the_recorded_reference(reference_folder, recorded):
    seen = _run(lambda params, **kw: lo.load(str(reference_folder), params, **kw), "no_orthogonalize", fused=True)
    _assert_matches(seen, recorded)


def test_the_recorded_reference_is_not_a_trivial_trajectory(recorded):
    # The comparison must be able to fail: the weights move, and the scenarios differ.
    initial = dict(ReferenceModel().named_parameters())
    for scenario in SCENARIOS:
        for name, p in initial.items():
            assert (recorded[f"{scenario}.{STEPS}.{name}"] - p).abs().max() > 1e-3, (scenario, name)
    assert (
        recorded[f"defaults.{STEPS}.fc1.weight"] - recorded[f"no_orthogonalize.{STEPS}.fc1.weight"]
    ).abs().max() > 1e-3


def test_another_network_does_not_match(recorded):
    # A different network (fresh weights) must be caught by the same comparison.
    seen = _run(lambda params, **kw: lo.Celo2(params, seed=1, **kw), "defaults")
    with pytest.raises(AssertionError):
        _assert_matches(seen, recorded)


def test_a_hub_repo_in_the_reference_format_loads_by_repo_id(reference_folder, recorded, tmp_path, monkeypatch):
    with FakeHub() as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
        hub.commit("DiamondXL/celo2", {path.name: path.read_bytes() for path in reference_folder.iterdir()})
        pretrained = lo.from_pretrained("DiamondXL/celo2", cache_dir=tmp_path / "cache")
    assert pretrained.architecture == "celo2" and pretrained.config == lo.Celo2Config()
    seen = _run(lambda params, **kw: pretrained.build(params, **kw), "defaults")
    _assert_matches(seen, recorded)


def test_our_own_format_round_trips(reference_folder, recorded, tmp_path):
    optimizer = lo.load(str(reference_folder), [torch.nn.Parameter(torch.zeros(2, 2))])
    ours = optimizer.save_pretrained(tmp_path / "ours")
    assert '"format_version"' in (Path(ours) / "config.json").read_text()
    seen = _run(lambda params, **kw: lo.load(str(ours), params, **kw), "no_orthogonalize")
    _assert_matches(seen, recorded)


def test_a_foreign_config_with_unknown_keys_is_refused(reference_folder):
    (reference_folder / "config.json").write_text('{"feature_dims": [1, 2], "hidden_size": 8}')
    with pytest.raises(lo.WeightsError, match="feature_dims"):
        lo.load(str(reference_folder), [torch.nn.Parameter(torch.zeros(2, 2))])


# -- the per-tensor contract: engines hand the update whole tensors ---------------------------------


def _trajectory(**kwargs):
    model = ReferenceModel()
    optimizer = lo.Celo2(model.param_groups(), theta=reference_weights(), **kwargs)
    for step in range(1, 6):
        optimizer.zero_grad()
        loss_at(model, step).backward()
        optimizer.step()
    return [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("chunk_size", [1, 7, None])
@pytest.mark.parametrize("fused", [False, True])
def test_chunk_size_and_fusing_do_not_change_the_numbers(chunk_size, fused):
    expected = _trajectory()
    got = _trajectory(chunk_size=chunk_size, fused=fused)
    for a, b in zip(got, expected, strict=True):
        if fused:  # compiled code reassociates sums: equal to float rounding
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
        else:
            assert torch.equal(a, b)


def test_use_adamw_for_1d_false_sends_vectors_through_the_network():
    bias = torch.nn.Parameter(torch.randn(5))
    scalar = torch.nn.Parameter(torch.tensor(0.5))
    optimizer = lo.Celo2([bias, scalar], use_adamw_for_1d=False, theta=reference_weights())
    for _ in range(3):
        bias.grad, scalar.grad = torch.randn(5), torch.randn(())
        optimizer.step()
    assert set(optimizer.state[bias]) == {"step", "momentum", "rms", "factored"}
    assert torch.isfinite(bias).all() and torch.isfinite(scalar)


def test_non_finite_gradients_in_a_matrix_leave_those_coordinates():
    weight = torch.nn.Parameter(torch.randn(4, 5))
    optimizer = lo.Celo2([weight], theta=reference_weights())
    weight.grad = torch.randn(4, 5)
    optimizer.step()
    before = weight.detach().clone()
    momentum = optimizer.state[weight]["momentum"].clone()
    grad = torch.randn(4, 5)
    grad[1, 2], grad[3, 0] = float("nan"), float("inf")
    weight.grad = grad
    optimizer.step()
    bad = ~torch.isfinite(grad)
    assert torch.equal(weight[bad], before[bad]) and not torch.equal(weight[~bad], before[~bad])
    assert torch.equal(optimizer.state[weight]["momentum"][:, bad], momentum[:, bad])
    assert all(torch.isfinite(v).all() for v in optimizer.state[weight].values())


def test_a_one_element_lr_tensor_of_any_shape_is_the_float_lr():
    as_float = _trajectory(lr=0.01)
    as_tensor = _trajectory(lr=torch.tensor([[0.01]]))
    for a, b in zip(as_float, as_tensor, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"adam_betas": (1.0, 0.95)}, "Invalid beta parameter at index 0: 1.0"),
        ({"adam_betas": (0.9, -0.1)}, "Invalid beta parameter at index 1: -0.1"),
        ({"adam_eps": -1.0}, "Invalid epsilon value: -1.0"),
        ({"weight_decay": -0.1}, "Invalid weight_decay value: -0.1"),
        ({"lr": -1.0}, "Invalid learning rate: -1.0"),
        ({"ns_dtype": "float16"}, "Invalid ns_dtype value: float16"),
    ],
)
def test_invalid_options_get_torch_messages(kwargs, message):
    with pytest.raises(ValueError, match=message):
        lo.Celo2([torch.nn.Parameter(torch.zeros(2))], **kwargs)


def test_a_param_group_with_a_bad_option_is_refused():
    optimizer = lo.Celo2([torch.nn.Parameter(torch.zeros(2))])
    with pytest.raises(ValueError, match="Invalid beta parameter at index 0"):
        optimizer.add_param_group({"params": [torch.nn.Parameter(torch.zeros(3))], "adam_betas": (2.0, 0.9)})


@pytest.mark.parametrize(
    "shape", [(), (7,), (5, 9), (9, 5), (4, 2, 3, 3), (2, 3, 5), (3, 3, 3, 3), (6, 4, 1, 1), (5, 1, 1)]
)
@pytest.mark.parametrize(
    "options",
    [{"orthogonalize": False}, {"exp_mult": 0.5, "rmsmult": 2.0, "param_scale_mult": True}],
    ids=["base", "all-options"],
)
@pytest.mark.parametrize("block_elements", [1, 7, celo2.BLOCK_ELEMENTS])
def test_the_fast_learned_step_is_the_reference_transcription(shape, options, block_elements):
    # In float64, so that only a difference in the math (not float32 rounding, which Newton–Schulz
    # amplifies) can exceed the tolerance.
    generator = torch.Generator().manual_seed(len(shape))
    theta = {k: v.double() for k, v in reference_weights().items()}
    options = {**celo2.DEFAULT_OPTIONS, **options, "use_adamw_for_1d": False}
    param = torch.randn(shape, generator=generator, dtype=torch.float64)
    state = celo2.init_state(param, lo.Celo2Config(), options)
    state = {k: v + torch.rand(v.shape, generator=generator, dtype=torch.float64) for k, v in state.items()}
    grad = torch.randn(shape, generator=generator, dtype=torch.float64)
    fast, fast_state = celo2.learned_step(theta, param, grad, state, lo.Celo2Config(), options, block_elements)
    slow, slow_state = celo2_transcription.learned_step(theta, param, grad, state, lo.Celo2Config(), options)
    torch.testing.assert_close(fast, slow, rtol=0, atol=1e-10)
    for key, value in slow_state.items():
        torch.testing.assert_close(fast_state[key], value, rtol=0, atol=1e-12)


def test_factored_dims_break_ties_in_axis_order():
    assert celo2.factored_dims((3, 3, 3, 3)) == (2, 3)
    assert celo2.factored_dims((64, 32)) == (1, 0)
    assert celo2.factored_dims((5,)) is None


def test_newton_schulz_orthogonalises():
    x = torch.randn(6, 9, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    singular = torch.linalg.svdvals(celo2.newton_schulz(x, (3.4445, -4.7750, 2.0315), 10, 1e-8))
    assert ((singular > 0.6) & (singular < 1.3)).all()  # the quintic's band around 1


# -- meta-training runs the architecture like the others -----------------------------------------


def test_meta_training_celo2_with_an_imitation_warm_start_writes_loadable_weights(tmp_path):
    from learned_optim.meta.export import export_weights
    from learned_optim.meta.trainer import MetaTrainConfig, MetaTrainer

    config = MetaTrainConfig(
        architecture="celo2",
        task="mnist-mlp",
        horizons=[4],
        unroll=2,
        meta_epochs=1,
        trajectories_per_epoch=1,
        inner_lr=0.01,
        validation_trajectories=1,
        imitation_teacher="adam",
        imitation_epochs=1,
    )
    trainer = MetaTrainer(config, tmp_path / "run")
    before = {k: v.detach().clone() for k, v in trainer.theta.items()}
    result = trainer.run(progress_bar=False)
    assert any(not torch.equal(before[k], v) for k, v in result.theta.items())
    weights = export_weights(trainer, result, tmp_path / "weights", "pytest")
    optimizer = lo.load(str(weights), [torch.nn.Parameter(torch.randn(3, 4))])
    assert isinstance(optimizer, lo.Celo2)


def test_newton_schulz_in_bfloat16_is_the_float32_step_to_bfloat16_rounding():
    weight = torch.nn.Parameter(torch.randn(16, 24, generator=torch.Generator().manual_seed(1)))
    steps = {}
    for ns_dtype in ("float32", "bfloat16"):
        param = torch.nn.Parameter(weight.detach().clone())
        optimizer = lo.Celo2([param], ns_dtype=ns_dtype, theta=reference_weights())
        param.grad = torch.randn(16, 24, generator=torch.Generator().manual_seed(2))
        optimizer.step()
        steps[ns_dtype] = (weight - param).detach()
        assert param.dtype == torch.float32 and optimizer.state[param]["momentum"].dtype == torch.float32
    assert not torch.equal(steps["bfloat16"], steps["float32"])  # the products did run in bfloat16
    torch.testing.assert_close(steps["bfloat16"], steps["float32"], rtol=0, atol=0.05 * steps["float32"].abs().max())

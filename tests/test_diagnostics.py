"""Neural-Mechanics constraints: exact for gradients, kept by SGD, broken by Adam."""

import pytest
import torch
from torch import nn

import learned_optim as lo
from learned_optim.diagnostics import (
    ROUNDING_SENSITIVITY_LIMIT,
    SymmetryMonitor,
    conserved,
    find_symmetries,
    relative_deviations,
    rounding_sensitivity,
    symmetry_penalty,
)
from learned_optim.meta.tasks.images import cnn_bn, mlp


def _data(shape, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(32, *shape, generator=generator), torch.randint(0, 10, (32,), generator=generator)


def _relative(structure, field, params):
    return relative_deviations(structure, field, params).max()


def _gradients(model, inputs, labels):
    model.zero_grad()
    nn.functional.cross_entropy(model(inputs), labels).backward()
    params = {k: v.detach() for k, v in model.named_parameters()}
    return params, {k: v.grad.detach() for k, v in model.named_parameters()}


def test_detects_rescale_translation_and_scale_structures():
    kinds = [s.kind for s in find_symmetries(mlp((784, 20, 20, 10), nn.ReLU))]
    assert kinds == ["rescale", "rescale", "translation"]
    assert [s.kind for s in find_symmetries(mlp((784, 20, 10), nn.Sigmoid))] == ["translation"]
    assert [s.kind for s in find_symmetries(cnn_bn())] == ["scale", "rescale", "scale", "rescale", "translation"]


def test_relu_mlp_gradients_satisfy_rescale_and_translation_per_unit():
    torch.manual_seed(0)
    model = mlp((12, 16, 16, 10), nn.ReLU).double()
    inputs, labels = _data((12,))
    params, grads = _gradients(model, inputs.double(), labels)
    for structure in find_symmetries(model):
        assert _relative(structure, grads, params) < 1e-6, structure.name


def test_batchnorm_cnn_gradients_satisfy_scale_and_rescale():
    torch.manual_seed(0)
    model = cnn_bn().double()
    # BatchNorm's ε makes scale invariance approximate (relative error ~ ε/σ²); with ε ≈ 0 it is exact.
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.eps = 1e-30  # torch refuses 0 in training; negligible in float64
    inputs, labels = _data((1, 28, 28))
    params, grads = _gradients(model, inputs.double(), labels)
    structures = find_symmetries(model)
    assert {s.kind for s in structures} == {"scale", "rescale", "translation"}
    for structure in structures:
        assert _relative(structure, grads, params) < 1e-6, structure.name


def _train_with_monitor(optimizer_factory, steps=3):
    torch.manual_seed(0)
    model = mlp((12, 16, 10), nn.ReLU).double()
    optimizer = optimizer_factory(model.parameters())
    monitor = SymmetryMonitor(model, optimizer, record_steps=range(steps))
    for step in range(steps):
        inputs, labels = _data((12,), seed=step)
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(inputs.double()), labels).backward()
        optimizer.step()
    monitor.close()
    return monitor


def test_sgd_update_deviations_equal_gradient_deviations():
    monitor = _train_with_monitor(lambda p: torch.optim.SGD(p, lr=0.1))
    assert len(monitor.records) == 3
    for record in monitor.records:
        for entry in record["structures"].values():
            torch.testing.assert_close(
                torch.tensor(entry["update"]["per_unit"]),
                torch.tensor(entry["gradient"]["per_unit"]),
                rtol=1e-6,
                atol=1e-9,
            )


@pytest.mark.parametrize(
    "factory", [lambda p: torch.optim.Adam(p, lr=0.01), lambda p: lo.RNNprop(p, lr=0.1)], ids=["adam", "rnnprop"]
)
def test_adaptive_and_learned_updates_break_the_constraints(factory):
    monitor = _train_with_monitor(factory)
    last = monitor.records[-1]["structures"]
    for entry in last.values():
        assert entry["update"]["abs_sum"] > 1e3 * max(entry["gradient"]["abs_sum"], 1e-12)


def test_monitor_skips_unrecorded_steps_and_conserved_quantities_are_per_unit():
    torch.manual_seed(0)
    model = mlp((12, 16, 10), nn.ReLU)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    monitor = SymmetryMonitor(model, optimizer, record_steps=[1])
    for step in range(3):
        inputs, labels = _data((12,), seed=step)
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(inputs), labels).backward()
        optimizer.step()
    assert [r["step"] for r in monitor.records] == [1]
    rescale = find_symmetries(model)[0]
    assert conserved(rescale, dict(model.named_parameters())).shape == (16,)


def test_diagnose_report_end_to_end(tmp_path):
    from learned_optim.diagnostics.report import diagnose, write_report

    report = diagnose("mnist-mlp-relu", ["sgd", "sgd-wd", "adam"], steps=6, every=3)
    paths = write_report(report, tmp_path)
    assert [p.name for p in paths] == ["diagnostics.json", "deviations.png", "conserved.png"]
    assert all(p.stat().st_size > 0 for p in paths)
    runs = report["runs"]
    assert [r["step"] for r in runs["adam"]["records"]] == [0, 3]
    sgd = runs["sgd"]["records"][-1]["structures"]
    adam = runs["adam"]["records"][-1]["structures"]
    for name, entry in sgd.items():
        assert adam[name]["update"]["abs_sum"] > 100 * entry["update"]["abs_sum"], name


def test_symmetry_penalty_is_zero_for_gradients_and_positive_for_adam_like_updates():
    torch.manual_seed(0)
    model = mlp((12, 16, 10), nn.ReLU).double()
    params, grads = _gradients(model, _data((12,))[0].double(), _data((12,))[1])
    structures = find_symmetries(model)
    assert symmetry_penalty(structures, params, grads) < 1e-20
    signs = {k: v.sign() for k, v in grads.items()}  # sign descent: Adam's first step
    assert symmetry_penalty(structures, params, signs) > 1e-3


@pytest.mark.parametrize("name", [entry["name"] for entry in lo.list_pretrained()])
def test_shipped_optimizers_do_not_amplify_rounding(name):
    """Scaling every gradient by 1 + 1e-6 must not change 20 steps' result by more than the limit
    (a chaotic optimizer gives different results under DDP and in one process)."""
    assert rounding_sensitivity(lambda params: lo.load(name, params)) < ROUNDING_SENSITIVITY_LIMIT


def test_the_rounding_probe_tells_a_chaotic_optimizer_from_a_smooth_one():
    smooth = rounding_sensitivity(lambda params: torch.optim.SGD(params, lr=0.1, momentum=0.9))
    chaotic = rounding_sensitivity(lambda params: torch.optim.SGD(params, lr=10.0))  # unstable: it diverges
    assert smooth < 1e-5 < ROUNDING_SENSITIVITY_LIMIT < chaotic

"""Task distributions: deterministic draws, every family covered and under the parameter cap, each family trainable."""

import math

import pytest
import torch

from learned_optim.meta.tasks import TASK_DISTRIBUTIONS, get_task_distribution
from learned_optim.meta.tasks.distributions import (
    ACTIVATIONS,
    FAMILIES,
    GENERAL_FAMILIES,
    GENERAL_MAX_PARAMETERS,
    MAX_PARAMETERS,
    SPEC_DRAWERS,
    build_module,
    build_task,
    parameter_count,
)
from learned_optim.meta.tasks.text import VOCABULARY, CharRNN, split_of_file, stdlib_files, stdlib_text_splits
from learned_optim.meta.trainer import MetaTrainConfig


def draw_specs(count: int, seed: int, distribution: str = "small-tasks") -> list:
    generator = torch.Generator().manual_seed(seed)
    return [TASK_DISTRIBUTIONS[distribution].draw_spec(generator) for _ in range(count)]


def test_draws_are_deterministic_cover_every_family_and_respect_the_cap():
    specs = draw_specs(200, seed=0)
    assert specs == draw_specs(200, seed=0)
    assert specs != draw_specs(200, seed=1)
    assert {spec.family for spec in specs} == set(FAMILIES)
    assert all(parameter_count(spec) <= MAX_PARAMETERS for spec in specs)
    images = [spec for spec in specs if spec.family != "char-lm"]
    assert {(spec.dataset, spec.image_size, spec.normalised) for spec in images} == {
        (dataset, size, normalised)
        for dataset in ("MNIST", "FashionMNIST")
        for size in (28, 14)
        for normalised in (True, False)
    }
    mlps = [spec for spec in specs if spec.family == "mlp"]
    assert {spec.activation for spec in mlps} == set(ACTIVATIONS)
    assert {len(spec.hidden) for spec in mlps} == {1, 2, 3}
    assert all(16 <= width <= 256 for spec in mlps for width in spec.hidden)
    cnns = [spec for spec in specs if spec.family == "cnn"]
    assert {spec.batch_norm for spec in cnns} == {True, False}
    assert all(8 <= channels <= 16 for spec in cnns for channels in spec.channels)
    assert all(0.5 <= spec.init_scale <= 2.0 for spec in specs)
    assert all(32 <= spec.batch_size <= 256 for spec in images)
    assert len({spec.name for spec in specs}) > 190  # names tell instances apart


def test_general_tasks_cover_the_wider_families_under_their_cap():
    specs = draw_specs(300, seed=0, distribution="general-tasks")
    assert {spec.family for spec in specs} == set(GENERAL_FAMILIES)
    counts = [parameter_count(spec) for spec in specs]
    assert max(counts) <= GENERAL_MAX_PARAMETERS and max(counts) > 2 * MAX_PARAMETERS
    assert {spec.cell for spec in specs if spec.family == "rnn-lm"} == {"gru", "lstm"}
    assert {spec.blocks for spec in specs if spec.family == "resnet"} == {1, 2, 3}


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_the_written_out_recurrent_cells_are_torchs(cell):
    torch.manual_seed(0)
    model = CharRNN(12, cell)
    reference = (torch.nn.GRU if cell == "gru" else torch.nn.LSTM)(12, 12, batch_first=True)
    with torch.no_grad():
        reference.weight_ih_l0.copy_(model.input_gates.weight)
        reference.bias_ih_l0.copy_(model.input_gates.bias)
        reference.weight_hh_l0.copy_(model.hidden_gates.weight)
        reference.bias_hh_l0.copy_(model.hidden_gates.bias)
    tokens = torch.randint(0, VOCABULARY, (3, 7))
    expected = model.head(reference(model.embed(tokens))[0])
    torch.testing.assert_close(model(tokens), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("family", ["resnet", "rnn-lm"])
def test_the_wider_families_run_under_vmap(family):
    task = build_task(first_spec(family, "general-tasks"))
    params = [task.init(torch.Generator().manual_seed(seed)) for seed in (0, 1)]
    assert task.parameter_names  # the template module is built on first use: outside vmap
    stacked = {name: torch.stack([p[name] for p in params]) for name in params[0]}
    batch = task.sample(torch.Generator().manual_seed(0), "train")
    losses = torch.func.vmap(task.loss, in_dims=(0, None))(stacked, batch)
    for index in range(2):
        torch.testing.assert_close(losses[index], task.loss(params[index], batch), rtol=1e-5, atol=1e-6)


def test_image_mlps_draws_only_mlps():
    assert {spec.family for spec in draw_specs(50, seed=0, distribution="image-mlps")} == {"mlp"}


def test_parameter_counts_are_those_of_the_built_modules():
    generator = torch.Generator().manual_seed(0)
    for family, draw in SPEC_DRAWERS.items():
        for _ in range(5):
            spec = draw(generator)
            built = sum(p.numel() for p in build_module(spec).parameters())
            assert parameter_count(spec) == built, (family, spec)


def first_spec(family: str, distribution: str = "small-tasks", **fields):
    """The first drawn spec of ``family`` with the given fields."""
    for spec in draw_specs(300, seed=0, distribution=distribution):
        if spec.family == family and all(getattr(spec, k) == v for k, v in fields.items()):
            return spec
    raise AssertionError(f"no {family} spec with {fields}")


@pytest.mark.parametrize(
    ("family", "fields", "classes"),
    [
        ("mlp", {"image_size": 14, "normalised": False}, 10),
        ("cnn", {"batch_norm": True, "image_size": 28}, 10),
        ("cnn", {"batch_norm": False, "dataset": "FashionMNIST"}, 10),
        ("char-lm", {}, VOCABULARY),
        ("wide-mlp", {"distribution": "general-tasks"}, 10),
        ("resnet", {"distribution": "general-tasks"}, 10),
        ("rnn-lm", {"distribution": "general-tasks", "cell": "gru"}, VOCABULARY),
        ("rnn-lm", {"distribution": "general-tasks", "cell": "lstm"}, VOCABULARY),
    ],
)
def test_every_family_builds_a_task_that_trains(family, fields, classes):
    spec = first_spec(family, **fields)
    task = build_task(spec)
    assert task.name == spec.name
    params = task.init(torch.Generator().manual_seed(0))
    again = task.init(torch.Generator().manual_seed(0))
    assert all(torch.equal(params[k], again[k]) for k in params)
    assert sum(params[name].numel() for name in task.parameter_names) == parameter_count(spec)
    leaves = {k: (v.requires_grad_() if k in task.parameter_names else v) for k, v in params.items()}
    inputs, targets = task.sample(torch.Generator().manual_seed(0), "train")
    assert len(inputs) == spec.batch_size
    loss = task.loss(leaves, (inputs, targets))
    # Near chance at initialisation, however the initialisation was scaled.
    assert math.log(classes) / 3 < loss.item() < 3 * math.log(classes)
    loss.backward()
    gradients = [leaves[name].grad for name in task.parameter_names]
    assert all(g is not None and torch.isfinite(g).all() for g in gradients)
    assert any(g.abs().sum() > 0 for g in gradients)


def test_image_inputs_are_downsampled_and_raw_or_normalised():
    raw = build_task(first_spec("mlp", image_size=14, normalised=False, dataset="MNIST"))
    normalised = build_task(first_spec("mlp", image_size=14, normalised=True, dataset="MNIST"))
    raw_inputs, _ = raw.sample(torch.Generator().manual_seed(0), "valid")
    normalised_inputs, _ = normalised.sample(torch.Generator().manual_seed(0), "valid")
    assert raw_inputs.shape[1] == 14 * 14
    assert raw_inputs.min() >= -1e-6 and raw_inputs.max() <= 1 + 1e-6 and raw_inputs.max() > 0.9
    assert normalised_inputs.min() < -0.3  # the background is below the mean


def test_text_is_the_stdlib_split_by_file():
    files = stdlib_files()
    assert len(files) > 50
    assert [split_of_file(i) for i in range(11)] == ["valid", *["train"] * 4, "test", *["train"] * 4, "valid"]
    splits = stdlib_text_splits()
    assert len(splits["train"]) > 5 * len(splits["valid"]) > 0
    assert int(splits["train"].max()) < VOCABULARY
    task = build_task(first_spec("char-lm"))
    inputs, targets = task.sample(torch.Generator().manual_seed(0), "valid")
    assert torch.equal(inputs[:, 1:], targets[:, :-1])  # targets are the next byte


def test_recipes_name_a_task_or_a_distribution():
    assert MetaTrainConfig(task="image-mlps").task == "image-mlps"
    both = r"choose a task from .*'quadratic'.* or a task distribution from .*'small-tasks'"
    with pytest.raises(ValueError, match=both):
        MetaTrainConfig(task="small-task")
    with pytest.raises(KeyError, match="small-tasks"):
        get_task_distribution("small-task")


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"estimator": "es"}, "Invalid estimator"),
        ({"estimator": "pes", "second_order": True}, "second_order"),
        ({"estimator": "pes", "pes_sigma": 0.0}, "pes_sigma"),
        ({"pes_particles": 0}, "pes_particles"),
        ({"tasks_per_step": 0}, "tasks_per_step"),
        ({"task": "small-tasks", "symmetry_weight": 0.1}, "one task"),
    ],
)
def test_estimator_settings_are_validated(values, message):
    with pytest.raises(ValueError, match=message):
        MetaTrainConfig(**values)

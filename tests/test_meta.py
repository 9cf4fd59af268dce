"""Meta-training: unrolls, imitation, curriculum, checkpoints and resume."""

import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import safetensors
import torch
from conftest import MatrixQuadraticTask, all_equal, meta_task_for

import learned_optim as lo
from learned_optim.meta import trainer as trainer_module
from learned_optim.meta.imitation import imitation_trajectory
from learned_optim.meta.inner_step import init_optimizer_state
from learned_optim.meta.tasks import get_task
from learned_optim.meta.tasks.quadratic import QuadraticTask
from learned_optim.meta.tasks.rescaled import RescaledTask
from learned_optim.meta.trainer import CHECKPOINT_NAME, MetaTrainConfig, MetaTrainer
from learned_optim.meta.unroll import InnerState, compiled, meta_loss, start, unroll


def test_functional_unroll_follows_the_runtime_optimizer(optimizer_class):
    """The meta-trainer's inner loop and Optimizer.step are the same optimizer, numerically."""
    task = get_task("quadratic")
    config = optimizer_class.Config()
    theta = optimizer_class.init_theta(config, torch.Generator().manual_seed(3))
    inner = start(optimizer_class, config, task, torch.Generator().manual_seed(0))
    _, after = unroll(optimizer_class, theta, config, task, inner, torch.Generator(), 6, lr=0.5)

    params = task.init(torch.Generator().manual_seed(0))
    x = torch.nn.Parameter(params["theta"].clone())
    optimizer = optimizer_class([x], lr=0.5, theta=theta)
    for _ in range(6):
        optimizer.zero_grad()
        task.loss({**params, "theta": x}, None).backward()
        optimizer.step()
    torch.testing.assert_close(after.params["theta"].detach(), x.detach(), rtol=1e-6, atol=1e-7)


def test_meta_gradient_reaches_every_weight_and_second_order_differs(optimizer_class):
    task = meta_task_for(optimizer_class)
    config = optimizer_class.Config()
    gradients = {}
    # Celo2's and the step scale's ReLU networks have no gradient at all-zero weights: start from drawn ones.
    generator = torch.Generator().manual_seed(3) if optimizer_class in (lo.Celo2, lo.ScaledRNNprop) else None
    for second_order in (False, True):
        initial = optimizer_class.init_theta(config, generator and torch.Generator().manual_seed(3))
        if "scale_w1" in initial:  # a fresh step scale's zero output layer passes no gradient to its first
            initial["scale_w1"] = 0.1 * torch.randn(
                initial["scale_w1"].shape, generator=torch.Generator().manual_seed(4)
            )
        theta = {k: v.requires_grad_() for k, v in initial.items()}
        inner = start(optimizer_class, config, task, torch.Generator().manual_seed(1))
        losses, _ = unroll(optimizer_class, theta, config, task, inner, torch.Generator(), 5, second_order=second_order)
        assert losses.shape == (5,)
        meta_loss(losses, "log_sum").backward()
        assert all(
            v.grad is not None and torch.isfinite(v.grad).all() and v.grad.abs().sum() > 0 for v in theta.values()
        )
        gradients[second_order] = [v.grad for v in theta.values()]
    assert not all_equal(gradients[False], gradients[True])


@pytest.mark.slow
def test_compiled_unroll_gives_the_eager_losses_and_meta_gradient(optimizer_class):
    """``MetaTrainConfig(compile=True)`` changes speed, not the meta-gradient (beyond rounding)."""
    task = meta_task_for(optimizer_class)
    lr = 1e-2 if optimizer_class is lo.Celo2 else 1.0  # Celo2's steps have RMS 1: its lr is small
    # Celo2 in float64: Newton–Schulz's backward amplifies float32 rounding (compiled, the reference
    # transcription of its step runs; eager, its blocked fast step) to several percent of single
    # meta-gradient entries, far beyond any tolerance that would still catch a wrong gradient.
    dtype = torch.float64 if optimizer_class is lo.Celo2 else torch.float32
    config = optimizer_class.Config()
    results = []
    for architecture in (optimizer_class, compiled(optimizer_class)):
        initial = optimizer_class.init_theta(config, torch.Generator().manual_seed(3))
        theta = {k: v.to(dtype).requires_grad_() for k, v in initial.items()}
        params = {k: v.to(dtype) for k, v in task.init(torch.Generator().manual_seed(1)).items()}
        inner = InnerState(params, init_optimizer_state(architecture, config, task.parameter_names, params))
        for _ in range(2):  # the second unroll starts from a state that carried a graph
            losses, inner = unroll(architecture, theta, config, task, inner, torch.Generator().manual_seed(2), 5, lr=lr)
            meta_loss(losses).backward()
            inner = inner.detached()
        results.append((losses.detach(), [v.grad for v in theta.values()]))
    (eager_losses, eager_grads), (compiled_losses, compiled_grads) = results
    assert compiled(optimizer_class).update is not optimizer_class.update
    torch.testing.assert_close(compiled_losses, eager_losses, rtol=1e-5, atol=1e-6)
    for compiled_grad, eager_grad in zip(compiled_grads, eager_grads, strict=True):
        torch.testing.assert_close(compiled_grad, eager_grad, rtol=1e-4, atol=1e-6)


# RNNprop sees only normalised gradients, so it can imitate Adam but not SGD; the LSTM sees log|g|.
@pytest.mark.parametrize(
    ("architecture", "teacher", "teacher_lr"), [(lo.LSTMOptimizer, "sgd", 0.01), (lo.RNNprop, "adam", 0.05)]
)
def test_imitation_learns_to_reproduce_a_teacher(architecture, teacher, teacher_lr):
    task = QuadraticTask()
    config = architecture.Config()
    theta = {
        k: v.requires_grad_() for k, v in architecture.init_theta(config, torch.Generator().manual_seed(0)).items()
    }
    meta_optimizer = torch.optim.Adam(theta.values(), lr=1e-2)

    def meta_step(loss):
        meta_optimizer.zero_grad()
        loss.backward()
        meta_optimizer.step()

    generator = torch.Generator().manual_seed(0)
    history = []
    for _ in range(40):
        history += imitation_trajectory(
            architecture,
            theta,
            config,
            task,
            generator,
            teacher="sgd",
            teacher_lr=0.01,
            horizon=10,
            unroll=5,
            inner_lr=1.0,
            meta_step=meta_step,
        )
    assert sum(history[-10:]) / 10 < 0.8 * sum(history[:10]) / 10


def test_imitation_runs_a_per_tensor_architecture_through_the_same_inner_step():
    task = MatrixQuadraticTask()
    config = lo.Celo2.Config()
    theta = {k: v.requires_grad_() for k, v in lo.Celo2.init_theta(config, torch.Generator().manual_seed(0)).items()}
    norms = []

    def meta_step(loss):
        gradients = torch.autograd.grad(loss, list(theta.values()))
        norms.append(sum(float(g.abs().sum()) for g in gradients))

    losses = imitation_trajectory(
        lo.Celo2,
        theta,
        config,
        task,
        torch.Generator().manual_seed(0),
        teacher="adam",
        teacher_lr=0.01,
        horizon=6,
        unroll=3,
        inner_lr=0.01,
        meta_step=meta_step,
    )
    assert len(losses) == 2 and all(0 < loss < float("inf") for loss in losses)
    assert all(0 < norm < float("inf") for norm in norms)


def test_rescaled_task_is_the_same_problem():
    task = RescaledTask(QuadraticTask(), log_range=2.0)
    params = task.init(torch.Generator().manual_seed(0))
    plain = QuadraticTask().init(torch.Generator().manual_seed(0))
    plain["theta"] = torch.randn(10)
    params["theta"] = plain["theta"] / params["rescale.theta"]
    assert params["rescale.theta"] != 1.0
    torch.testing.assert_close(task.loss(params, None), QuadraticTask().loss(plain, None))


def test_image_tasks_have_disjoint_halves_and_fixed_shapes():
    from learned_optim.meta.tasks.images import image_splits

    splits = image_splits("MNIST")
    assert len(splits["train"][0]) == len(splits["valid"][0]) == 30000 and len(splits["test"][0]) == 10000
    train_rows = {hash(row.numpy().tobytes()) for row in splits["train"][0][:2000]}
    valid_rows = {hash(row.numpy().tobytes()) for row in splits["valid"][0][:2000]}
    assert len(train_rows & valid_rows) < 5  # MNIST has a few duplicate images, not whole halves
    task = get_task("mnist-cnn-bn")
    params = task.init(torch.Generator().manual_seed(0))
    assert "1.running_mean" in params and "1.running_mean" not in task.parameter_names
    loss = task.loss(params, task.sample(torch.Generator().manual_seed(0), "valid"))
    assert loss.shape == () and 1.5 < loss.item() < 3.5
    again = get_task("mnist-cnn-bn").init(torch.Generator().manual_seed(0))
    assert all(torch.equal(params[k], again[k]) for k in params)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"horizons": [30], "unroll": 20}, "multiple of unroll"),
        ({"imitation_epochs": 1}, "imitation_teacher"),
        ({"weighting": "max"}, "weighting"),
        ({"horizon": 100}, "unknown keys"),
    ],
)
def test_bad_configs_are_refused(change, message):
    with pytest.raises(ValueError, match=message):
        MetaTrainConfig.from_dict(change)


QUADRATIC_RUN = {
    "architecture": "lstm",
    "task": "quadratic",
    "horizons": [10, 20],
    "unroll": 5,
    "meta_epochs": 40,
    "trajectories_per_epoch": 3,
    "validation_trajectories": 2,
    "patience": 1,
    "meta_lr": 0.003,
    "imitation_teacher": "momentum",
    "imitation_lr": 0.05,
    "imitation_epochs": 1,
    "rescale": 0.5,
    "seed": 4,
}


def meta_train_command(config_path, run_dir, *extra):
    return [
        sys.executable,
        "-m",
        "learned_optim",
        "meta-train",
        str(config_path),
        "--run-dir",
        str(run_dir),
        "--no-progress",
        *extra,
    ]


def _progress(run_dir):
    try:
        with safetensors.safe_open(run_dir / CHECKPOINT_NAME, framework="pt") as handle:
            return json.loads(handle.metadata()["progress"])
    except (OSError, KeyError, safetensors.SafetensorError):
        return None


@pytest.mark.slow
def test_sigkilled_run_resumes_to_the_same_weights(tmp_path):
    config_path = tmp_path / "quadratic.json"
    config_path.write_text(json.dumps(QUADRATIC_RUN))
    torch.set_num_threads(1)
    reference = MetaTrainer(MetaTrainConfig.from_file(config_path), tmp_path / "reference").run(progress_bar=False)

    run_dir = tmp_path / "killed"
    command = meta_train_command(config_path, run_dir, "--threads", "1")
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=dict(os.environ))
    deadline = time.time() + 120
    while time.time() < deadline:
        progress = _progress(run_dir)
        if progress and progress["epoch"] >= 3 and progress["trajectory"] >= 1:
            break
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed_at = _progress(run_dir)
    assert killed_at is not None and killed_at["epoch"] < QUADRATIC_RUN["meta_epochs"] + 1, "killed too late"

    resumed = MetaTrainer(MetaTrainConfig.from_file(config_path), run_dir).run(resume=True, progress_bar=False)
    assert resumed.progress.history == [
        {**row, "minutes": resumed.progress.history[i]["minutes"]} for i, row in enumerate(reference.progress.history)
    ]
    assert all_equal(list(resumed.theta.values()), list(reference.theta.values()))
    assert all_equal(list(resumed.best_theta.values()), list(reference.best_theta.values()))
    assert {row["horizon"] for row in reference.progress.history} == {10, 20}  # the curriculum moved on
    assert (run_dir / "training.png").stat().st_size > 0
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == QUADRATIC_RUN["meta_epochs"] + 1


def test_resuming_with_another_config_is_refused_but_its_schedule_may_change(tmp_path):
    config = MetaTrainConfig.from_dict({**QUADRATIC_RUN, "meta_epochs": 1, "imitation_epochs": 0})
    MetaTrainer(config, tmp_path).run(progress_bar=False)
    other = MetaTrainConfig.from_dict({**QUADRATIC_RUN, "meta_lr": 0.01, "meta_epochs": 1, "imitation_epochs": 0})
    with pytest.raises(ValueError, match="another config"):
        MetaTrainer(other, tmp_path).run(resume=True, progress_bar=False)
    schedule = {"meta_epochs": 3, "patience": 5, "max_epochs_per_horizon": 1, "description": "extended"}
    extended = MetaTrainConfig.from_dict({**QUADRATIC_RUN, "imitation_epochs": 0, **schedule})
    result = MetaTrainer(extended, tmp_path).run(resume=True, progress_bar=False)
    assert [row["epoch"] for row in result.progress.history] == [1, 2, 3]  # the first epoch is not repeated
    # With patience 5 no stall moves the curriculum: the second epoch at horizon 10 is its last.
    assert [row["horizon"] for row in result.progress.history] == [10, 10, 20]


def test_meta_train_cli_writes_loadable_weights(tmp_path):
    config_path = tmp_path / "tiny.json"
    config_path.write_text(json.dumps({**QUADRATIC_RUN, "meta_epochs": 2, "description": "tiny run"}))
    out = tmp_path / "weights" / "tiny-lstm"
    result = subprocess.run(
        meta_train_command(config_path, tmp_path / "run", "--out", str(out), "--coordinate-threads", "2"),
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    pretrained = lo.from_pretrained(out)
    assert pretrained.architecture == "lstm" and pretrained.description == "tiny run"
    assert pretrained.recipe["config"]["task"] == "quadratic" and pretrained.recipe["seed"] == 4
    assert "learned-optim meta-train" in pretrained.recipe["command"]
    assert pretrained.recipe["command"].endswith("--coordinate-threads 2")
    assert "meta_validation" in pretrained.metrics
    assert (out / "training.png").exists() and "## Recipe" in (out / "README.md").read_text()


def test_symmetry_regulariser_enters_the_meta_loss():
    base = {
        "architecture": "rnnprop",
        "task": "mnist-mlp-relu",
        "horizons": [4],
        "unroll": 2,
        "meta_epochs": 1,
        "trajectories_per_epoch": 1,
        "validation_trajectories": 1,
        "seed": 0,
    }
    plain = MetaTrainer(MetaTrainConfig.from_dict(base), "/tmp/unused-a")
    regularised = MetaTrainer(MetaTrainConfig.from_dict({**base, "symmetry_weight": 10.0}), "/tmp/unused-b")
    assert regularised.meta_trajectory(4) > plain.meta_trajectory(4)
    with pytest.raises(ValueError, match="cannot be combined"):
        MetaTrainConfig.from_dict({**base, "symmetry_weight": 1.0, "rescale": 1.0})


@pytest.mark.parametrize(("validation_horizon", "kept"), [(10, 0.1), (0, float("inf"))])
def test_curriculum_stage_change_keeps_the_best_only_when_validation_is_comparable(
    tmp_path, monkeypatch, validation_horizon, kept
):
    config = MetaTrainConfig.from_dict(
        {**QUADRATIC_RUN, "imitation_epochs": 0, "validation_horizon": validation_horizon, "patience": 1}
    )
    trainer = MetaTrainer(config, tmp_path)
    trainer.progress.best_valid = 0.1
    trainer.progress.epoch_losses = [1.0]
    monkeypatch.setattr(trainer, "validate", lambda: 0.5)  # worse than the best: patience runs out
    trainer._end_epoch(imitating=False, horizon=10)
    assert trainer.progress.horizon_index == 1
    assert trainer.progress.best_valid == kept


@pytest.mark.parametrize(("max_epochs", "moves_after"), [(0, None), (1, 1), (3, 3)])
def test_curriculum_moves_on_after_max_epochs_per_horizon_while_validation_improves(
    tmp_path, monkeypatch, max_epochs, moves_after
):
    config = MetaTrainConfig.from_dict(
        {**QUADRATIC_RUN, "imitation_epochs": 0, "patience": 2, "max_epochs_per_horizon": max_epochs}
    )
    trainer = MetaTrainer(config, tmp_path)
    losses = iter([0.9, 0.8, 0.7, 0.6])
    monkeypatch.setattr(trainer, "validate", lambda: next(losses))  # always improving: patience never runs out
    moved_after = None
    for epoch in range(1, 5):
        trainer.progress.epoch_losses = [1.0]
        trainer._end_epoch(imitating=False, horizon=config.horizons[trainer.progress.horizon_index])
        if trainer.progress.horizon_index and moved_after is None:
            moved_after = epoch
    assert moved_after == moves_after
    assert trainer.progress.best_valid == 0.6  # each improvement was kept


def test_meta_tuning_a_symbolic_rule_starts_from_its_weights_and_writes_tuned_constants(tmp_path):
    rule = {"op": "mul", "args": [{"const": 0.05}, {"op": "tanh", "args": [{"input": "m_tilde"}]}]}
    lo.Symbolic([torch.nn.Parameter(torch.zeros(1))], rule=rule).save_pretrained(tmp_path / "rule")
    config = MetaTrainConfig.from_dict(
        {
            "architecture": "symbolic",
            "initial_weights": str(tmp_path / "rule"),
            "task": "quadratic",
            "horizons": [10],
            "unroll": 5,
            "meta_epochs": 2,
            "trajectories_per_epoch": 2,
            "validation_trajectories": 1,
            "meta_lr": 0.01,
        }
    )
    trainer = MetaTrainer(config, tmp_path / "run")
    assert trainer.theta["constants"].tolist() == pytest.approx([0.05])
    result = trainer.run(progress_bar=False)
    from learned_optim.meta.export import export_weights

    out = export_weights(trainer, result, tmp_path / "tuned", "test")
    tuned = lo.from_pretrained(out)
    assert tuned.theta["constants"].tolist() != pytest.approx([0.05])
    # config.json's rule carries the tuned constant, so the formula people read is the one that runs
    assert tuned.config.rule["args"][0]["const"] == pytest.approx(tuned.theta["constants"][0].item())
    with pytest.raises(ValueError, match="may only add weights"):
        MetaTrainer(MetaTrainConfig.from_dict({**config.__dict__, "optimizer_config": {"beta1": 0.5}}), tmp_path / "x")


def test_meta_training_from_weights_may_add_a_step_scale_network(tmp_path):
    lo.Celo2([torch.nn.Parameter(torch.zeros(2, 2))], seed=5).save_pretrained(tmp_path / "start")
    start_theta = lo.from_pretrained(tmp_path / "start").theta
    values = {
        "architecture": "celo2",
        "initial_weights": str(tmp_path / "start"),
        "optimizer_config": {"step_scale_hidden": 4},
        "task": "quadratic",
    }
    trainer = MetaTrainer(MetaTrainConfig.from_dict(values), tmp_path / "run")
    assert trainer.optimizer_config.step_scale_hidden == 4
    assert set(trainer.theta) == set(start_theta) | {"scale_w0", "scale_b0", "scale_w1", "scale_b1"}
    assert all(torch.equal(trainer.theta[name], value) for name, value in start_theta.items())
    assert torch.equal(trainer.theta["scale_w1"], torch.zeros(4, 1))  # the scale starts at exactly 1
    for overrides in ({"ff_hidden_size": 4}, {"ns_iters": 3}):
        with pytest.raises(ValueError, match="may only add weights"):
            MetaTrainer(MetaTrainConfig.from_dict({**values, "optimizer_config": overrides}), tmp_path / "x")


def test_a_run_from_meta_trained_weights_records_the_total_budget(tmp_path):
    from learned_optim.meta.export import export_weights

    earlier = {
        "command": "meta-train first.json",
        "commit": "abc1234",
        "inner_steps": 500,
        "inner_steps_computed": 2000,
    }
    lo.Hamiltonian([torch.nn.Parameter(torch.zeros(2))]).save_pretrained(tmp_path / "start", recipe=earlier)
    settings = {"architecture": "hamiltonian", "initial_weights": str(tmp_path / "start"), "task": "quadratic"}
    settings |= {"horizons": [10], "unroll": 5, "meta_epochs": 1, "trajectories_per_epoch": 1}
    trainer = MetaTrainer(MetaTrainConfig.from_dict(settings | {"validation_trajectories": 1}), tmp_path / "run")
    out = export_weights(trainer, trainer.run(progress_bar=False), tmp_path / "out", "meta-train second.json")
    recipe = json.loads((out / "config.json").read_text())["recipe"]
    assert recipe["inner_steps"] == 10 and recipe["starts_from"]["commit"] == "abc1234"
    assert (recipe["total_inner_steps"], recipe["total_inner_steps_computed"]) == (510, 2000 + 10)
    card = " ".join((out / "README.md").read_text().split())
    assert "trained by `meta-train first.json`" in card and "Total budget: 510 inner steps" in card
    # A third run counts both before it.
    trainer = MetaTrainer(MetaTrainConfig.from_dict(settings | {"initial_weights": str(out)}), tmp_path / "run2")
    third = export_weights(trainer, trainer.run(progress_bar=False), tmp_path / "third", "meta-train third.json")
    assert json.loads((third / "config.json").read_text())["recipe"]["total_inner_steps"] == 520


def test_meta_tuning_never_returns_weights_that_validate_worse_than_its_start(tmp_path, monkeypatch):
    lo.Symbolic([torch.nn.Parameter(torch.zeros(1))], rule="adam").save_pretrained(tmp_path / "rule")
    settings = {"architecture": "symbolic", "initial_weights": str(tmp_path / "rule"), "task": "quadratic"}
    settings |= {"horizons": [10], "unroll": 5, "meta_epochs": 2, "trajectories_per_epoch": 1, "meta_lr": 0.01}
    trainer = MetaTrainer(MetaTrainConfig.from_dict(settings), tmp_path / "run")
    start = trainer.theta["constants"].clone()
    validations = iter([0.5, 0.9, 0.7])  # the start, then two worse epochs
    monkeypatch.setattr(trainer, "validate", lambda: next(validations))
    result = trainer.run(progress_bar=False)
    assert not torch.equal(result.theta["constants"], start)  # it did train
    assert torch.equal(result.best_theta["constants"], start) and result.progress.best_valid == 0.5
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [(r["epoch"], r["phase"], r["valid_loss"]) for r in rows] == [
        (0, "initial", 0.5),
        (1, "meta", 0.9),
        (2, "meta", 0.7),
    ]
    from learned_optim.meta.export import export_weights

    out = export_weights(trainer, result, tmp_path / "tuned", "test")
    assert json.loads((out / "config.json").read_text())["metrics"]["meta_validation"]["epoch"] == 0
    assert "| 0 | initial | 10 | — | 0.5000 |" in (out / "README.md").read_text()


def test_git_commit_marks_uncommitted_changes(tmp_path, monkeypatch):
    from learned_optim.meta import export
    from learned_optim.provenance import git_commit

    assert export.git_commit is git_commit  # the old import path, kept for one release

    monkeypatch.chdir(tmp_path)
    assert git_commit() == "unknown"
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    (tmp_path / "recipe.json").write_text("{}")
    subprocess.run([*git, "add", "recipe.json"], check=True)
    subprocess.run([*git, "commit", "-qm", "recipe"], check=True)
    clean = git_commit()
    assert len(clean) >= 7 and "+" not in clean
    (tmp_path / "recipe.json").write_text('{"seed": 1}')
    assert git_commit() == clean + "+dirty"
    assert git_commit(ignore=[tmp_path / "recipe.json", "/elsewhere/results.json"]) == clean


def test_a_dataset_that_is_missing_and_cannot_be_downloaded_is_a_clear_error(tmp_path, monkeypatch):
    import re

    import torchvision

    from learned_optim.errors import DatasetUnavailableError
    from learned_optim.meta.tasks.data import load_images

    monkeypatch.delenv("LEARNED_OPTIM_DATA_MIRROR", raising=False)

    def offline(self):
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz")

    monkeypatch.setattr(torchvision.datasets.FashionMNIST, "download", offline)
    expected = f"FashionMNIST is not in {re.escape(str(tmp_path))} .*LEARNED_OPTIM_DATA"
    with pytest.raises(DatasetUnavailableError, match=expected):
        load_images("FashionMNIST", train=True, root=tmp_path)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"unroll": 0}, "Invalid unroll value: 0"),
        ({"horizons": [30], "unroll": 20}, "multiple of unroll=20"),
        ({"horizons": []}, "Invalid horizons"),
        ({"meta_loss_from": 1.0, "estimator": "pes"}, "Invalid meta_loss_from"),
        ({"meta_loss_from": 0.5}, "meta_loss_from needs estimator 'pes'"),
        ({"meta_lr": -1e-3}, "Invalid meta_lr value"),
        ({"grad_clip": 0.0}, "Invalid grad_clip value"),
        ({"trajectories_per_epoch": 0}, "Invalid trajectories_per_epoch value"),
        ({"task": "mnist-mpl"}, "Invalid task: 'mnist-mpl'"),
        ({"architecture": "lsmt"}, "unknown architecture 'lsmt'"),
        ({"weighting": "max"}, "Invalid weighting"),
        ({"imitation_epochs": 2, "imitation_teacher": ""}, "needs imitation_teacher"),
    ],
)
def test_meta_train_config_validates_in_its_constructor(values, message):
    with pytest.raises(ValueError, match=message):
        MetaTrainConfig(**values)
    with pytest.raises(ValueError, match=f"recipe.json: .*{message}"):
        MetaTrainConfig.from_dict(values, "recipe.json")


def test_pes_estimate_points_along_the_gradient_of_the_whole_trajectory():
    """After two unrolls, PES's ĝ (accumulated ξ) estimates the gradient through both, not the truncated one."""
    from learned_optim.meta import pes

    architecture, task, lr = lo.Hamiltonian, QuadraticTask(), 0.01  # 87 weights: few pairs suffice
    config = architecture.Config()
    theta = {
        k: v.requires_grad_() for k, v in architecture.init_theta(config, torch.Generator().manual_seed(0)).items()
    }
    inner = start(architecture, config, task, torch.Generator().manual_seed(1))
    _, middle = unroll(architecture, theta, config, task, inner, torch.Generator(), 3, lr=lr, second_order=True)
    losses, _ = unroll(architecture, theta, config, task, middle, torch.Generator(), 3, lr=lr, second_order=True)
    backpropagated = torch.cat([g.reshape(-1) for g in torch.autograd.grad(meta_loss(losses), list(theta.values()))])

    pairs = pes.start_pairs(inner, 128, theta)
    generator = torch.Generator().manual_seed(2)
    for _ in range(2):
        estimate, pes_losses, pairs = pes.pes_estimate(
            architecture, theta, config, task, pairs, generator, 3, sigma=1e-3, lr=lr
        )
    assert pes_losses.shape == (2 * 128, 3)
    torch.testing.assert_close(pes_losses.mean(0), losses.detach(), rtol=1e-3, atol=0)
    assert torch.nn.functional.cosine_similarity(estimate, backpropagated, dim=0) > 0.5
    assert 0.5 < float(estimate.norm() / backpropagated.norm()) < 2

    # A mask perturbs only its coordinates: the others get no estimate and no accumulated noise, and
    # the copies' losses then differ only through the masked-in ones.
    mask = (torch.arange(estimate.numel()) % 3 == 0).float()
    masked, _, copies = pes.pes_estimate(
        architecture, theta, config, task, pes.start_pairs(inner, 4, theta), generator, 3, sigma=1e-3, lr=lr, mask=mask
    )
    assert torch.all(masked[mask == 0] == 0) and torch.all(copies.perturbation[:, mask == 0] == 0)
    assert torch.count_nonzero(masked[mask == 1]) > 0


DISTRIBUTION_RUN = {
    "architecture": "celo2",
    "task": "small-tasks",
    "horizons": [4],
    "unroll": 2,
    "meta_epochs": 1,
    "trajectories_per_epoch": 1,
    "validation_trajectories": 1,
    "inner_lr": 1e-3,
    "tasks_per_step": 2,
    "pes_particles": 2,
    "seed": 1,
}


@pytest.mark.parametrize("estimator", ["tbptt", "pes"])
def test_meta_training_on_a_task_distribution_changes_the_weights(tmp_path, estimator):
    trainer = MetaTrainer(MetaTrainConfig(**DISTRIBUTION_RUN, estimator=estimator), tmp_path)
    initial = [v.detach().clone() for v in trainer.theta.values()]
    result = trainer.run(progress_bar=False)
    (record,) = result.progress.history
    assert record["skipped_steps"] == 0 and math.isfinite(record["train_loss"])
    assert 0 < record["valid_loss"] < 2  # relative to the loss at initialisation
    changed = [not torch.equal(before, after) for before, after in zip(initial, result.theta.values(), strict=True)]
    assert sum(changed) >= len(changed) // 2


@pytest.mark.parametrize("estimator", ["tbptt", "pes"])
def test_meta_train_only_updates_the_named_weights_and_keeps_the_rest(tmp_path, estimator):
    values = {**DISTRIBUTION_RUN, "estimator": estimator, "trajectories_per_epoch": 2}
    values |= {"optimizer_config": {"step_scale_hidden": 4}, "meta_train_only": ["scale_"]}
    trainer = MetaTrainer(MetaTrainConfig(**values), tmp_path)
    assert trainer.trained == {"scale_w0", "scale_b0", "scale_w1", "scale_b1"}
    initial = {k: v.detach().clone() for k, v in trainer.theta.items()}
    result = trainer.run(progress_bar=False)
    assert all(torch.equal(result.theta[k], v) for k, v in initial.items() if k not in trainer.trained)
    assert any(not torch.equal(result.theta[k], initial[k]) for k in trainer.trained)
    with pytest.raises(ValueError, match="'scale' names no weight"):
        MetaTrainer(MetaTrainConfig(**{**values, "meta_train_only": ["scale"]}), tmp_path / "x")


def test_meta_loss_from_takes_meta_steps_only_late_in_each_trajectory(tmp_path, monkeypatch):
    values = {**DISTRIBUTION_RUN, "estimator": "pes", "horizons": [10], "tasks_per_step": 1}
    steps = []
    original = MetaTrainer._meta_step
    monkeypatch.setattr(
        MetaTrainer, "_meta_step", lambda self, *arguments: (steps.append(1), original(self, *arguments))
    )
    for meta_loss_from, expected in ((0.0, 5), (0.5, 3), (0.55, 3), (0.6, 2), (0.9, 1)):
        steps.clear()  # 5 truncations of 2 steps; those with a step past the fraction count
        trainer = MetaTrainer(MetaTrainConfig(**values, meta_loss_from=meta_loss_from), tmp_path / str(meta_loss_from))
        trainer.meta_trajectory(10)
        assert len(steps) == expected, meta_loss_from


class Interrupted(Exception):
    pass


def counted(function, calls):
    """``function``, appending its arguments to ``calls`` on every call."""

    def wrapper(*arguments, **keywords):
        calls.append(arguments)
        return function(*arguments, **keywords)

    return wrapper


@pytest.mark.parametrize(("estimator", "stacked"), [("tbptt", False), ("pes", False), ("tbptt", True)])
def test_a_run_interrupted_mid_trajectory_resumes_to_the_same_weights(tmp_path, monkeypatch, estimator, stacked):
    values = {
        **DISTRIBUTION_RUN,
        "architecture": "hamiltonian",  # the cheapest network: the test is about the loop
        "task": "image-mlps",
        "inner_lr": 0.01,
        "tasks_per_step": 2 if stacked else 1,
        "same_spec_per_step": stacked,
        "trajectories_per_epoch": 3,
        "estimator": estimator,
    }
    stacked_unrolls = []
    monkeypatch.setattr(trainer_module, "stacked_unroll", counted(trainer_module.stacked_unroll, stacked_unrolls))
    reference = MetaTrainer(MetaTrainConfig(**values), tmp_path / "reference").run(progress_bar=False)
    assert len(stacked_unrolls) == (6 if stacked else 0)  # 3 trajectories of 2 unrolls

    calls = []
    original = MetaTrainer._meta_step

    def interrupt_on_the_fourth_step(self, *arguments):
        calls.append(1)
        if len(calls) == 4:  # the second trajectory, after its first outer step
            raise Interrupted
        original(self, *arguments)

    monkeypatch.setattr(MetaTrainer, "_meta_step", interrupt_on_the_fourth_step)
    with pytest.raises(Interrupted):
        MetaTrainer(MetaTrainConfig(**values), tmp_path / "run").run(progress_bar=False)
    monkeypatch.setattr(MetaTrainer, "_meta_step", original)
    resumed = MetaTrainer(MetaTrainConfig(**values), tmp_path / "run").run(resume=True, progress_bar=False)
    assert all_equal(list(resumed.theta.values()), list(reference.theta.values()))
    assert [row["valid_loss"] for row in resumed.progress.history] == [
        row["valid_loss"] for row in reference.progress.history
    ]


def test_the_celo2_tasks_recipe_trains_at_the_lr_a_user_gets():
    """The unroll moves θ by inner_lr · direction, as Optimizer.step does by lr · direction, so the
    recipe's inner_lr must be the lr that ``lo.load(name, params)`` defaults to."""
    import inspect
    from pathlib import Path

    recipe = MetaTrainConfig.from_file(Path(__file__).parent.parent / "configs" / "celo2-small-tasks.json")
    assert recipe.architecture == "celo2" and recipe.task == "small-tasks"
    assert recipe.inner_lr == inspect.signature(lo.Celo2).parameters["lr"].default
    assert recipe.imitation_epochs and recipe.imitation_lr == recipe.inner_lr  # Adam's steps at the same scale


def _capture_meta_gradients(monkeypatch) -> list[list[torch.Tensor]]:
    """A list that receives φ's gradient at every meta-step of the trainers run afterwards."""
    captured: list[list[torch.Tensor]] = []
    original = MetaTrainer.meta_gradient

    def capture(self, *arguments):
        finite = original(self, *arguments)
        captured.append([v.grad.clone() for v in self.theta.values()])
        return finite

    monkeypatch.setattr(MetaTrainer, "meta_gradient", capture)
    return captured


def test_several_tasks_per_step_average_their_meta_gradients(tmp_path, monkeypatch):
    config = MetaTrainConfig(
        architecture="lstm",
        task="quadratic",
        horizons=[5],
        unroll=5,
        tasks_per_step=2,
        seed=3,
        meta_lr=1e-3,
        stack_task_instances=False,  # the sequential path; the stacked one is compared with it below
    )
    trainer = MetaTrainer(config, tmp_path)
    theta = {k: v.detach().clone().requires_grad_() for k, v in trainer.theta.items()}
    captured = _capture_meta_gradients(monkeypatch)
    trainer.meta_trajectory(5)

    # The same two instances by hand: the quadratic draws its instance at init and no batches.
    generator = torch.Generator().manual_seed(config.seed + 1)
    task = get_task("quadratic")
    inners = [start(lo.LSTMOptimizer, trainer.optimizer_config, task, generator) for _ in range(2)]
    per_task = []
    for inner in inners:
        losses, _ = unroll(lo.LSTMOptimizer, theta, trainer.optimizer_config, task, inner, generator, 5)
        per_task.append(torch.autograd.grad(meta_loss(losses), list(theta.values())))
    (gradients,) = captured
    for got, first, second in zip(gradients, *per_task, strict=True):
        torch.testing.assert_close(got, (first + second) / 2, rtol=1e-5, atol=1e-8)
    assert not torch.allclose(per_task[0][0], per_task[1][0])  # two different instances


def test_pes_forward_unroll_is_the_unroll_without_a_graph(optimizer_class):
    from learned_optim.meta.pes import evaluate_unroll

    task = meta_task_for(optimizer_class)
    config = optimizer_class.Config()
    theta = {
        k: v.requires_grad_() for k, v in optimizer_class.init_theta(config, torch.Generator().manual_seed(3)).items()
    }
    inner = start(optimizer_class, config, task, torch.Generator().manual_seed(1))
    lr = 1e-2 if optimizer_class is lo.Celo2 else 0.1
    expected, expected_state = unroll(optimizer_class, theta, config, task, inner, torch.Generator(), 4, lr=lr)
    losses, state = evaluate_unroll(optimizer_class, theta, config, task, inner, torch.Generator(), 4, lr=lr)
    assert not losses.requires_grad and not any(v.requires_grad for v in state.opt_state.values())
    torch.testing.assert_close(losses, expected.detach(), rtol=1e-6, atol=0)
    for name, value in expected_state.params.items():
        torch.testing.assert_close(state.params[name], value.detach(), rtol=1e-6, atol=1e-8)
    assert state.step == expected_state.step == 4


def test_pes_copies_run_together_as_each_would_alone(optimizer_class):
    """``unroll_copies`` (vmapped over the copies, each at its own φ) gives every copy the losses and
    state of ``evaluate_unroll`` on the same batches."""
    from learned_optim.meta import pes

    task = meta_task_for(optimizer_class)
    config = optimizer_class.Config()
    theta = optimizer_class.init_theta(config, torch.Generator().manual_seed(3))
    inner = start(optimizer_class, config, task, torch.Generator().manual_seed(1))
    copies = pes.start_pairs(inner, 2, theta)
    phi = pes.flatten_theta(theta)
    flat = phi + 0.01 * torch.randn(4, phi.numel(), generator=torch.Generator().manual_seed(4))
    lr = 1e-2 if optimizer_class is lo.Celo2 else 0.1
    losses, params, _ = pes.unroll_copies(
        optimizer_class, pes.unflatten_copies(theta, flat), config, task, copies, torch.Generator(), 3, lr=lr
    )
    assert losses.shape == (4, 3)
    for index in range(4):
        alone, state = evaluate_unroll_of(
            optimizer_class, pes.unflatten_theta(theta, flat[index]), config, task, inner, lr
        )
        torch.testing.assert_close(losses[index], alone, rtol=1e-5, atol=1e-7)
        for name in task.parameter_names:
            torch.testing.assert_close(params[name][index], state.params[name], rtol=1e-5, atol=1e-7)


def evaluate_unroll_of(architecture, theta, config, task, inner, lr):
    from learned_optim.meta.pes import evaluate_unroll

    return evaluate_unroll(architecture, theta, config, task, inner, torch.Generator(), 3, lr=lr)


def _first_meta_gradient(monkeypatch, config, run_dir):
    """φ's gradient at the first meta-step of a trajectory, and the number of stacked unrolls run."""
    trainer = MetaTrainer(config, run_dir)
    stacked_unrolls = []
    monkeypatch.setattr(trainer_module, "stacked_unroll", counted(trainer_module.stacked_unroll, stacked_unrolls))
    captured = _capture_meta_gradients(monkeypatch)
    trainer.meta_trajectory(config.unroll)
    monkeypatch.undo()
    (gradient,) = captured
    return gradient, len(stacked_unrolls)


STACKED_CASES = [
    # coordinatewise: the instances' flat vectors joined into one for the shared network
    {"architecture": "rnnprop", "task": "quadratic"},
    # per tensor: the learned (matrix) path on an MLP's weights, the update instance by instance
    {"architecture": "celo2", "task": "image-mlps", "same_spec_per_step": True, "inner_lr": 1e-3},
]


@pytest.mark.parametrize("case", STACKED_CASES, ids=lambda case: case["architecture"])
def test_stacked_tasks_per_step_gives_the_sequential_meta_gradient(tmp_path, monkeypatch, case):
    values = {"horizons": [3], "unroll": 3, "tasks_per_step": 3, "seed": 5, **case}
    stacked, stacked_unrolls = _first_meta_gradient(monkeypatch, MetaTrainConfig(**values), tmp_path / "a")
    sequential, none = _first_meta_gradient(
        monkeypatch, MetaTrainConfig(**values, stack_task_instances=False), tmp_path / "b"
    )
    assert (stacked_unrolls, none) == (1, 0)
    # Relative to each tensor's norm: the batched kernels round differently, and a coordinate
    # whose gradient nearly cancels keeps only the absolute rounding error.
    for got, expected in zip(stacked, sequential, strict=True):
        assert float((got - expected).norm()) <= 1e-5 * float(expected.norm())
    assert sum(bool(g.abs().max() > 0) for g in sequential) >= len(sequential) // 2  # the learned weights get one
    # One instance alone gives another gradient: the comparison covers the average of several.
    alone, _ = _first_meta_gradient(monkeypatch, MetaTrainConfig(**{**values, "tasks_per_step": 1}), tmp_path / "c")
    assert not all(torch.allclose(a, b, rtol=1e-3) for a, b in zip(alone, sequential, strict=True))


def test_same_spec_per_step_draws_instances_of_one_spec_that_are_then_stacked(tmp_path):
    values = {"architecture": "hamiltonian", "task": "small-tasks", "tasks_per_step": 3, "seed": 2}
    shared = MetaTrainer(MetaTrainConfig(**values, same_spec_per_step=True), tmp_path / "a")
    tasks = shared.draw_step_tasks(torch.Generator().manual_seed(0))
    assert len(tasks) == 3 and all(task is tasks[0] for task in tasks) and shared.stacks(tasks)
    generator = torch.Generator().manual_seed(1)
    first, second = (tasks[0].init(generator) for _ in range(2))
    assert not all_equal(list(first.values()), list(second.values()))  # instances differ in their initialisation

    independent = MetaTrainer(MetaTrainConfig(**values), tmp_path / "b")
    tasks = independent.draw_step_tasks(torch.Generator().manual_seed(0))
    assert len({task.name for task in tasks}) > 1 and not independent.stacks(tasks)  # sequential


def test_a_final_validation_score_is_the_loss_over_the_horizons_last_tenth(tmp_path):
    """With 10 unrolls the "final" score is the last unroll's mean loss: the whole horizon's total
    less the total of its first nine unrolls (the same instances, drawn from the same seed)."""
    run = {**QUADRATIC_RUN, "imitation_epochs": 0, "validation_horizon": 50}
    final = MetaTrainer(MetaTrainConfig.from_dict({**run, "validation_score": "final"}), tmp_path / "final")
    mean = MetaTrainer(MetaTrainConfig.from_dict(run), tmp_path / "mean")
    last_unroll = 10 * mean.validate(horizon=50) - 9 * mean.validate(horizon=45)
    assert final.validate(horizon=50) == pytest.approx(last_unroll, rel=1e-9)
    assert final.validate(horizon=50) != pytest.approx(mean.validate(horizon=50))
    with pytest.raises(ValueError, match="validation_score"):
        MetaTrainConfig.from_dict({**run, "validation_score": "last"})

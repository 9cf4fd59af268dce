"""Unrolls with the coordinates split over threads: the plain unroll's math, in float rounding."""

import logging
import threading

import pytest
import torch

import learned_optim as lo
from learned_optim.meta.coordinate_split import CoordinateThreads, coordinate_slices, split_unroll
from learned_optim.meta.tasks import get_task
from learned_optim.meta.trainer import MetaTrainConfig, MetaTrainer
from learned_optim.meta.unroll import meta_loss, start, unroll


@pytest.mark.parametrize(("count", "parts"), [(10, 3), (15910, 2), (2, 3), (7, 1)])
def test_slices_cover_every_coordinate_once_with_sizes_within_one(count, parts):
    slices = coordinate_slices(count, parts)
    assert [i for start, stop in slices for i in range(start, stop)] == list(range(count))
    sizes = [stop - start for start, stop in slices]
    assert len(slices) == min(count, parts) and max(sizes) - min(sizes) <= 1


def _two_unrolls(optimizer_class, task, weighting, threads):
    """Losses, final state and summed meta-gradient of two consecutive unrolls of 4 steps."""
    config = optimizer_class.Config()
    initial = optimizer_class.init_theta(config, torch.Generator().manual_seed(3))
    theta = {k: v.requires_grad_() for k, v in initial.items()}
    inner = start(optimizer_class, config, task, torch.Generator().manual_seed(1))
    generator = torch.Generator().manual_seed(2)
    lr = 1e-2 if optimizer_class is lo.Celo2 else 0.5  # Celo2's steps have RMS 1: its lr is small
    all_losses = []
    for _ in range(2):  # the second unroll starts from a state left by the first
        if threads is None:
            losses, inner = unroll(optimizer_class, theta, config, task, inner, generator, 4, lr=lr)
            meta_loss(losses, weighting).backward()
            inner = inner.detached()
        else:
            record = split_unroll(optimizer_class, theta, config, task, inner, generator, 4, threads, lr=lr)
            for name, gradient in record.meta_gradient(theta, weighting, threads).items():
                theta[name].grad = gradient if theta[name].grad is None else theta[name].grad + gradient
            losses, inner = record.losses, record.state
        all_losses.append(losses.detach())
    return torch.cat(all_losses), inner, {k: v.grad for k, v in theta.items()}


@pytest.mark.parametrize("weighting", ["mean", "sum", "log_sum"])
@pytest.mark.parametrize("task_name", ["quadratic", "mnist-mlp"])
def test_split_unroll_gives_the_plain_unrolls_losses_state_and_meta_gradient(optimizer_class, task_name, weighting):
    if optimizer_class is lo.Celo2 and task_name == "quadratic":
        pytest.skip("the quadratic's one vector takes Celo2's AdamW path: nothing learned to differentiate")
    task = get_task(task_name)
    threads = CoordinateThreads(3)  # three slices of unequal size on a 10- or 15,910-coordinate task
    plain = _two_unrolls(optimizer_class, task, weighting, None)
    split = _two_unrolls(optimizer_class, task, weighting, threads)
    torch.testing.assert_close(split[0], plain[0], rtol=1e-5, atol=1e-6)
    for name, value in plain[1].params.items():
        torch.testing.assert_close(split[1].params[name], value, rtol=1e-5, atol=1e-6)
    assert split[1].opt_state.keys() == plain[1].opt_state.keys() and split[1].step == plain[1].step
    # Products on one thread and on several add in different orders: states agree to float32 rounding
    # carried through two unrolls.
    for name, value in plain[1].opt_state.items():
        torch.testing.assert_close(split[1].opt_state[name], value, rtol=1e-4, atol=1e-5)
    assert any(gradient.abs().sum() > 0 for gradient in plain[2].values())
    for name, gradient in plain[2].items():
        # Newton–Schulz (per-tensor Celo2) amplifies the slices' rounding in the meta-gradient: 1.5e-6 seen.
        atol = 1e-5 if optimizer_class.per_tensor else 1e-6
        torch.testing.assert_close(split[2][name], gradient, rtol=1e-4, atol=atol)


def test_each_slice_runs_on_its_own_thread_with_one_torch_thread_and_the_callers_count_stays():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        threads = CoordinateThreads(2)
        assert torch.get_num_threads() == 2
        torch.set_num_threads(2)  # the process-wide count, which a worker not yet set up would adopt
        for _ in range(2):
            seen = threads.map(lambda index: (threading.get_ident(), torch.get_num_threads()), 2)
            assert seen[0][0] == threading.get_ident() and seen[1][0] != seen[0][0]
            assert [count for _, count in seen] == [1, 1]
            assert torch.get_num_threads() == 2
        threads.close()
    finally:
        torch.set_num_threads(before)


def test_a_workers_error_reaches_the_caller_and_the_threads_stay_usable():
    threads = CoordinateThreads(2)

    def fail_on_slice_one(index):
        if index == 1:
            raise RuntimeError("slice one failed")
        return index

    with pytest.raises(RuntimeError, match="slice one failed"):
        threads.map(fail_on_slice_one, 2)
    assert threads.map(lambda index: index * 10, 2) == [0, 10]


def test_trainer_with_split_coordinates_trains_like_the_plain_trainer_and_repeats_exactly(tmp_path):
    config = MetaTrainConfig(task="quadratic", horizons=[8], unroll=4, meta_epochs=2, trajectories_per_epoch=3)
    results = [
        MetaTrainer(config, tmp_path / f"{threads}-{run}", coordinate_threads=threads).run(progress_bar=False)
        for threads, run in ((1, 0), (2, 0), (2, 1))
    ]
    assert all(torch.equal(results[2].theta[name], value) for name, value in results[1].theta.items())
    assert [row["valid_loss"] for row in results[1].progress.history] == pytest.approx(
        [row["valid_loss"] for row in results[0].progress.history], rel=1e-4
    )
    for name, value in results[0].theta.items():
        torch.testing.assert_close(results[1].theta[name], value, rtol=1e-4, atol=1e-6)


def test_trainer_refuses_split_coordinates_where_they_are_coupled_or_no_thread_is_asked(tmp_path):
    for coupled in ({"second_order": True}, {"symmetry_weight": 0.1, "task": "mnist-mlp"}):
        config = MetaTrainConfig(horizons=[4], unroll=4, **coupled)
        with pytest.raises(ValueError, match="couple the coordinates"):
            MetaTrainer(config, tmp_path, coordinate_threads=2)
    with pytest.raises(ValueError, match="at least 1"):
        MetaTrainer(MetaTrainConfig(horizons=[4], unroll=4), tmp_path, coordinate_threads=0)


def test_close_stops_and_joins_the_workers():
    def workers():
        return {thread for thread in threading.enumerate() if thread.name == "coordinate-slice"}

    before = workers()
    threads = CoordinateThreads(3)
    started = workers() - before
    assert len(started) == 2
    threads.close()
    assert not any(thread.is_alive() for thread in started)


@pytest.mark.slow
def test_compiled_split_unrolls_never_fall_back_to_eager(caplog):
    """Dynamo keeps a compiled update's variants once per slice thread; the split unroll makes room."""
    import torch._dynamo

    from learned_optim.meta.unroll import compiled

    torch._dynamo.reset()
    task = get_task("quadratic")
    threads = CoordinateThreads(2)
    dynamo_log = logging.getLogger("torch._dynamo")  # torch's loggers do not propagate to caplog's handler
    dynamo_log.addHandler(caplog.handler)
    # dynamo's own patching restores its config on exit (pytest's monkeypatch deleted the entry on undo).
    try:
        with torch._dynamo.config.patch(recompile_limit=2):  # far fewer than the variants below
            architecture = compiled(lo.LSTMOptimizer)
            config = architecture.Config()
            theta = {k: v.requires_grad_() for k, v in architecture.init_theta(config, None).items()}
            for weights in (theta, {k: v.detach() for k, v in theta.items()}):  # training, then validation
                inner = start(architecture, config, task, torch.Generator().manual_seed(0))
                record = split_unroll(architecture, weights, config, task, inner, torch.Generator(), 3, threads)
                if weights is theta:
                    record.meta_gradient(theta, "mean", threads)
    finally:
        dynamo_log.removeHandler(caplog.handler)
        threads.close()
        torch._dynamo.reset()
    assert "recompile_limit" not in caplog.text

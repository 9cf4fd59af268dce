import pytest
import torch
from conftest import loss_of, small_model


@pytest.mark.slow
def test_compiled_training_step_matches_eager(optimizer_class):
    def training_step(model, optimizer, seed):
        optimizer.zero_grad()
        loss = loss_of(model, seed)
        loss.backward()
        optimizer.step()
        return loss

    compiled_step = torch.compile(training_step)
    model, eager_model = small_model(), small_model()
    optimizer = optimizer_class(model.parameters())
    eager_optimizer = optimizer_class(eager_model.parameters())
    for seed in range(3):
        compiled_step(model, optimizer, seed)
        training_step(eager_model, eager_optimizer, seed)
    # Inductor fuses the elementwise math, so the last bits may differ.
    for p, q in zip(model.parameters(), eager_model.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)

"""examples/quickstart_mnist.py, which the README points to: an MNIST MLP trains with Adam and each architecture."""

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import learned_optim as lo

SCRIPT = Path(__file__).resolve().parent.parent / "examples" / "quickstart_mnist.py"


# ScaledRNNprop is RNNprop's network in the per-tensor engine, both run here already (RNNprop,
# Celo2); its own contract cases cover it, and this subprocess run would add a minute to CI.
QUICKSTART_OPTIMIZERS = ["adam", *(name for name in lo.ARCHITECTURES if name != "scaled-rnnprop")]


@pytest.mark.slow
@pytest.mark.parametrize("optimizer", QUICKSTART_OPTIMIZERS)
def test_quickstart_trains_with_every_optimizer(optimizer):
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--optimizer", optimizer, "--steps", "50"],
        capture_output=True,
        text=True,
        env=dict(os.environ),
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    losses = [float(x) for x in re.findall(r"loss (\S+)", result.stdout)]
    assert len(losses) == 1 and math.isfinite(losses[0])
    if optimizer == "adam":
        assert losses[0] < 1.0  # 50 Adam steps take an MLP well below chance level (2.3)

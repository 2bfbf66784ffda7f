"""``AdversarialClassifier`` builds PyTorch's fused optimizers where they exist, and they train
as the per-parameter loop does."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from advtrain.lit import AdversarialClassifier
from advtrain.models import SmallCNN


def optimizer_of(module: AdversarialClassifier) -> torch.optim.Optimizer:
    out = module.configure_optimizers()
    return out["optimizer"] if isinstance(out, dict) else out


@pytest.mark.parametrize("name", ["adam", "adamw", "sgd"])
def test_fused_on_the_cpu_unless_asked_not_to(name: str) -> None:
    module = AdversarialClassifier(SmallCNN(), optimizer=name)
    assert optimizer_of(module).param_groups[0]["fused"] is True
    plain = AdversarialClassifier(SmallCNN(), optimizer=name, fused=False)
    assert not optimizer_of(plain).param_groups[0]["fused"]


@pytest.mark.parametrize("name", ["adam", "sgd"])
def test_fused_steps_match_the_per_parameter_loop(name: str) -> None:
    pl.seed_everything(0, verbose=False)
    x, y = torch.rand(32, 1, 8, 8), torch.randint(0, 10, (32,))
    fused = AdversarialClassifier(SmallCNN(), optimizer=name, lr=1e-2)
    plain = AdversarialClassifier(SmallCNN(), optimizer=name, lr=1e-2, fused=False)
    plain.load_state_dict(fused.state_dict())
    for module in (fused, plain):
        opt = optimizer_of(module)
        for _ in range(5):
            opt.zero_grad()
            F.cross_entropy(module(x), y).backward()
            opt.step()
    start = SmallCNN()
    moved = 0.0
    for a, b, c in zip(fused.parameters(), plain.parameters(), start.parameters(), strict=True):
        # Adam divides by sqrt(v): a near-zero gradient turns rounding into ~1e-5 moves,
        # a thousandth of the 1e-2 step
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
        moved = max(moved, float((a - c).detach().abs().max()))
    assert moved > 1e-3, "the steps changed the weights"

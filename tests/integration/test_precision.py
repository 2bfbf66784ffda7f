"""Mixed precision on CPU: ``precision="bf16-mixed"`` with the callbacks. The model runs in
bfloat16 under autocast, the attacks' losses are computed in float32 and the adversarial inputs
stay float32 inside the threat model."""

from __future__ import annotations

from typing import Any

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor

from advtrain.attacks import PGD
from advtrain.callbacks import (
    AdversarialTraining,
    CatastrophicOverfittingGuard,
    FreeAdversarialTraining,
)
from advtrain.losses import TRADESLoss

from .test_callback_helpers import (
    EPS,
    PlainClassifier,
    digits,
    one_thread,  # noqa: F401  (autouse fixture)
    trainer,
)


def record_objective(attack: Any) -> list[tuple[torch.dtype, torch.dtype]]:
    """Wraps ``attack.objective``; records (logits dtype, loss dtype) of every call."""
    seen: list[tuple[torch.dtype, torch.dtype]] = []
    objective = attack.objective

    def recording(logits: Tensor, y: Tensor) -> Tensor:
        out = objective(logits, y)
        seen.append((logits.dtype, out.dtype))
        return out

    attack.objective = recording
    return seen


def test_bf16_mixed_attack_mode_float32_attack_loss() -> None:
    pl.seed_everything(0, verbose=False)
    attack = PGD(eps=EPS, steps=3)
    seen = record_objective(attack)
    module = PlainClassifier(record=1)
    initial = PlainClassifier()
    initial.load_state_dict(module.state_dict())
    guard = CatastrophicOverfittingGuard(n_examples=64)
    dm = digits()
    tr = trainer(
        [AdversarialTraining(attack, seed=0), guard],
        max_epochs=2,
        limit_train_batches=4,
        precision="bf16-mixed",
    )
    tr.fit(module, datamodule=dm)
    assert seen and seen[0] == (torch.bfloat16, torch.float32), "bf16 model, float32 loss"
    x_adv = module.seen[0]
    assert x_adv.dtype == torch.float32
    loader = dm.train_dataloader()
    loader.sampler.set_epoch(0)
    x, y = next(iter(loader))
    assert float((x_adv - x).abs().max()) <= EPS + 1e-6
    assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        # the attack, run under autocast, still raised the initial model's loss
        assert F.cross_entropy(initial(x_adv).float(), y) > F.cross_entropy(initial(x).float(), y)
    assert len(guard.history) == 2 and all(0.0 <= h["pgd_acc"] <= 1.0 for h in guard.history)
    assert all(torch.isfinite(p).all() for p in module.parameters())


def test_bf16_mixed_loss_mode_and_free_at() -> None:
    pl.seed_everything(0, verbose=False)
    loss = TRADESLoss(eps=EPS, steps=2)
    seen = record_objective(loss.attack) if hasattr(loss.attack, "objective") else []
    module = PlainClassifier()
    tr = trainer(
        [AdversarialTraining(loss=loss, seed=0)],
        max_epochs=1,
        limit_train_batches=3,
        precision="bf16-mixed",
    )
    tr.fit(module, datamodule=digits())
    assert tr.global_step == 3
    assert all(out == torch.float32 for _, out in seen)
    assert all(torch.isfinite(p).all() for p in module.parameters())

    free = FreeAdversarialTraining(eps=EPS, replays=2)
    module = PlainClassifier()
    trainer([free], max_epochs=1, limit_train_batches=3, precision="bf16-mixed").fit(
        module, datamodule=digits()
    )
    delta = free.delta
    assert delta is not None and delta.dtype == torch.float32
    # the input gradient reached the float32 inputs
    assert float(delta.abs().max()) == pytest.approx(EPS)

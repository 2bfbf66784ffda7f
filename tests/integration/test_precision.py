"""Mixed precision on CPU: ``precision="bf16-mixed"`` and float16 with the callbacks. The model
runs in bfloat16/float16 under autocast, the attacks' losses are computed in float32 and the
adversarial inputs stay float32 inside the threat model.

Lightning maps ``precision="16-mixed"`` on a CPU to bf16; the float16 tests pass Lightning's own
``MixedPrecision("16-mixed", "cpu", GradScaler("cpu"))`` plugin instead, which is exactly what
``precision="16-mixed"`` builds on a GPU (float16 autocast + a dynamic loss scaler), so the same
code path runs here without a GPU."""

from __future__ import annotations

from typing import Any

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.plugins import MixedPrecision
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
    clean_accuracy,
    digits,
    one_thread,  # noqa: F401  (autouse fixture)
    robust_accuracy,
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


def float16_plugin() -> MixedPrecision:
    """What ``precision="16-mixed"`` gives on a GPU, on the CPU: float16 autocast + GradScaler."""
    return MixedPrecision("16-mixed", "cpu", torch.amp.GradScaler("cpu"))


def test_float16_mixed_pgd_at_trains_like_float32() -> None:
    """PGD-AT under float16 autocast with a loss scaler: the attack's forward passes run in
    float16, its examples stay float32 in the ball, and training ends where float32's does."""
    results = {}
    for name, plugins in (("32-true", []), ("16-mixed", [float16_plugin()])):
        pl.seed_everything(0, verbose=False)
        module = PlainClassifier(record=1)
        forward_dtypes: list[torch.dtype] = []
        module.net.register_forward_hook(
            lambda m, i, out, seen=forward_dtypes: seen.append(out.dtype)
        )
        tr = trainer(
            [AdversarialTraining(PGD(eps=EPS, steps=5), seed=0)], max_epochs=8, plugins=plugins
        )
        tr.fit(module, datamodule=digits())
        assert all(torch.isfinite(p).all() for p in module.parameters())
        x_adv = module.seen[0]
        assert x_adv.dtype == torch.float32
        loader = tr.datamodule.train_dataloader()
        loader.sampler.set_epoch(0)
        x, _ = next(iter(loader))
        assert float((x_adv - x).abs().max()) <= EPS + 1e-6
        assert float((x_adv - x).abs().max()) > 0.5 * EPS  # the attack moved the inputs
        expected = torch.float16 if plugins else torch.float32
        assert set(forward_dtypes) == {expected}
        results[name] = (clean_accuracy(module), robust_accuracy(module))
    (clean32, robust32), (clean16, robust16) = results["32-true"], results["16-mixed"]
    assert robust32 > 0.25  # trained to be robust at all: a comparison worth making
    # different rounding, different trajectories: equal within seed-to-seed noise
    assert abs(clean16 - clean32) <= 0.1
    assert abs(robust16 - robust32) <= 0.1


def test_float16_mixed_trades_and_free_at() -> None:
    pl.seed_everything(0, verbose=False)
    module = PlainClassifier()
    tr = trainer(
        [AdversarialTraining(loss=TRADESLoss(eps=EPS, steps=2), seed=0)],
        max_epochs=1,
        limit_train_batches=3,
        plugins=[float16_plugin()],
    )
    tr.fit(module, datamodule=digits())
    assert tr.global_step == 3
    assert all(torch.isfinite(p).all() for p in module.parameters())

    for in_step in (False, True):
        free = FreeAdversarialTraining(eps=EPS, replays=2, replay_in_step=in_step)
        module = PlainClassifier()
        tr = trainer([free], max_epochs=1, limit_train_batches=3, plugins=[float16_plugin()])
        tr.fit(module, datamodule=digits())
        assert tr.global_step == (3 if in_step else 6)
        delta = free.delta
        # the (loss-scaled) input gradient reached the float32 inputs, finite; delta moved to eps
        assert delta is not None and delta.dtype == torch.float32
        assert bool(torch.isfinite(delta).all())
        assert float(delta.abs().max()) == pytest.approx(EPS)
        assert all(torch.isfinite(p).all() for p in module.parameters())

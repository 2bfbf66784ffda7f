"""Loss wrappers through AdversarialTraining(loss=...): TRADES and MART replace an unmodified
module's training loss, follow the eps schedule and log their terms."""

from __future__ import annotations

from typing import Any

import pytest
import pytorch_lightning as pl
import torch

from advtrain.attacks import PGD, TRADESAttack
from advtrain.callbacks import AdversarialTraining
from advtrain.losses import MARTLoss, TRADESLoss
from advtrain.schedules import Linear

from .test_callback_helpers import (
    EPS,
    PlainClassifier,
    digits,
    one_thread,  # noqa: F401  (autouse fixture)
    robust_accuracy,
    trained,
    trainer,
)


def make_loss(name: str) -> Any:
    if name == "trades":
        return TRADESLoss(beta=6.0, attack=TRADESAttack(eps=EPS, steps=3))
    return MARTLoss(beta=6.0, attack=PGD(eps=EPS, steps=3))


@pytest.mark.parametrize(
    ("name", "logged"),
    [
        ("trades", ["adv/loss/natural", "adv/loss/robust", "adv/acc/adv"]),
        ("mart", ["adv/loss/bce", "adv/loss/robust", "adv/acc/adv"]),
    ],
)
def test_loss_wrapper_trains_an_unmodified_module(name: str, logged: list[str]) -> None:
    pl.seed_everything(0, verbose=False)
    loss = make_loss(name)
    eps_seen: list[float] = []
    perturb = loss.attack.perturb

    def recording(model: Any, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        eps_seen.append(loss.attack.eps)
        return perturb(model, x, y)

    loss.attack.perturb = recording
    cb = AdversarialTraining(loss=loss, schedules={"eps": Linear(0.05, EPS, ramp=0.25)}, seed=0)
    module = PlainClassifier()
    tr = trainer([cb], max_epochs=5)
    tr.fit(module, datamodule=digits())
    # the schedule drives the wrapper's inner attack: ramp over the first quarter, then EPS
    assert eps_seen[0] == pytest.approx(0.05)
    assert eps_seen[-1] == pytest.approx(EPS) and max(eps_seen) == pytest.approx(EPS)
    for key in logged:
        assert key in tr.logged_metrics, (key, sorted(tr.logged_metrics))
    assert 0.0 <= float(tr.logged_metrics["adv/acc/adv"]) <= 1.0
    assert "train/loss" not in tr.logged_metrics, "the module's own step is replaced"
    _, _, robust_std = trained("standard", 8)
    assert robust_accuracy(module) >= robust_std + 0.1

"""AdversarialTraining in unmodified LightningModules: tuple and dict batches, manual
optimization, gradient accumulation, and clear errors for configurations it cannot serve."""

from __future__ import annotations

from typing import Any

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.utilities.exceptions import MisconfigurationException
from torch import Tensor

from advtrain.attacks import PGD
from advtrain.callbacks import AdversarialTraining
from advtrain.losses import TRADESLoss
from advtrain.schedules import Linear

from .test_callback_helpers import (
    EPS,
    DictClassifier,
    DictDigits,
    ManualClassifier,
    PlainClassifier,
    digits,
    one_thread,  # noqa: F401  (autouse fixture)
    robust_accuracy,
    trained,
    trainer,
)


def first_clean_batch(dm: Any) -> tuple[Tensor, Tensor]:
    """The first training batch of epoch 0, as the Trainer draws it (seeded sampler)."""
    loader = dm.train_dataloader()
    loader.sampler.set_epoch(0)
    return next(iter(loader))


def assert_adversarial(seen: Tensor, clean: Tensor, eps: float = EPS) -> None:
    diff = (seen - clean).abs()
    assert float(diff.max()) <= eps + 1e-6, "perturbation leaves the eps ball"
    assert float(diff.max()) > eps / 2, "the step saw (nearly) clean inputs"
    assert float(seen.min()) >= 0.0 and float(seen.max()) <= 1.0


def test_plain_module_trains_on_adversarial_inputs_and_becomes_robust() -> None:
    pl.seed_everything(0, verbose=False)
    dm = digits()
    module = PlainClassifier(record=1)
    initial = PlainClassifier()
    initial.load_state_dict(module.state_dict())
    trainer(
        [AdversarialTraining(PGD(eps=EPS, steps=3), seed=0)], max_epochs=1, limit_train_batches=1
    ).fit(module, datamodule=dm)
    x, y = first_clean_batch(dm)
    assert_adversarial(module.seen[0], x)
    with torch.no_grad():  # the attack raised the initial model's loss
        assert F.cross_entropy(initial(module.seen[0]), y) > F.cross_entropy(initial(x), y)
    assert "training_step" not in vars(module), "the wrapper is removed after fit"

    _, _, robust_std = trained("standard", 8)
    _, clean_at, robust_at = trained("pgd_at", 8)
    assert robust_at >= robust_std + 0.15, (robust_at, robust_std)
    assert clean_at >= 0.6


def test_dict_batches_with_input_and_target_keys() -> None:
    pl.seed_everything(0, verbose=False)
    dm = DictDigits(batch_size=64)
    dm.setup("fit")
    module = DictClassifier(record=2)
    cb = AdversarialTraining(PGD(eps=EPS, steps=2), input_key="image", target_key="label", seed=0)
    trainer([cb], max_epochs=1, limit_train_batches=2).fit(module, datamodule=dm)
    x_all, _ = dm.train_set.tensors  # type: ignore[union-attr]
    for seen, idx in zip(module.seen, module.indices, strict=True):
        assert_adversarial(seen, x_all[idx])  # other keys ("index") are passed through


def test_manual_optimization_module() -> None:
    pl.seed_everything(0, verbose=False)
    module = ManualClassifier(record=1)
    cb = AdversarialTraining(PGD(eps=EPS, steps=3), seed=0)
    dm = digits()
    trainer([cb], max_epochs=5).fit(module, datamodule=dm)
    x, _ = first_clean_batch(dm)
    assert_adversarial(module.seen[0], x)
    _, _, robust_std = trained("standard", 8)
    assert robust_accuracy(module) >= robust_std + 0.08


def test_gradient_accumulation_schedules_per_batch_and_seeds_every_batch() -> None:
    pl.seed_everything(0, verbose=False)
    attack = PGD(eps=EPS, steps=1)
    calls: list[tuple[float, int | None]] = []
    perturb = attack.perturb

    def recording(model: Any, x: Tensor, y: Tensor) -> Tensor:
        calls.append((attack.eps, attack.seed))
        return perturb(model, x, y)

    attack.perturb = recording  # type: ignore[method-assign]
    cb = AdversarialTraining(attack, schedules={"eps": Linear(0.02, EPS, ramp=1.0)}, seed=3)
    tr = trainer([cb], max_epochs=2, limit_train_batches=6, accumulate_grad_batches=2)
    tr.fit(PlainClassifier(), datamodule=digits())
    assert tr.global_step == 6  # 12 batches, one optimizer step per 2
    assert len(calls) == 12
    expected = [0.02 + (EPS - 0.02) * (epoch + b / 6) / 2 for epoch in range(2) for b in range(6)]
    assert [eps for eps, _ in calls] == pytest.approx(expected, abs=1e-9)
    seeds = [seed for _, seed in calls]
    assert len(set(seeds)) == 12, "accumulated batches must not share a random start"


# -- configurations the callback cannot serve -------------------------------------------------
def test_schedule_of_an_attribute_the_attack_lacks() -> None:
    with pytest.raises(MisconfigurationException, match=r"'beta'.*schedulable attributes.*eps"):
        AdversarialTraining(PGD(eps=EPS), schedules={"beta": Linear(0.0, 6.0)})


@pytest.mark.parametrize("fraction", [0.0, -0.5, 1.5])
def test_fraction_outside_unit_interval(fraction: float) -> None:
    with pytest.raises(MisconfigurationException, match=r"fraction must lie in \(0, 1\]"):
        AdversarialTraining(PGD(eps=EPS), fraction=fraction)


def test_batch_layout_without_inputs_at_the_key() -> None:
    dm = DictDigits(batch_size=32)
    cb = AdversarialTraining(PGD(eps=EPS, steps=1))  # default keys 0/1 on dict batches
    with pytest.raises(MisconfigurationException, match=r"cannot find inputs at 0.*input_key"):
        trainer([cb], max_epochs=1, limit_train_batches=1).fit(DictClassifier(), datamodule=dm)


class FeaturesModule(PlainClassifier):
    """forward returns (logits, features): fine for its own step, wrong for a loss wrapper."""

    def forward(self, x: Tensor) -> Any:  # type: ignore[override]
        return self.net(x), x.flatten(1)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        logits, _ = self(batch[0])
        return F.cross_entropy(logits, batch[1])


def test_loss_wrapper_with_a_module_that_does_not_return_logits() -> None:
    cb = AdversarialTraining(loss=TRADESLoss(eps=EPS, steps=1))
    with pytest.raises(MisconfigurationException, match=r"forward to return logits.*tuple"):
        trainer([cb], max_epochs=1, limit_train_batches=1).fit(
            FeaturesModule(), datamodule=digits()
        )


class StepWithoutBatchIdx(PlainClassifier):
    """A ``training_step(batch)`` without ``batch_idx``, which Lightning allows."""

    def training_step(self, batch: Any) -> Tensor:  # type: ignore[override]
        self.seen.append(batch[0].detach().clone())
        return F.cross_entropy(self(batch[0]), batch[1])


@pytest.mark.parametrize("method", ["pgd_at", "free_at"])
def test_a_training_step_without_batch_idx(method: str) -> None:
    from advtrain.callbacks import FreeAdversarialTraining

    callback: pl.Callback = (
        AdversarialTraining(PGD(eps=EPS, steps=2))
        if method == "pgd_at"
        else FreeAdversarialTraining(eps=EPS, replays=2)
    )
    dm = digits()
    module = StepWithoutBatchIdx()
    trainer([callback], max_epochs=1, limit_train_batches=2).fit(module, datamodule=dm)
    x, _ = first_clean_batch(dm)
    assert len(module.seen) == (2 if method == "pgd_at" else 4)
    if method == "pgd_at":  # the step saw the attack's inputs, not the clean ones
        assert not torch.equal(module.seen[0], x)

"""CertifiedEvaluation in a real Trainer: verified accuracy logged, exact at eps 0."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities.exceptions import MisconfigurationException

from advtrain.callbacks import AdversarialTraining, CertifiedEvaluation
from advtrain.data import DigitsDataModule
from advtrain.lit import AdversarialClassifier
from advtrain.losses import IBPLoss
from advtrain.models import SmallCNN


def _trainer(callbacks: list[pl.Callback], epochs: int = 2) -> pl.Trainer:
    return pl.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_train_batches=6,
        num_sanity_val_steps=0,
        callbacks=callbacks,
    )


def test_verified_accuracy_at_eps_zero_is_clean_accuracy() -> None:
    torch.manual_seed(0)
    module = AdversarialClassifier(SmallCNN(width=8, hidden=32))
    trainer = _trainer([CertifiedEvaluation(method="ibp", eps=0.0, n_examples=180)])
    trainer.fit(module, DigitsDataModule(seed=0))
    logged = trainer.callback_metrics
    assert float(logged["val/verified_acc"]) == pytest.approx(float(logged["val/acc"]), abs=1e-6)


def test_takes_the_threat_model_from_certified_training_and_is_below_clean() -> None:
    torch.manual_seed(0)
    module = AdversarialClassifier(SmallCNN(width=8, hidden=32))
    loss = IBPLoss(eps=0.11, kappa=0.5)  # trains at 1.1x the test radius
    evaluation = CertifiedEvaluation(method="crown_ibp", n_examples=64)
    trainer = _trainer([AdversarialTraining(loss=loss), evaluation])
    trainer.fit(module, DigitsDataModule(seed=0))
    assert evaluation.threat is not None and evaluation.threat.eps == pytest.approx(0.1)
    value = float(trainer.callback_metrics["val/verified_acc"])
    assert 0.0 <= value <= float(trainer.callback_metrics["val/acc"]) + 1e-6


def test_needs_an_eps_without_a_training_callback() -> None:
    module = AdversarialClassifier(SmallCNN(width=8, hidden=32))
    trainer = _trainer([CertifiedEvaluation(method="ibp")], epochs=1)
    with pytest.raises(MisconfigurationException, match="needs eps"):
        trainer.fit(module, DigitsDataModule(seed=0))
    with pytest.raises(MisconfigurationException, match="method must be one of"):
        CertifiedEvaluation(method="smoothing")

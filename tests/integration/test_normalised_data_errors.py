"""Normalised data that the callbacks cannot serve as configured: each a clear error that names
``normalization=`` (never a suggestion to widen ``bounds``), before any weight changes."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as L
import pytest
import torch
from torchvision import transforms

from advtrain.attacks import PGD
from advtrain.callbacks import AdversarialTraining, FreeAdversarialTraining, RobustEvaluation
from advtrain.lit.adapter import MisconfigurationException

from .outside.digit_images import DIGITS_MEAN, DIGITS_STD
from .outside.template_project import DigitsDataModule, DigitsLitModule, SimpleDenseNet
from .test_callback_helpers import one_thread  # noqa: F401  (autouse fixture)
from .test_outside_projects import quiet


class HiddenNormalisation(DigitsDataModule):
    """Normalises with a Lambda: nothing a search for ``Normalize`` can find."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.transforms = transforms.Compose(
            [transforms.ToTensor(), transforms.Lambda(lambda x: (x - DIGITS_MEAN) / DIGITS_STD)]
        )


def fit(callback: Any, dm: Any = None, **kwargs: Any) -> DigitsLitModule:
    L.seed_everything(0, verbose=False)
    module = DigitsLitModule(net=SimpleDenseNet())
    trainer = quiet(L, max_epochs=1, limit_train_batches=1, callbacks=[callback], **kwargs)
    trainer.fit(module, datamodule=dm if dm is not None else DigitsDataModule())
    return module


def test_undeclared_normalisation_says_so_and_names_the_argument() -> None:
    module = DigitsLitModule(net=SimpleDenseNet())
    before = [p.detach().clone() for p in module.parameters()]
    with pytest.raises(MisconfigurationException) as info:
        L.seed_everything(0, verbose=False)
        trainer = quiet(L, max_epochs=1, limit_train_batches=1)
        trainer.callbacks.append(AdversarialTraining(PGD(eps=0.1, steps=1)))
        trainer.fit(module, datamodule=HiddenNormalisation())
    message = str(info.value)
    assert "look normalised" in message and "negative values" in message
    assert "normalization=(mean, std)" in message
    assert "Do not widen bounds" in message
    assert isinstance(info.value, ValueError)  # also a ValueError, as the attacks raise
    assert all(torch.equal(a, b) for a, b in zip(before, module.parameters(), strict=True))


def test_the_declared_normalisation_fixes_it() -> None:
    cb = AdversarialTraining(PGD(eps=0.1, steps=1), normalization=(DIGITS_MEAN, DIGITS_STD))
    fit(cb, HiddenNormalisation())
    assert cb.normalization is not None and cb.normalization.source == "declared"


@pytest.mark.parametrize(
    ("normalization", "match"),
    [
        ((0.1, 0.9), "does not match the data"),  # wrong values: pixels leave [0, 1]
        (([0.3, 0.3, 0.3], [0.4, 0.4, 0.4]), r"3 channels .*shape \(64, 1, 8, 8\)"),
    ],
)
def test_a_declared_normalisation_that_does_not_fit_the_data(
    normalization: Any, match: str
) -> None:
    with pytest.raises(MisconfigurationException, match=match):
        fit(AdversarialTraining(PGD(eps=0.1, steps=1), normalization=normalization))


@pytest.mark.parametrize(
    ("normalization", "match"),
    [
        ((0.5, 0.0), "std must be > 0"),
        (([0.5, 0.5], [0.2, 0.2, 0.2]), "mean has 2 values and std 3"),
        ("imagenet", "'auto', 'none'"),
    ],
)
def test_bad_normalisation_arguments_fail_at_construction(normalization: Any, match: str) -> None:
    for make in (
        lambda: AdversarialTraining(PGD(eps=0.1), normalization=normalization),
        lambda: FreeAdversarialTraining(eps=0.1, normalization=normalization),
        lambda: RobustEvaluation(normalization=normalization),
    ):
        with pytest.raises(MisconfigurationException, match=match):
            make()


def test_free_at_and_robust_evaluation_explain_undeclared_normalisation_too() -> None:
    with pytest.raises(MisconfigurationException, match="look normalised"):
        fit(FreeAdversarialTraining(eps=0.1, replays=2), HiddenNormalisation())
    evaluation = RobustEvaluation(PGD(eps=0.1, steps=1), n_examples=8)
    with pytest.raises(MisconfigurationException, match="look normalised"):
        fit(evaluation, HiddenNormalisation(), limit_val_batches=1)


def test_resuming_on_data_normalised_differently_is_refused(tmp_path: Any) -> None:
    cb = AdversarialTraining(PGD(eps=0.1, steps=1))
    L.seed_everything(0, verbose=False)
    module = DigitsLitModule(net=SimpleDenseNet())
    trainer = quiet(
        L,
        max_epochs=1,
        limit_train_batches=1,
        callbacks=[cb],
        enable_checkpointing=True,
        default_root_dir=str(tmp_path),
    )
    trainer.fit(module, datamodule=DigitsDataModule())
    ckpt = tmp_path / "run.ckpt"
    trainer.save_checkpoint(ckpt)
    again = AdversarialTraining(PGD(eps=0.1, steps=1), normalization=(0.5, 0.5))
    resumed = quiet(L, max_epochs=2, limit_train_batches=1, callbacks=[again])
    with pytest.raises(MisconfigurationException, match="trained with normalization"):
        resumed.fit(
            DigitsLitModule(net=SimpleDenseNet()),
            DigitsDataModule(),
            ckpt_path=ckpt,
            weights_only=False,
        )

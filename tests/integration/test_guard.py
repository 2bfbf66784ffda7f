"""CatastrophicOverfittingGuard (Wong et al., ICLR 2020) in real Trainer runs on digits."""

from __future__ import annotations

from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities.exceptions import MisconfigurationException

from advtrain.attacks import FGSM, PGD
from advtrain.callbacks import (
    AdversarialTraining,
    CatastrophicOverfittingGuard,
    FreeAdversarialTraining,
)
from advtrain.lit import AdversarialClassifier
from advtrain.models import SmallCNN
from advtrain.schedules import Linear

from .test_callback_helpers import (
    EPS,
    PlainClassifier,
    clean_accuracy,
    digits,
    one_thread,  # noqa: F401  (autouse fixture)
    trainer,
)


class Collapse(pl.Callback):
    """Placed before the guard: at the last batch of ``epoch`` the model starts answering 0 for
    everything (a stand-in for a collapse), after recording the weights it had at the previous
    epoch's check."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch
        self.good: dict[str, torch.Tensor] | None = None

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if batch_idx + 1 != trainer.num_training_batches:
            return
        if trainer.current_epoch == self.epoch - 1:
            self.good = {k: v.clone() for k, v in pl_module.state_dict().items()}
        if trainer.current_epoch == self.epoch:
            last = pl_module.net[-1]
            with torch.no_grad():
                last.weight.zero_()
                last.bias.copy_(torch.arange(10, 0, -1).float())


#: A radius the small network reaches clearly non-zero PGD accuracy at within a few epochs.
GUARD_EPS = 0.1


def fgsm_rs_at() -> AdversarialTraining:
    return AdversarialTraining(FGSM(eps=GUARD_EPS, random_start=True), seed=0)


def test_guard_catches_a_collapsing_fast_at_run() -> None:
    """Fast-AT (FGSM-RS, step 1.25·eps, cyclic learning rate) with the cyclic peak set far too
    high (SGD, peak 1.0 at 2/5 of 10 epochs). PGD accuracy on training examples first rises
    while the rate is small, then collapses as it grows (all of seeds 0-4 collapse within the
    first 50 steps). The guard stops the run and hands back the last good weights.

    This is the divergence-style collapse; genuine catastrophic overfitting (FGSM accuracy up
    while PGD accuracy falls to zero, at a sane learning rate) never appeared on the 8x8 digits
    and is reproduced on up-sampled digits on a noise canvas in
    ``test_catastrophic_overfitting.py``, where the guard catches it too.
    """
    pl.seed_everything(0, verbose=False)
    module = AdversarialClassifier(SmallCNN(), optimizer="sgd", lr=1.0, lr_schedule="cyclic")
    guard = CatastrophicOverfittingGuard(every_n_steps=5, every_n_epochs=None, n_examples=128)
    at = AdversarialTraining(FGSM(eps=GUARD_EPS, random_start=True), seed=0)
    tr = trainer([at, guard], max_epochs=10)
    with pytest.warns(UserWarning, match="catastrophic overfitting"):
        tr.fit(module, datamodule=digits())
    accs = [h["pgd_acc"] for h in guard.history]
    best = max(accs[:-1])
    assert guard.n_triggers == 1 and guard.history[-1]["triggered"]
    assert best >= 0.3, accs  # it had learned some robustness ...
    assert accs[-1] < best - 0.2, accs  # ... and lost it
    assert tr.global_step < 100, "stopped long before the 200 steps"
    # the weights of the last good check are back: the same check measures the same value
    good = [h for h in guard.history if not h["triggered"]][-1]
    assert guard.measure(tr, module) == pytest.approx(good["pgd_acc"])
    assert clean_accuracy(module) > 0.5


def test_restore_and_stop() -> None:
    pl.seed_everything(0, verbose=False)
    collapse = Collapse(epoch=3)
    guard = CatastrophicOverfittingGuard(n_examples=128, drop_threshold=0.15)
    module = PlainClassifier()
    tr = trainer([fgsm_rs_at(), collapse, guard], max_epochs=8)
    with pytest.warns(UserWarning, match="catastrophic overfitting.*stopped training"):
        tr.fit(module, datamodule=digits())
    assert [h["triggered"] for h in guard.history] == [False, False, False, True]
    assert tr.current_epoch == 4, "stopped at the end of the collapsed epoch"
    assert guard.history[2]["pgd_acc"] > guard.history[3]["pgd_acc"] + 0.15
    assert collapse.good is not None
    for k, v in module.state_dict().items():  # the weights of the last good check
        assert torch.equal(v, collapse.good[k]), k
    assert guard.n_triggers == 1
    assert float(tr.logged_metrics["guard/triggered"]) == 1.0
    assert float(tr.logged_metrics["guard/pgd_acc"]) == pytest.approx(guard.history[-1]["pgd_acc"])


def test_restore_and_reduce_alpha_keeps_training_and_survives_a_restart() -> None:
    pl.seed_everything(0, verbose=False)
    at = fgsm_rs_at()
    alpha = at.attack.alpha  # type: ignore[union-attr]
    guard = CatastrophicOverfittingGuard(
        n_examples=128, drop_threshold=0.15, action="restore_and_reduce_alpha", alpha_factor=0.5
    )
    tr = trainer([at, Collapse(epoch=2), guard], max_epochs=4)
    with pytest.warns(UserWarning, match="lowered the training attack's alpha"):
        tr.fit(PlainClassifier(), datamodule=digits())
    assert tr.current_epoch == 4, "training went on"
    assert [h["triggered"] for h in guard.history] == [False, False, True, False]
    assert at.attack.alpha == pytest.approx(0.5 * alpha)  # type: ignore[union-attr]
    assert float(tr.logged_metrics["guard/alpha"]) == pytest.approx(0.5 * alpha)

    # a resumed run applies the lowered step size again
    state = guard.state_dict()
    at2 = fgsm_rs_at()
    guard2 = CatastrophicOverfittingGuard(
        action="restore_and_reduce_alpha", every_n_epochs=None, every_n_steps=10**6
    )
    guard2.load_state_dict(state)
    assert guard2.history == guard.history
    trainer([at2, guard2], max_epochs=1, limit_train_batches=1).fit(
        PlainClassifier(), datamodule=digits()
    )
    assert at2.attack.alpha == pytest.approx(0.5 * alpha)  # type: ignore[union-attr]


def test_guard_is_transparent_when_nothing_collapses() -> None:
    weights = []
    for with_guard in (False, True):
        pl.seed_everything(0, verbose=False)
        module = PlainClassifier()
        guard = CatastrophicOverfittingGuard(every_n_steps=3, n_examples=64)
        callbacks = [fgsm_rs_at(), guard] if with_guard else [fgsm_rs_at()]
        trainer(callbacks, max_epochs=2, limit_train_batches=5).fit(module, datamodule=digits())
        weights.append(module.state_dict())
        if with_guard:
            # step checks at 3, 6, 9 and epoch checks at 5, 10 (none twice for the same step)
            assert [h["step"] for h in guard.history] == [3, 5, 6, 9, 10]
            assert not any(h["triggered"] for h in guard.history)
    for k in weights[0]:  # the guard neither consumes the training RNG nor touches the model
        assert torch.equal(weights[0][k], weights[1][k]), k


def test_default_attack_is_pgd10_at_the_final_scheduled_eps() -> None:
    at = AdversarialTraining(
        FGSM(eps=0.3, random_start=True), schedules={"eps": Linear(0.0, EPS, ramp=0.5)}
    )
    guard = CatastrophicOverfittingGuard(n_examples=16)
    trainer([at, guard], max_epochs=1, limit_train_batches=1).fit(
        PlainClassifier(), datamodule=digits()
    )
    assert isinstance(guard.attack, PGD)
    assert guard.attack.steps == 10 and guard.attack.eps == pytest.approx(EPS)
    x, _ = guard._examples  # type: ignore[misc]
    assert x.shape == (16, 1, 8, 8)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"every_n_epochs": None}, "every_n_epochs or every_n_steps"),
        ({"drop_threshold": 1.5}, "drop_threshold"),
        ({"action": "stop"}, "action must be one of"),
        ({"alpha_factor": 1.0}, "alpha_factor"),
        ({"reference": "first"}, "reference must be one of"),
        ({"n_examples": 0}, "n_examples must be >= 1"),
        ({"attack": "pgd"}, "attack must be an advtrain Attack"),
    ],
)
def test_bad_arguments(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(MisconfigurationException, match=match):
        CatastrophicOverfittingGuard(**kwargs)


@pytest.mark.parametrize(
    ("training", "action", "match"),
    [
        (None, "restore_and_stop", "needs attack="),
        (
            FreeAdversarialTraining(eps=EPS),
            "restore_and_reduce_alpha",
            "attack has a step size alpha",
        ),
        (
            AdversarialTraining(FGSM(eps=EPS), schedules={"alpha": Linear(0.1, 0.2)}),
            "restore_and_reduce_alpha",
            "schedule drives it",
        ),
    ],
)
def test_configurations_it_cannot_serve(training: Any, action: str, match: str) -> None:
    guard = CatastrophicOverfittingGuard(action=action)  # type: ignore[arg-type]
    callbacks = [training, guard] if training is not None else [guard]
    with pytest.raises(MisconfigurationException, match=match):
        trainer(callbacks, max_epochs=1, limit_train_batches=1).fit(
            PlainClassifier(), datamodule=digits()
        )


def test_two_guards_with_their_own_prefixes_share_a_trainer(tmp_path: Any) -> None:
    """A PGD and an FGSM guard side by side: each logs under its prefix and resumes its state."""

    def guards() -> list[CatastrophicOverfittingGuard]:
        return [
            CatastrophicOverfittingGuard(n_examples=32, drop_threshold=0.99),
            CatastrophicOverfittingGuard(
                FGSM(eps=GUARD_EPS), n_examples=32, drop_threshold=0.99, log_prefix="fgsm/"
            ),
        ]

    pl.seed_everything(0, verbose=False)
    first = guards()
    assert first[0].state_key == "CatastrophicOverfittingGuard"
    assert first[1].state_key != first[0].state_key
    tr = trainer([fgsm_rs_at(), *first], max_epochs=2, limit_train_batches=3)
    tr.fit(PlainClassifier(), datamodule=digits())
    assert {"guard/pgd_acc", "fgsm/pgd_acc"} <= set(tr.logged_metrics)
    assert first[1].history[-1]["pgd_acc"] >= first[0].history[-1]["pgd_acc"]  # FGSM is weaker
    tr.save_checkpoint(tmp_path / "two.ckpt")

    second = guards()
    tr2 = trainer([fgsm_rs_at(), *second], max_epochs=2, limit_train_batches=3)
    tr2.fit(PlainClassifier(), datamodule=digits(), ckpt_path=tmp_path / "two.ckpt")
    assert second[0].history == first[0].history
    assert second[1].history == first[1].history

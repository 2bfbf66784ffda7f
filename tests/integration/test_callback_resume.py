"""Crash and resume: a run stopped after k epochs and resumed from last.ckpt logs the same eps
curve step by step, and ends with the same weights, as an uninterrupted run."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger

from advtrain.attacks import PGD
from advtrain.callbacks import (
    AdversarialTraining,
    CatastrophicOverfittingGuard,
    FreeAdversarialTraining,
    RobustEvaluation,
)
from advtrain.lit import adapter
from advtrain.schedules import Linear

from .test_callback_helpers import (
    EPS,
    PlainClassifier,
    digits,
    one_thread,  # noqa: F401  (autouse fixture)
    trainer,
)


class StopAfter(pl.Callback):
    """Simulates a crash: stops training at the end of epoch ``epochs - 1``."""

    def __init__(self, epochs: int) -> None:
        self.epochs = epochs

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch + 1 >= self.epochs:
            trainer.should_stop = True


def eps_curve(log_dir: Path) -> dict[int, float]:
    with open(log_dir / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    return {int(r["step"]): float(r["adv/eps"]) for r in rows if r.get("adv/eps")}


def run(
    tmp: Path,
    name: str,
    callbacks: list[pl.Callback],
    seed: int,
    ckpt: Path | None = None,
    **kwargs: Any,
) -> tuple[pl.LightningModule, Path]:
    pl.seed_everything(seed, verbose=False)
    module = PlainClassifier()
    logger = CSVLogger(tmp, name=name, version=0)
    checkpoint = ModelCheckpoint(dirpath=tmp / name / "ckpt", save_last=True, save_top_k=0)
    tr = trainer(
        [*callbacks, checkpoint],
        logger=logger,
        log_every_n_steps=1,
        enable_checkpointing=True,
        **kwargs,
    )
    tr.fit(module, datamodule=digits(), ckpt_path=ckpt)
    return module, Path(logger.log_dir)


def at_callbacks() -> list[pl.Callback]:
    # seed=None: the random starts follow the run's seed, which the checkpoint must carry over.
    at = AdversarialTraining(
        PGD(eps=EPS, steps=2), schedules={"eps": Linear(0.0, EPS, ramp=1.0)}, seed=None
    )
    return [at, CatastrophicOverfittingGuard(n_examples=64, drop_threshold=0.5)]


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def test_adversarial_training_resumes_exactly(tmp_path: Path) -> None:
    kw = {"max_epochs": 4, "limit_train_batches": 4}
    full_cbs = at_callbacks()
    full, full_log = run(tmp_path, "full", full_cbs, seed=0, **kw)
    _, part_log = run(tmp_path, "part", [*at_callbacks(), StopAfter(2)], seed=0, **kw)
    last = tmp_path / "part" / "ckpt" / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == 8  # stopped after 2 epochs
    resumed_cbs = at_callbacks()
    # another global seed: everything that matters must come from the checkpoint
    resumed, resumed_log = run(tmp_path, "resumed", resumed_cbs, seed=1, ckpt=last, **kw)

    full_curve = eps_curve(full_log)
    assert sorted(full_curve) == list(range(16)), "adv/eps logged at every step"
    assert full_curve[15] > full_curve[0]
    stitched = {**eps_curve(part_log), **eps_curve(resumed_log)}
    assert stitched == full_curve
    assert_same_weights(full, resumed)
    full_guard, resumed_guard = full_cbs[1], resumed_cbs[1]
    assert isinstance(full_guard, CatastrophicOverfittingGuard)
    assert isinstance(resumed_guard, CatastrophicOverfittingGuard)
    assert len(full_guard.history) == 4
    assert resumed_guard.history == full_guard.history


@pytest.mark.parametrize("in_step", [False, True], ids=["step_per_replay", "replay_in_step"])
def test_free_adversarial_training_resumes_exactly(tmp_path: Path, in_step: bool) -> None:
    kw = {"max_epochs": 3, "limit_train_batches": 2}

    def free() -> FreeAdversarialTraining:
        return FreeAdversarialTraining(eps=EPS, replays=3, replay_in_step=in_step)

    full_free = free()
    full, _ = run(tmp_path, "full", [full_free], seed=0, **kw)
    run(tmp_path, "part", [free(), StopAfter(1)], seed=0, **kw)
    last = tmp_path / "part" / "ckpt" / "last.ckpt"
    resumed_free = free()
    resumed, _ = run(tmp_path, "resumed", [resumed_free], seed=1, ckpt=last, **kw)
    assert_same_weights(full, resumed)
    assert torch.equal(full_free.delta, resumed_free.delta)  # type: ignore[arg-type]


class ValidatedClassifier(PlainClassifier):
    """The plain classifier with a validation step (the evaluation callbacks run there)."""

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val/loss", torch.nn.functional.cross_entropy(self(x), y))


def test_two_robust_evaluations_keep_their_own_state(tmp_path: Path) -> None:
    """SubsetEvaluation's state_key names the monitor: two evaluations of one class in one
    Trainer (different eps) are checkpointed and restored each under its own key."""
    weak = RobustEvaluation(
        PGD(eps=0.05, steps=2), every_n_epochs=1, n_examples=32, monitor="val/robust_eps0.05"
    )
    strong = RobustEvaluation(
        PGD(eps=0.3, steps=2), every_n_epochs=1, n_examples=32, monitor="val/robust_eps0.3"
    )
    fit = trainer([weak, strong], max_epochs=1, limit_val_batches=1.0)
    fit.fit(ValidatedClassifier(), datamodule=digits())
    assert weak.state_key != strong.state_key
    path = tmp_path / "two.ckpt"
    fit.save_checkpoint(path)
    saved = torch.load(path, weights_only=True)["callbacks"]
    assert saved[weak.state_key]["last_value"] == weak.last_value
    assert saved[strong.state_key]["last_value"] == strong.last_value
    assert weak.last_value is not None and strong.last_value is not None
    assert strong.last_value < weak.last_value, "a larger eps leaves fewer examples robust"
    fresh_weak = RobustEvaluation(
        PGD(eps=0.05, steps=2), every_n_epochs=1, n_examples=32, monitor="val/robust_eps0.05"
    )
    fresh_strong = RobustEvaluation(
        PGD(eps=0.3, steps=2), every_n_epochs=1, n_examples=32, monitor="val/robust_eps0.3"
    )
    again = trainer([fresh_weak, fresh_strong], max_epochs=1, limit_val_batches=1.0)
    again.fit(
        ValidatedClassifier(),
        datamodule=digits(),
        ckpt_path=str(path),
        **adapter.weights_only_kwargs(again),
    )
    assert (fresh_weak.last_value, fresh_strong.last_value) == (weak.last_value, strong.last_value)

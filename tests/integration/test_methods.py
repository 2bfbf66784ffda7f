"""The method configs of the command line (method=trades|mart|fast_at|free_at): composed with the
real Hydra config, and each run for a few epochs on digits through ``advtrain.cli.train.run``."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from advtrain.attacks import FGSM, PGD, TRADESAttack
from advtrain.callbacks import (
    AdversarialTraining,
    CatastrophicOverfittingGuard,
    FreeAdversarialTraining,
)
from advtrain.cli.config import compose
from advtrain.cli.train import build_callbacks, run, scale_max_epochs
from advtrain.losses import MARTLoss, TRADESLoss

from .conftest import FAST
from .test_callback_helpers import one_thread  # noqa: F401  (autouse fixture)


def composed(method: str, *overrides: str) -> dict:
    cfg = compose(overrides=[f"method={method}", "threat.eps=0.15", *overrides], output_dir="x")
    return cfg


def metrics(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "logs" / "metrics.csv") as f:
        return list(csv.DictReader(f))


def test_trades_and_mart_read_the_threat_model_from_the_threat_node() -> None:
    for method, loss_cls, attack_cls in (
        ("trades", TRADESLoss, TRADESAttack),
        ("mart", MARTLoss, PGD),
    ):
        cfg = composed(method, "data.bounds=[0.0,1.0]", "threat.norm=l2", "threat.eps=0.5")
        (cb,) = build_callbacks(cfg)[:1]
        assert isinstance(cb, AdversarialTraining) and isinstance(cb.loss, loss_cls)
        assert cb.loss.beta == 6.0
        inner = cb.loss.attack
        assert isinstance(inner, attack_cls)
        assert (inner.eps, inner.norm, inner.bounds) == (0.5, "l2", (0.0, 1.0))
        assert inner.steps == cfg.attack.steps == 7
        assert set(cb.schedules) == {"eps"}  # the default ramp drives the inner attack
        assert cfg.evaluation.attacks["autoattack-rapid"].eps == 0.5
        assert cfg.evaluation.eps_grid.min_norm.fmn.norm == "l2"


def test_fast_at_is_fgsm_rs_with_cyclic_lr_and_the_guard() -> None:
    cfg = composed("fast_at")
    callbacks = build_callbacks(cfg)
    at = callbacks[0]
    assert isinstance(at, AdversarialTraining)
    assert isinstance(at.attack, FGSM) and at.attack.random_start
    # FGSM trains at eps_train_factor times the threat model's radius, alpha 1.25 times that
    factor = cfg.method.eps_train_factor
    assert factor == pytest.approx(1.2)
    assert at.attack.eps == pytest.approx(0.15 * factor)
    assert at.attack.alpha == pytest.approx(1.25 * 0.15 * factor)
    assert at.schedules == {}, "Fast-AT trains at the full eps from the start"
    assert cfg.module.lr_schedule == "cyclic" and cfg.module.lr == pytest.approx(5e-3)
    guards = [cb for cb in callbacks if isinstance(cb, CatastrophicOverfittingGuard)]
    assert len(guards) == 1 and guards[0].action == "restore_and_stop"
    # Wong et al.'s check: PGD-5 on one minibatch, at the threat model
    check = guards[0].attack
    assert isinstance(check, PGD) and check.steps == 5 and check.eps == 0.15
    assert guards[0].drop_threshold == 0.2
    assert guards[0].n_examples == cfg.data.module.batch_size == 64, "one training minibatch"
    # a recipe with its own optimizer keeps it
    recipe = compose(overrides=["recipe=fast_at_cifar10"], output_dir="x")
    assert (recipe.module.optimizer, recipe.module.lr) == ("sgd", 0.2)
    assert recipe.callbacks.guard.n_examples == 128, "CIFAR-10's minibatch, as in the paper"
    (paper,) = build_callbacks(recipe)[:1]
    assert paper.attack.eps == pytest.approx(8 / 255), "the paper trains at the test radius"
    assert paper.attack.alpha == pytest.approx(10 / 255)
    assert cfg.callbacks.robust_evaluation.attack.eps == 0.15, "validation at the threat model"
    assert cfg.attack._target_ == "advtrain.attacks.PGD", "the attack group is left as it is"
    assert cfg.method.name == "fast_at"


def test_fast_at_trains_a_fraction_of_the_recipes_epochs(capsys: pytest.CaptureFixture) -> None:
    cfg = composed("fast_at")
    factor = cfg.method.max_epochs_factor
    assert 0 < factor < 1, "Fast-AT trains fewer epochs than the recipe's budget"
    budget = cfg.trainer.max_epochs
    assert budget == composed("pgd_at").trainer.max_epochs == 30
    scale_max_epochs(cfg)
    assert cfg.trainer.max_epochs == math.ceil(budget * factor) < budget
    message = capsys.readouterr().err
    assert f"trains {cfg.trainer.max_epochs} of trainer.max_epochs {budget}" in message
    # every other method trains the whole budget; a recipe with the paper's epochs keeps them
    for method in ("pgd_at", "trades", "free_at", "standard"):
        other = composed(method)
        scale_max_epochs(other)
        assert other.trainer.max_epochs == budget
    recipe = compose(overrides=["recipe=fast_at_cifar10"], output_dir="x")
    scale_max_epochs(recipe)
    assert recipe.trainer.max_epochs == 15, "Wong et al.'s 15 epochs"
    # rounded up, never below one epoch; an unset or infinite budget is left alone
    for epochs, expected in ((1, 1), (4, math.ceil(4 * factor)), (-1, -1)):
        small = composed("fast_at", f"trainer.max_epochs={epochs}")
        scale_max_epochs(small)
        assert small.trainer.max_epochs == expected
    whole = composed("fast_at", "method.max_epochs_factor=1.0")
    scale_max_epochs(whole)
    assert whole.trainer.max_epochs == budget


def test_free_at_divides_the_epochs_of_the_recipe() -> None:
    cfg = composed("free_at")
    (cb,) = build_callbacks(cfg)[:1]
    assert isinstance(cb, FreeAdversarialTraining)
    assert (cb.eps, cb.norm, cb.replays, cb.divide_max_epochs) == (0.15, "linf", 4, True)
    assert cb.replay_in_step
    pgd_at = composed("pgd_at")
    assert cfg.trainer.max_epochs == pgd_at.trainer.max_epochs  # divided at fit time
    assert (cfg.module.lr_schedule, cfg.module.lr) == ("cyclic", pytest.approx(5e-3))
    assert cfg.method.name == "free_at"
    recipe = compose(overrides=["recipe=free_at_cifar10"], output_dir="x")
    assert (recipe.module.lr_schedule, recipe.module.lr) == ("multistep", 0.1)
    assert recipe.method.callback.replays == 8


@pytest.mark.parametrize("method", ["trades", "mart", "fast_at", "free_at"])
def test_method_runs_on_digits(method: str, tmp_path: Path) -> None:
    budget = 6 if method == "fast_at" else 4  # Fast-AT trains a fraction of it: 4 epochs
    overrides = [
        *FAST,
        f"method={method}",
        f"trainer.max_epochs={budget}",
        "trainer.log_every_n_steps=1",
        "++trainer.limit_train_batches=3",
        "evaluation.eps_grid.factors=[0.0,1.0]",
        "~evaluation.attacks.autoattack",
        "callbacks.robust_evaluation.every_n_epochs=2",
    ]
    if method == "fast_at":
        overrides.append("callbacks.guard.n_examples=64")
    cfg = compose(overrides=overrides, output_dir=str(tmp_path))
    report = run(cfg)
    assert report is not None
    assert 0.0 <= report["robust_accuracy"]["pgd-50x5"] <= report["clean_accuracy"] <= 1.0
    assert report["clean_accuracy"] > 0.2, "it learned something"
    assert report["threat_model"]["eps"] == pytest.approx(0.2)
    timings = report["timings_s"]  # the training time inside batches, within fit, within train
    assert 0.0 < timings["train_steps"] < timings["fit"] <= timings["train"]
    rows = metrics(tmp_path)
    steps = {int(r["step"]) for r in rows if r.get("step")}
    epochs = {int(r["epoch"]) for r in rows if r.get("epoch")}
    if method == "free_at":
        assert epochs == {0}, "4 epochs / 4 replays = 1 epoch"
        # the 4 replays of each of the 3 batches run inside one Lightning step
        assert max(steps) == 3 - 1, "global_step counts minibatches (replay_in_step)"
    elif method == "fast_at":  # a fraction of the epochs asked for (method.max_epochs_factor)
        trained = math.ceil(budget * cfg.method.max_epochs_factor)
        assert trained < budget and epochs == set(range(trained))
        resolved = OmegaConf.load(tmp_path / "config_resolved.yaml")  # hashed into the report
        assert resolved.trainer.max_epochs == trained, "the recorded config says so"
    else:
        assert epochs == {0, 1, 2, 3}
    if method in ("trades", "mart"):
        assert any(r.get("adv/loss/robust") for r in rows)
        assert any(r.get("adv/eps") for r in rows), "the eps schedule drives the inner attack"
    if method == "fast_at":
        accs = [float(r["guard/pgd_acc"]) for r in rows if r.get("guard/pgd_acc")]
        assert len(accs) == len(epochs) and all(0.0 <= a <= 1.0 for a in accs)
        lrs = [float(r["lr-Adam"]) for r in rows if r.get("lr-Adam")]
        assert not lrs or max(lrs) <= cfg.module.lr  # cyclic, peaking at lr
    state = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert any("Training" in key for key in state["callbacks"]), "callback state is saved"
    OmegaConf.resolve(cfg)
    assert instantiate(cfg.method.callback) is not None

"""Both Lightning packages, one code base: advtrain's callbacks and AdversarialClassifier under
``lightning.pytorch`` and ``pytorch_lightning`` Trainers (both installed here), in environments
with only one of them (the other hidden from the import system), from LightningCLI YAML, and the
command line on either package."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import lightning.pytorch as L
import pytest
import pytorch_lightning as PL
import torch
import yaml

from advtrain.attacks import PGD
from advtrain.callbacks import (
    AdversarialTraining,
    CatastrophicOverfittingGuard,
    CertifiedEvaluation,
    DataProvenance,
    FreeAdversarialTraining,
    RequeueOnSignal,
    RobustEvaluation,
)
from advtrain.cli.config import compose
from advtrain.cli.train import run
from advtrain.data import DigitsDataModule
from advtrain.lit import AdversarialClassifier, adapter
from advtrain.models import SmallCNN

from .conftest import TINY

PACKAGES = {"lightning.pytorch": L, "pytorch_lightning": PL}
CALLBACKS = [
    AdversarialTraining,
    FreeAdversarialTraining,
    RobustEvaluation,
    CertifiedEvaluation,
    CatastrophicOverfittingGuard,
    RequeueOnSignal,
    DataProvenance,
]


@pytest.mark.parametrize("name", list(PACKAGES))
def test_every_callback_and_the_module_are_of_both_packages(name: str) -> None:
    package = PACKAGES[name]
    for cls in CALLBACKS:
        assert issubclass(cls, package.Callback), cls
    assert issubclass(AdversarialClassifier, package.LightningModule)
    assert issubclass(DigitsDataModule, package.LightningDataModule)
    assert issubclass(
        adapter.MisconfigurationException, package.utilities.exceptions.MisconfigurationException
    )


@pytest.mark.parametrize("name", list(PACKAGES))
def test_adversarial_classifier_trains_resumes_and_keeps_lightnings_hook_rules(
    name: str, tmp_path: Path
) -> None:
    package = PACKAGES[name]
    package.seed_everything(0, verbose=False)
    torch.set_num_threads(1)
    module = AdversarialClassifier(SmallCNN(width=8, hidden=32))
    cb = AdversarialTraining(PGD(eps=0.2, steps=2), seed=0)
    last = package.callbacks.ModelCheckpoint(dirpath=tmp_path, filename="last")
    trainer = package.Trainer(
        max_epochs=1,
        limit_train_batches=3,
        limit_val_batches=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[cb, last, DataProvenance()],
    )
    trainer.fit(module, datamodule=DigitsDataModule())
    # Lightning's own overrides check sees what the module really overrides, whatever the
    # package of the Trainer (the two packages' base methods are different code objects)
    overridden = package.utilities.model_helpers.is_overridden
    assert overridden("training_step", module) and overridden("validation_step", module)
    assert not overridden("val_dataloader", module) and not overridden("configure_model", module)
    assert not overridden("predict_step", module)
    assert Path(last.best_model_path).exists()
    assert (tmp_path / "data_manifest.json").exists(), "next to the checkpoint"
    provenance = DataProvenance()  # the resumed run checks its data against the checkpoint's
    again = package.Trainer(
        default_root_dir=tmp_path,  # its checkpoints (and the manifest) not in the working folder
        max_epochs=2,
        limit_train_batches=3,
        limit_val_batches=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[AdversarialTraining(PGD(eps=0.2, steps=2), seed=0), provenance],
    )
    again.fit(
        AdversarialClassifier(SmallCNN(width=8, hidden=32)),
        DigitsDataModule(),
        ckpt_path=last.best_model_path,
    )
    assert again.current_epoch == 2
    assert provenance._restored is not None and provenance.manifest is not None
    assert provenance._restored.root == provenance.manifest.root


HIDE = """
import importlib.abc, sys
class Hide(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == {hidden!r} or name.startswith({hidden!r} + "."):
            raise ModuleNotFoundError(f"No module named {{name!r}}")
        return None
sys.meta_path.insert(0, Hide())
"""

ONE_PACKAGE = """
import torch
import {package} as pkg
from advtrain.attacks import PGD
from advtrain.callbacks import AdversarialTraining, RobustEvaluation
from advtrain.data import DigitsDataModule
from advtrain.lit import AdversarialClassifier, adapter
from advtrain.models import SmallCNN
assert adapter.installed() == ({package!r},), adapter.installed()
pkg.seed_everything(0, verbose=False)
module = AdversarialClassifier(SmallCNN(width=8, hidden=32))
trainer = pkg.Trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=1, logger=False,
                      enable_checkpointing=False, enable_progress_bar=False,
                      callbacks=[AdversarialTraining(PGD(eps=0.2, steps=1)),
                                 RobustEvaluation(PGD(eps=0.2, steps=1), n_examples=8)])
trainer.fit(module, datamodule=DigitsDataModule())
print("robust", trainer.callback_metrics["val/robust_acc"].item())
assert {hidden!r} not in __import__("sys").modules
"""


@pytest.mark.parametrize(
    ("package", "hidden"),
    [("lightning.pytorch", "pytorch_lightning"), ("pytorch_lightning", "lightning")],
)
def test_an_environment_with_only_one_package(package: str, hidden: str) -> None:
    code = HIDE.format(hidden=hidden) + ONE_PACKAGE.format(package=package, hidden=hidden)
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
        env={"PYTHONWARNINGS": "ignore", **_env()},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "robust" in proc.stdout


def test_no_lightning_at_all_is_a_clear_install_hint() -> None:
    code = (
        HIDE.format(hidden="lightning")
        + HIDE.format(hidden="pytorch_lightning")
        + "import advtrain.attacks, advtrain.losses  # the core needs no Lightning\n"
        + "import advtrain.callbacks\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=_env()
    )
    assert proc.returncode != 0
    assert "pip install 'advtrain[lightning]'" in proc.stderr
    assert "'advtrain[pytorch-lightning]'" in proc.stderr


def _env() -> dict[str, str]:
    import os

    return dict(os.environ)


CLI_CONFIG = """
seed_everything: 0
trainer:
  max_epochs: 1
  limit_train_batches: 3
  limit_val_batches: 1
  logger: false
  enable_checkpointing: false
  enable_progress_bar: false
  enable_model_summary: false
  callbacks:
    - class_path: advtrain.callbacks.AdversarialTraining
      init_args:
        loss:
          class_path: advtrain.losses.TRADESLoss
          init_args:
            beta: 6.0
            attack:
              class_path: advtrain.attacks.PGD
              init_args: {eps: 0.1, steps: 2}
        schedules:
          eps:
            class_path: advtrain.schedules.Linear
            init_args: {start: 0.0, end: 0.1, ramp_epochs: 1}
        normalization: {mean: [0.3053], std: [0.3759]}
        clean_acc_examples: 8
    - class_path: advtrain.callbacks.RobustEvaluation
      init_args:
        attack:
          class_path: advtrain.attacks.AutoAttack
          init_args: {eps: 0.1, version: fast, seed: 0}
        n_examples: 16
    - class_path: advtrain.callbacks.CatastrophicOverfittingGuard
      init_args: {n_examples: 16}
"""


@pytest.mark.parametrize("name", list(PACKAGES))
def test_callbacks_from_lightning_cli_yaml(name: str, tmp_path: Path) -> None:
    """The callbacks, their attacks, losses and schedules as class_path/init_args entries of a
    LightningCLI config, under each package's LightningCLI, on that package's outside project."""
    config = tmp_path / "config.yaml"
    config.write_text(CLI_CONFIG)
    if name == "lightning.pytorch":
        from lightning.pytorch.cli import LightningCLI

        from .outside.template_project import DigitsDataModule as Data
        from .outside.template_project import DigitsLitModule as Module

        model_args = ["--model.net", "tests.integration.outside.template_project.SimpleDenseNet"]
    else:
        from pytorch_lightning.cli import LightningCLI

        from .outside.pl_project import DigitsData as Data
        from .outside.pl_project import LitClassifier as Module

        model_args = []
    cli = LightningCLI(
        Module,
        Data,
        run=False,
        save_config_callback=None,
        args=["--config", str(config), *model_args],
    )
    training, evaluation, guard = cli.trainer.callbacks[:3]
    assert isinstance(training, AdversarialTraining) and training.loss is not None
    assert training.normalization is not None and training.normalization.std == (0.3759,)
    assert isinstance(evaluation, RobustEvaluation) and isinstance(
        guard, CatastrophicOverfittingGuard
    )
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    metrics = cli.trainer.callback_metrics
    assert {"val/robust_acc", "adv/eps", "adv/acc/clean"} <= set(metrics), sorted(metrics)
    assert float(metrics["adv/eps"]) == pytest.approx(0.1, rel=0.35)


def test_lightning_cli_rejects_a_wrong_init_arg_with_the_valid_ones(tmp_path: Path) -> None:
    from lightning.pytorch.cli import LightningCLI

    config = tmp_path / "config.yaml"
    bad = yaml.safe_load(CLI_CONFIG)
    bad["trainer"]["callbacks"][0]["init_args"]["epsilon"] = 0.1
    config.write_text(yaml.safe_dump(bad))
    from .outside.template_project import DigitsDataModule as Data
    from .outside.template_project import DigitsLitModule as Module

    with pytest.raises(SystemExit):
        LightningCLI(
            Module,
            Data,
            run=False,
            save_config_callback=None,
            args=[
                "--config",
                str(config),
                "--model.net",
                "tests.integration.outside.template_project.SimpleDenseNet",
            ],
        )


@pytest.mark.parametrize("choice", ["pytorch_lightning", "lightning"])
def test_the_command_line_trains_with_either_package(choice: str, tmp_path: Path) -> None:
    cfg = compose(overrides=[*TINY, f"lightning={choice}"], output_dir=str(tmp_path))
    report = run(cfg)
    assert report is not None
    env = report["environment"]
    expected = adapter.normalise_package_name(choice)
    assert env["lightning_package"] == expected
    assert env["lightning"] and env["pytorch_lightning"]
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["environment"]["lightning_package"] == expected


def test_an_unknown_lightning_package_is_a_config_error(tmp_path: Path) -> None:
    cfg = compose(overrides=[*TINY, "lightning=lightning2"], output_dir=str(tmp_path))
    with pytest.raises(ValueError, match="unknown Lightning package 'lightning2'"):
        run(cfg)


def test_the_package_choice_reaches_every_lightning_target(tmp_path: Path) -> None:
    from hydra.utils import instantiate

    cfg = compose(overrides=["lightning=pytorch_lightning"], output_dir=str(tmp_path))
    trainer = instantiate(cfg.trainer, logger=False, enable_checkpointing=False)
    assert type(trainer).__module__.startswith("pytorch_lightning")
    checkpoint: Any = instantiate(cfg.callbacks.model_checkpoint)
    assert type(checkpoint).__module__.startswith("pytorch_lightning")


def _public_classes() -> list[type]:
    import inspect

    import advtrain.attacks
    import advtrain.callbacks
    import advtrain.losses
    import advtrain.schedules

    modules = (advtrain.attacks, advtrain.losses, advtrain.schedules, advtrain.callbacks)
    return [
        getattr(m, name)
        for m in modules
        for name in m.__all__
        if inspect.isclass(getattr(m, name)) and not inspect.isabstract(getattr(m, name))
    ]


@pytest.mark.parametrize("cls", _public_classes(), ids=lambda c: c.__name__)
def test_every_public_class_is_fully_typed_for_jsonargparse(cls: type) -> None:
    from jsonargparse import ArgumentParser

    ArgumentParser().add_class_arguments(cls, "x", fail_untyped=True)


OTHER_CALLBACKS = """
trainer:
  logger: false
  callbacks:
    - class_path: advtrain.callbacks.FreeAdversarialTraining
      init_args: {eps: 0.1, replays: 2, normalization: none}
    - class_path: advtrain.callbacks.CertifiedEvaluation
      init_args: {method: crown_ibp, eps: 0.1, n_examples: 16}
    - class_path: advtrain.callbacks.RequeueOnSignal
      init_args: {dirpath: ckpts, signum: USR1}
"""


@pytest.mark.parametrize("name", list(PACKAGES))
def test_the_other_callbacks_from_lightning_cli_yaml(name: str, tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(OTHER_CALLBACKS)
    if name == "lightning.pytorch":
        from lightning.pytorch.cli import LightningCLI
    else:
        from pytorch_lightning.cli import LightningCLI
    cli = LightningCLI(
        AdversarialClassifier,
        DigitsDataModule,
        run=False,
        save_config_callback=None,
        args=["--config", str(config), "--model.model", "advtrain.models.SmallCNN"],
    )
    free, certified, requeue = cli.trainer.callbacks[:3]
    assert isinstance(free, FreeAdversarialTraining) and free.replays == 2
    assert free.space.requested is None
    assert isinstance(certified, CertifiedEvaluation) and certified.method == "crown_ibp"
    assert isinstance(requeue, RequeueOnSignal) and requeue.signum.name == "SIGUSR1"

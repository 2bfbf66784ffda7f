"""advtrain.lit.adapter: choosing the Lightning package, and Lightning's overrides rule on the
classes that serve both packages."""

from __future__ import annotations

import lightning.pytorch as L
import pytest
import pytorch_lightning as PL

from advtrain.lit import adapter


def test_package_names_and_the_preferred_package(monkeypatch: pytest.MonkeyPatch) -> None:
    assert adapter.normalise_package_name("lightning") == "lightning.pytorch"
    assert adapter.normalise_package_name("pytorch-lightning") == "pytorch_lightning"
    with pytest.raises(ValueError, match="unknown Lightning package 'torch'"):
        adapter.normalise_package_name("torch")
    monkeypatch.delenv(adapter.PACKAGE_ENV, raising=False)
    assert adapter.preferred() == "lightning.pytorch"
    assert adapter.preferred("pytorch_lightning") == "pytorch_lightning"
    monkeypatch.setenv(adapter.PACKAGE_ENV, "pytorch_lightning")
    assert adapter.preferred("auto") == "pytorch_lightning"


def test_overrides_are_judged_against_both_packages() -> None:
    class Mine(adapter.Callback):
        def on_train_epoch_end(self, trainer: object, pl_module: object) -> None:
            pass

    plain = adapter.Callback()
    for hook in ("on_train_epoch_end", "on_save_checkpoint", "state_dict"):
        assert not adapter.is_overridden(hook, plain, "Callback"), hook
        for package in (L, PL):  # Lightning's own rule agrees where the code is the same
            if hook == "state_dict":
                assert not package.utilities.model_helpers.is_overridden(
                    hook, plain, package.Callback
                )
    assert adapter.is_overridden("on_train_epoch_end", Mine(), "Callback")


def test_dual_methods_follow_the_trainer_the_module_is_attached_to() -> None:
    module = adapter.LightningModule()
    for package in (L, PL):
        module.trainer = package.Trainer(logger=False, enable_checkpointing=False)
        rule = package.utilities.model_helpers.is_overridden
        assert not rule("val_dataloader", module)
        assert not rule("configure_optimizers", module)
        assert not rule("on_train_epoch_end", module)

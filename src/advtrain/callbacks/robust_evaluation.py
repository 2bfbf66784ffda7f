"""``RobustEvaluation``: robust accuracy on a fixed validation subset, logged for checkpointing.

Rice et al., "Overfitting in adversarially robust deep learning", ICML 2020: robust accuracy peaks
long before training ends (robust overfitting), so keep the checkpoint with the best *robust*
validation accuracy, e.g. ``ModelCheckpoint(monitor="val/robust_acc", mode="max")``.
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities.exceptions import MisconfigurationException
from torch import Tensor

from advtrain.attacks.base import Attack, check_positive_int
from advtrain.callbacks.batch import Key, split_batch
from advtrain.threat import ThreatModel


def _final_threat(trainer: pl.Trainer) -> ThreatModel | None:
    """The threat model an :class:`AdversarialTraining` callback ends training at, if any."""
    from advtrain.callbacks.adversarial_training import AdversarialTraining

    for cb in trainer.callbacks:  # type: ignore[attr-defined]
        if isinstance(cb, AdversarialTraining):
            return cb.final_threat(trainer)
    return None


def default_attack(threat: ThreatModel, seed: int = 0) -> Attack:
    """AutoAttack's "fast" version (APGD-CE + APGD-T) when available, else PGD-20 with restarts."""
    try:
        from advtrain.attacks.autoattack import AutoAttack

        return AutoAttack(  # type: ignore[no-any-return]
            eps=threat.eps, norm=threat.norm, bounds=threat.bounds, version="fast", seed=seed
        )
    except ImportError:  # pragma: no cover - AutoAttack ships with advtrain
        from advtrain.attacks.pgd import PGD

        return PGD(eps=threat.eps, norm=threat.norm, bounds=threat.bounds, steps=20, seed=seed)


class RobustEvaluation(pl.Callback):
    """Logs robust accuracy on the first ``n_examples`` validation examples every k epochs.

    The first validation epoch is always evaluated, so the metric exists from the start.
    Works inside Lightning's validation loop with its default ``inference_mode=True``: attacks
    re-enable autograd locally. Under DDP each rank attacks its own shard and the counts are
    summed across ranks. Between evaluations the last measured value is logged again, so a
    ``ModelCheckpoint`` monitoring it always finds the key (and never prefers a stale value,
    since ties do not replace the best checkpoint).

    Args:
        attack: The attack; ``None`` builds AutoAttack "fast" (APGD-CE + APGD-T) at the threat
            model an :class:`~advtrain.callbacks.AdversarialTraining` callback ends training at.
        every_n_epochs: Evaluate every k epochs (and always at the first and last epoch).
        n_examples: How many validation examples (in total across ranks) to attack.
        monitor: Name of the logged metric.
        input_key: Where the inputs are in a batch.
        target_key: Where the labels are.
        seed: Seed of the attack, re-applied at every evaluation so they are comparable.
    """

    def __init__(
        self,
        attack: Attack | None = None,
        every_n_epochs: int = 1,
        n_examples: int = 512,
        monitor: str = "val/robust_acc",
        input_key: Key = 0,
        target_key: Key = 1,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if attack is not None and not isinstance(attack, Attack):
            raise MisconfigurationException(
                f"attack must be an advtrain Attack, got {type(attack).__name__}"
            )
        self.attack = attack
        self.every_n_epochs = check_positive_int(every_n_epochs, "every_n_epochs")
        self.n_examples = check_positive_int(n_examples, "n_examples")
        self.monitor = monitor
        self.input_key = input_key
        self.target_key = target_key
        self.seed = int(seed)
        self._correct = torch.zeros(())
        self._total = torch.zeros(())
        self._active = False
        self.last_value: float | None = None

    def _resolve_attack(self, trainer: pl.Trainer) -> Attack:
        if self.attack is None:
            threat = _final_threat(trainer)
            if threat is None:
                raise MisconfigurationException(
                    "RobustEvaluation needs attack= when the Trainer has no AdversarialTraining "
                    "callback to take the threat model from"
                )
            self.attack = default_attack(threat, self.seed)
        return self.attack

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        epoch = trainer.current_epoch
        last = trainer.max_epochs is not None and epoch + 1 >= trainer.max_epochs
        self._active = not trainer.sanity_checking and (
            (epoch + 1) % self.every_n_epochs == 0 or last or self.last_value is None
        )
        self._correct = torch.zeros((), device=pl_module.device)
        self._total = torch.zeros((), device=pl_module.device)
        if self._active:
            self._resolve_attack(trainer).reseed(self.seed + trainer.global_rank)

    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if not self._active or dataloader_idx != 0:
            return
        budget = self.n_examples // max(trainer.world_size, 1) - int(self._total.item())
        if budget <= 0:
            return
        x, y = split_batch(batch, self.input_key, self.target_key)
        x, y = x[:budget], y[:budget]
        attack = self._resolve_attack(trainer)
        x_adv = attack(pl_module, x, y)
        self._count(pl_module, x_adv, y)

    def _count(self, pl_module: pl.LightningModule, x_adv: Tensor, y: Tensor) -> None:
        was_training = pl_module.training
        pl_module.eval()
        with torch.no_grad():
            pred = pl_module(x_adv).argmax(dim=1)
        pl_module.train(was_training)
        self._correct = self._correct + (pred == y).sum()
        self._total = self._total + y.numel()

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        if self._active:
            correct = trainer.strategy.reduce(self._correct.float(), reduce_op="sum")
            total = trainer.strategy.reduce(self._total.float(), reduce_op="sum")
            if float(total) > 0:
                self.last_value = float(correct) / float(total)
        if self.last_value is not None:
            # Already summed across ranks: every rank logs the same value.
            pl_module.log(self.monitor, self.last_value, prog_bar=True, sync_dist=True)

    def state_dict(self) -> dict[str, Any]:
        return {"last_value": self.last_value}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.last_value = state_dict.get("last_value")


__all__ = ["RobustEvaluation", "default_attack"]

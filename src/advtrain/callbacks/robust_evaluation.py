"""``RobustEvaluation``: robust accuracy on a fixed validation subset, logged for checkpointing.

Rice et al., "Overfitting in adversarially robust deep learning", ICML 2020: robust accuracy peaks
long before training ends (robust overfitting), so keep the checkpoint with the best *robust*
validation accuracy, e.g. ``ModelCheckpoint(monitor="val/robust_acc", mode="max")``.
"""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities.exceptions import MisconfigurationException
from torch import Tensor

from advtrain.attacks.autoattack import AutoAttack
from advtrain.attacks.base import Attack
from advtrain.callbacks.batch import Key
from advtrain.callbacks.subset_evaluation import SubsetEvaluation, training_threat
from advtrain.threat import ThreatModel


def default_attack(threat: ThreatModel, seed: int = 0) -> Attack:
    """AutoAttack's "fast" version (APGD-CE + APGD-T) at ``threat``."""
    return AutoAttack(
        eps=threat.eps, norm=threat.norm, bounds=threat.bounds, version="fast", seed=seed
    )


class RobustEvaluation(SubsetEvaluation):
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
        super().__init__(every_n_epochs, n_examples, monitor, input_key, target_key)
        if attack is not None and not isinstance(attack, Attack):
            raise MisconfigurationException(
                f"attack must be an advtrain Attack, got {type(attack).__name__}"
            )
        self.attack = attack
        self.seed = int(seed)

    def _resolve_attack(self, trainer: pl.Trainer) -> Attack:
        if self.attack is None:
            threat = training_threat(trainer)
            if threat is None:
                raise MisconfigurationException(
                    "RobustEvaluation needs attack= when the Trainer has no adversarial-training "
                    "callback to take the threat model from"
                )
            self.attack = default_attack(threat, self.seed)
        return self.attack

    def start(self, trainer: pl.Trainer) -> None:
        self._resolve_attack(trainer).reseed(self.seed + trainer.global_rank)

    def passes(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, x: Tensor, y: Tensor
    ) -> Tensor:
        """Still classified correctly after the attack (the model is evaluated in eval mode)."""
        x_adv = self._resolve_attack(trainer)(pl_module, x, y)
        was_training = pl_module.training
        pl_module.eval()
        try:
            with torch.no_grad():
                return pl_module(x_adv).argmax(dim=1) == y
        finally:
            pl_module.train(was_training)


__all__ = ["RobustEvaluation", "default_attack"]

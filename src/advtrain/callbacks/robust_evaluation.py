"""``RobustEvaluation``: robust accuracy on a fixed validation subset, logged for checkpointing.

Rice et al., "Overfitting in adversarially robust deep learning", ICML 2020: robust accuracy peaks
long before training ends (robust overfitting), so keep the checkpoint with the best *robust*
validation accuracy, e.g. ``ModelCheckpoint(monitor="val/robust_acc", mode="max")``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import Tensor, nn

from advtrain.attacks.autoattack import AutoAttack
from advtrain.attacks.base import Attack
from advtrain.callbacks.batch import Key
from advtrain.callbacks.inputs import NormalizationArg
from advtrain.callbacks.subset_evaluation import SubsetEvaluation, training_threat
from advtrain.evaluation.units import attack_unit
from advtrain.lit.adapter import MisconfigurationException
from advtrain.models.view import ForwardFn, OutputKey
from advtrain.normalization import AUTO
from advtrain.threat import ThreatModel

if TYPE_CHECKING:
    from lightning.pytorch import Trainer


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
    summed across ranks. An example counts as robust when it is classified correctly clean and
    after the attack (Croce & Hein, ICML 2020); only the correct ones are attacked.
    Between evaluations the last measured value is logged again, so a
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
        normalization: ``"auto"`` (found in the validation data pipeline, else the training
            callback's), ``None`` (inputs are pixels) or ``(mean, std)``; eps in pixel units.
        output_key: Where the logits are in the module's output (dict key, tuple index).
        forward_fn: ``forward_fn(module, x) -> logits`` instead of ``module(x)``.
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
        normalization: NormalizationArg = AUTO,
        output_key: OutputKey | None = None,
        forward_fn: ForwardFn | None = None,
    ) -> None:
        super().__init__(
            every_n_epochs,
            n_examples,
            monitor,
            input_key,
            target_key,
            normalization=normalization,
            output_key=output_key,
            forward_fn=forward_fn,
        )
        if attack is not None and not isinstance(attack, Attack):
            raise MisconfigurationException(
                f"attack must be an advtrain Attack, got {type(attack).__name__}"
            )
        self.attack = attack
        self.seed = int(seed)

    def _resolve_attack(self, trainer: Trainer) -> Attack:
        if self.attack is None:
            threat = training_threat(trainer)
            if threat is None:
                raise MisconfigurationException(
                    "RobustEvaluation needs attack= when the Trainer has no adversarial-training "
                    "callback to take the threat model from"
                )
            self.attack = default_attack(threat, self.seed)
        return self.attack

    def start(self, trainer: Trainer) -> None:
        self._resolve_attack(trainer).reseed(self.seed + trainer.global_rank)

    def passes(self, trainer: Trainer, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        """Correct clean and still correct after the attack (Croce & Hein's count).

        The evaluation pipeline's attack unit (:func:`advtrain.evaluation.units.attack_unit`):
        only the correctly classified examples are attacked, in eval mode, each with its random
        stream drawn from its example id (stable across epochs and ranks).
        """
        attack = self._resolve_attack(trainer)
        eps = float(getattr(attack, "eps", 0.0))
        unit = attack_unit(model, attack, type(attack).__name__, eps, x, y, self.first_id)
        return unit["robust"].to(x.device)


__all__ = ["RobustEvaluation", "default_attack"]

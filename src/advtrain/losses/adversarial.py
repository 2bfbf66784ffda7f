"""Adversarial training loss of Madry et al.: cross-entropy on the attack's examples.

Reference:
    Madry, Makelov, Schmidt, Tsipras & Vladu, "Towards Deep Learning Models Resistant to
    Adversarial Attacks", ICLR 2018. Training minimises the cross-entropy at PGD examples
    (MNIST: eps 0.3, 40 steps of 0.01; CIFAR-10: eps 8/255, 7–10 steps of 2/255, random start).
    Goodfellow, Shlens & Szegedy, "Explaining and Harnessing Adversarial Examples", ICLR 2015,
    mix clean and adversarial cross-entropy with weight 0.5 (``clean_weight``).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from advtrain.attacks.base import Attack
from advtrain.losses.base import TrainingLoss, accuracy, check_attack, check_beta


class AdversarialLoss(TrainingLoss):
    """``(1 - w)·CE(f(x_adv), y) + w·CE(f(x), y)`` with ``x_adv = attack(model, x, y)``.

    With ``clean_weight=0`` (default) this is PGD adversarial training (Madry et al., ICLR 2018);
    ``clean_weight=0.5`` is the mixed objective of Goodfellow et al. (ICLR 2015). The attack runs
    on the model as passed; it guards the model's state itself (modes, BatchNorm statistics,
    gradients), so the model leaves in the mode it came in, and the loss's forward passes then
    run in that mode (train mode during training, so BatchNorm sees the adversarial batch).

    Args:
        attack: Any advtrain :class:`~advtrain.attacks.base.Attack`, e.g.
            ``PGD(eps=8/255, steps=10, alpha=2/255)``. Its ``eps`` can be driven by a schedule.
        clean_weight: Weight ``w`` in ``[0, 1]`` of the clean cross-entropy (settable).

    Logs:
        ``loss/adv``, ``acc/adv``; with ``clean_weight > 0`` also ``loss/clean``, ``acc/clean``.

    Example:
        >>> from advtrain.attacks import PGD
        >>> loss_fn = AdversarialLoss(PGD(eps=8 / 255, steps=10))
        >>> # loss, logs = loss_fn(model, x, y); loss.backward()
    """

    def __init__(self, attack: Attack, clean_weight: float = 0.0) -> None:
        super().__init__()
        self._attack = check_attack(attack, "AdversarialLoss")
        self.clean_weight = clean_weight

    @property
    def attack(self) -> Attack:
        """The inner attack."""
        return self._attack

    @attack.setter
    def attack(self, value: Attack) -> None:
        self._attack = check_attack(value, "AdversarialLoss")

    @property
    def clean_weight(self) -> float:
        """Weight of the clean cross-entropy, in ``[0, 1]`` (schedulable)."""
        return self._clean_weight

    @clean_weight.setter
    def clean_weight(self, value: float) -> None:
        value = check_beta(value, "clean_weight")
        if value > 1:
            raise ValueError(f"clean_weight must lie in [0, 1], got {value}")
        self._clean_weight = value

    def compute(self, model: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        x_adv = self.attack(model, x, y)
        logits_adv = self.logits(model, x_adv, y)
        loss_adv = F.cross_entropy(logits_adv, y)
        logs = {"loss/adv": loss_adv.detach(), "acc/adv": accuracy(logits_adv, y)}
        w = self.clean_weight
        if w == 0:
            return loss_adv, logs
        logits = self.logits(model, x, y)
        loss_clean = F.cross_entropy(logits, y)
        logs["loss/clean"] = loss_clean.detach()
        logs["acc/clean"] = accuracy(logits, y)
        return (1.0 - w) * loss_adv + w * loss_clean, logs

    def extra_repr(self) -> str:
        return f"attack={self.attack!r}, clean_weight={self.clean_weight:g}"


__all__ = ["AdversarialLoss"]

"""MART: misclassification-aware adversarial training.

Reference:
    Wang, Zou, Yi, Bailey, Ma & Gu, "Improving Adversarial Robustness Requires Revisiting
    Misclassified Examples", ICLR 2020. Loss
    ``BCE(p(x'), y) + beta·mean(KL(p(x) || p(x'))·(1 - p_y(x)))`` with the boosted cross-entropy
    ``BCE = -log p_y(x') - log(1 - max_{k≠y} p_k(x'))`` and ``x'`` from PGD on the cross-entropy.
    Defaults (CIFAR-10): ``beta=6`` (the paper explores 5–6), eps 8/255, 10 steps of 2/255.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from advtrain.attacks.base import Attack
from advtrain.attacks.pgd import PGD
from advtrain.losses.base import TrainingLoss, accuracy, check_attack, check_beta, resolve_attack


def log_one_minus_top_other(logits: Tensor, y: Tensor) -> Tensor:
    """Per example ``log(1 - max_{k≠y} p_k)`` with ``p = softmax(logits)``, computed stably.

    ``1 - p_k`` is the probability mass of the classes other than ``k``, so its log is
    ``logsumexp_{j≠k} z_j - logsumexp_j z_j``: finite even when ``p_k`` rounds to 1. The class
    ``k`` is chosen without gradient (the largest non-label probability); gradients flow through
    the logits.
    """
    with torch.no_grad():
        k = logits.scatter(1, y.unsqueeze(1), float("-inf")).argmax(dim=1, keepdim=True)
    without_k = logits.scatter(1, k, float("-inf"))
    return torch.logsumexp(without_k, dim=1) - torch.logsumexp(logits, dim=1)


class MARTLoss(TrainingLoss):
    """Misclassification-aware adversarial training (Wang et al., ICLR 2020).

    ``CE(f(x'), y) - mean(log(1 - max_{k≠y} p_k(x'))) + beta·mean(KL(p(x) || p(x'))·(1 - p_y(x)))``
    where ``x'`` comes from the inner attack (PGD on the cross-entropy, as in the paper). The KL
    is summed over classes; the weight ``1 - p_y(x)`` emphasises misclassified (low-confidence)
    natural examples. Gradients flow through every term, weight included, as in the reference
    code; the log terms are computed from log-softmaxes instead of the reference's ``+1e-12``
    guards.

    Args:
        beta: Weight of the misclassification-aware KL term, ``>= 0`` (settable; paper: 5–6).
        attack: The inner attack; default ``PGD(eps=8/255, steps=10, loss="ce")`` (step
            ``2.5·eps/steps`` = 2/255, random start). Any advtrain attack is accepted.
        eps: Convenience for the default attack's radius (not with ``attack=``).
        steps: Convenience for the default attack's number of steps (not with ``attack=``).
        alpha: Convenience for the default attack's step size (not with ``attack=``).

    Logs:
        ``loss/adv`` (CE at ``x'``), ``loss/bce`` (boosted CE), ``loss/robust`` (the weighted KL
        term, unscaled by ``beta``), ``acc/clean``, ``acc/adv``.

    Raises:
        ValueError: If ``beta < 0`` or both ``attack`` and a convenience argument are given.
    """

    def __init__(
        self,
        beta: float = 6.0,
        attack: Attack | None = None,
        *,
        eps: float | None = None,
        steps: int | None = None,
        alpha: float | None = None,
    ) -> None:
        super().__init__()
        self.beta = beta
        self._attack = resolve_attack(
            attack,
            "MARTLoss",
            lambda **kw: PGD(**{"eps": 8 / 255, "steps": 10, "loss": "ce", **kw}),
            eps=eps,
            steps=steps,
            alpha=alpha,
        )

    @property
    def attack(self) -> Attack:
        """The inner attack."""
        return self._attack

    @attack.setter
    def attack(self, value: Attack) -> None:
        self._attack = check_attack(value, "MARTLoss")

    @property
    def beta(self) -> float:
        """Weight of the KL term, ``>= 0`` (schedulable)."""
        return self._beta

    @beta.setter
    def beta(self, value: float) -> None:
        self._beta = check_beta(value)

    def compute(self, model: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        x_adv = self.attack(model, x, y)
        logits = self.logits(model, x, y)
        logits_adv = self.logits(model, x_adv, y)
        log_p = F.log_softmax(logits, dim=1)
        log_p_adv = F.log_softmax(logits_adv, dim=1)
        loss_adv = F.nll_loss(log_p_adv, y)
        loss_bce = loss_adv - log_one_minus_top_other(logits_adv, y).mean()
        kl = F.kl_div(log_p_adv, log_p, reduction="none", log_target=True).sum(dim=1)
        p_true = log_p.gather(1, y.unsqueeze(1)).squeeze(1).exp()
        loss_robust = (kl * (1.0 - p_true)).mean()
        loss = loss_bce + self.beta * loss_robust
        logs = {
            "loss/adv": loss_adv.detach(),
            "loss/bce": loss_bce.detach(),
            "loss/robust": loss_robust.detach(),
            "acc/clean": accuracy(logits, y),
            "acc/adv": accuracy(logits_adv, y),
        }
        return loss, logs

    def extra_repr(self) -> str:
        return f"beta={self.beta:g}, attack={self.attack!r}"


__all__ = ["MARTLoss", "log_one_minus_top_other"]

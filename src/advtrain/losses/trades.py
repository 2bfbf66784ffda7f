"""TRADES: natural cross-entropy plus a KL term that makes the output locally smooth.

Reference:
    Zhang, Yu, Jiao, Xing, El Ghaoui & Jordan, "Theoretically Principled Trade-off between
    Robustness and Accuracy", ICML 2019. Loss ``CE(f(x), y) + beta·KL(f(x) || f(x'))`` with
    ``x'`` maximising the KL term inside the ball (started at ``x + 0.001·N(0, I)``); the KL is
    summed over classes and averaged over the batch. Defaults: CIFAR-10 ``beta=6``, eps 0.031,
    10 steps of 0.007; MNIST ``beta=6`` (paper's 1/lambda), eps 0.3, 40 steps of 0.01.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from advtrain.attacks.base import Attack
from advtrain.attacks.trades import TRADESAttack
from advtrain.losses.base import TrainingLoss, accuracy, check_attack, check_beta, resolve_attack


def kl_batchmean(logits_p: Tensor, logits_q: Tensor) -> Tensor:
    """``KL(softmax(logits_p) || softmax(logits_q))`` summed over classes, averaged over the batch.

    Computed from log-softmaxes (``F.kl_div`` with ``log_target=True``), so it is finite for any
    finite logits; gradients flow into both arguments.
    """
    return F.kl_div(
        F.log_softmax(logits_q, dim=1),
        F.log_softmax(logits_p, dim=1),
        reduction="batchmean",
        log_target=True,
    )


def default_trades_attack(**overrides: float | int) -> Attack:
    """``TRADESAttack(eps=8/255, norm="linf", steps=10)`` with ``overrides`` applied."""
    return TRADESAttack(**{"eps": 8 / 255, "norm": "linf", "steps": 10, **overrides})


class TRADESLoss(TrainingLoss):
    """``CE(f(x), y) + beta·KL(f(x) || f(x'))``, ``x'`` from the TRADES KL inner maximisation.

    Zhang et al., "Theoretically Principled Trade-off between Robustness and Accuracy", ICML 2019,
    with their default ``beta=6`` (CIFAR-10 and MNIST). The KL uses the "batchmean" reduction of
    the reference code (sum over classes, divided by the batch size). Gradients flow through both
    the natural and the adversarial output, as in the reference. The natural logits are computed
    once and serve both terms.

    Args:
        beta: Weight of the robust KL term, ``>= 0`` (settable, so a schedule can ramp it).
        attack: The inner maximisation; default
            ``TRADESAttack(eps=8/255, norm="linf", steps=10)`` (its default step size). Any
            advtrain attack is accepted.
        eps: Convenience for the default attack's radius (not with ``attack=``).
        steps: Convenience for the default attack's number of steps (not with ``attack=``).
        alpha: Convenience for the default attack's step size (not with ``attack=``).

    Logs:
        ``loss/natural`` (clean CE), ``loss/robust`` (the KL term, unweighted), ``acc/clean``,
        ``acc/adv``.

    Raises:
        ValueError: If ``beta < 0`` or both ``attack`` and a convenience argument are given.

    Example:
        >>> loss_fn = TRADESLoss(beta=6.0, eps=0.3, steps=40, alpha=0.01)  # MNIST setting
        >>> # loss, logs = loss_fn(model, x, y); loss.backward()
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
            "TRADESLoss",
            default_trades_attack,
            eps=eps,
            steps=steps,
            alpha=alpha,
        )

    @property
    def attack(self) -> Attack:
        """The inner maximisation."""
        return self._attack

    @attack.setter
    def attack(self, value: Attack) -> None:
        self._attack = check_attack(value, "TRADESLoss")

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
        loss_natural = F.cross_entropy(logits, y)
        loss_robust = kl_batchmean(logits, logits_adv)
        loss = loss_natural + self.beta * loss_robust
        logs = {
            "loss/natural": loss_natural.detach(),
            "loss/robust": loss_robust.detach(),
            "acc/clean": accuracy(logits, y),
            "acc/adv": accuracy(logits_adv, y),
        }
        return loss, logs

    def extra_repr(self) -> str:
        return f"beta={self.beta:g}, attack={self.attack!r}"


__all__ = ["TRADESLoss", "kl_batchmean"]

"""Certified training losses: IBP (Gowal et al. 2018) and CROWN-IBP (Zhang et al. 2020).

Both minimise ``kappa·CE(f(x), y) + (1 - kappa)·CE(z_worst, y)`` where ``z_worst = -m_lower`` and
``m_lower`` are lower bounds on the margins ``z_y - z_j`` over the ball of radius ``eps``: the
worst-case logits put 0 on the true class and ``-m_lower_j`` on every other class, so the robust
term is ``CE([0, -m_lower_j (j ≠ y)])`` — the "fake label 0" cross-entropy of auto_LiRPA's
training examples and of Gowal et al.'s Eq. 7.

References:
    Gowal et al., "On the Effectiveness of Interval Bound Propagation for Training Verifiably
    Robust Models", arXiv:1810.12715, 2018: ``kappa`` from 1 to 0.5, epsilon ramped from 0 after
    a warm-up (MNIST: 2k warm-up steps, 10k ramp steps), training at 1.1× the test epsilon
    (``eps_train_factor``). MNIST verified error 2.23 % at eps 0.1, 8.05 % at eps 0.3.
    Zhang et al., "Towards Stable and Efficient Training of Verifiably Robust Neural Networks",
    ICLR 2020 (CROWN-IBP): bounds ``beta·CROWN-IBP + (1 - beta)·IBP`` with ``beta`` annealed
    from 1 to 0 while epsilon grows; ``kappa`` 1 → 0. MNIST eps 0.3: 6.68 % verified error.

Training mode: the clean forward pass runs in the model's current mode (so BatchNorm updates its
running statistics once per step, as usual). The bounds never call the model; a BatchNorm layer
in training mode is bounded as the affine map defined by the clean batch's statistics — the map
the model's own forward pass applies to this batch — and Dropout in training mode is bounded as
the identity (its expectation). In eval mode every layer is bounded exactly. The losses never
change the model's mode, parameters' ``requires_grad`` or BatchNorm statistics themselves.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from advtrain.certify.crown import compute_crown_ibp
from advtrain.certify.ibp import compute_ibp, verified
from advtrain.certify.spec import BOUND_NORMS, check_arguments
from advtrain.losses.base import TrainingLoss, accuracy, check_beta
from advtrain.threat import check_bounds, check_eps, check_norm


def _check_unit(value: Any, name: str) -> float:
    out = check_beta(value, name)
    if out > 1:
        raise ValueError(f"{name} must lie in [0, 1], got {value!r}")
    return out


class IBPLoss(TrainingLoss):
    """Interval bound propagation training loss (Gowal et al. 2018).

    ``kappa·CE(f(x), y) + (1 - kappa)·CE(-m_lower, y)`` with ``m_lower`` the IBP lower bounds
    of the margins ``z_y - z_j`` at radius :attr:`eps` (:func:`advtrain.certify.interval_bounds`
    with ``labels=y``, the spec folded into the last layer).

    ``eps`` is the radius the bounds use at this step: a schedule drives it (ramp from 0).
    ``eps_train_factor`` records the paper's advice to train at a larger radius than the one
    certified at test time (1.1×; Gowal et al.): recipes set the schedule's final value to
    ``eps_train_factor × test eps``; :attr:`test_eps` gives the radius a final ``eps``
    corresponds to. The loss itself always uses :attr:`eps`.

    Args:
        eps: Training radius in input units (schedulable; start at 0 and ramp up).
        kappa: Weight of the clean cross-entropy in ``[0, 1]`` (schedulable; 1 → 0.5 in Gowal
            et al.).
        norm: ``"linf"`` or ``"l2"``.
        bounds: The input box ``(low, high)``.
        eps_train_factor: Ratio of training to test radius used by recipes (``>= 1``; 1.1).

    Logs:
        ``loss/clean``, ``loss/ibp`` (the robust cross-entropy), ``acc/clean``, ``acc/verified``
        (fraction of the batch whose margin lower bounds are all positive at ``eps``), ``eps``,
        ``kappa`` — detached scalars.

    Example:
        >>> loss_fn = IBPLoss(eps=0.0, kappa=1.0)
        >>> # per step: loss_fn.eps, loss_fn.kappa = ramp(step); loss, logs = loss_fn(model, x, y)
    """

    def __init__(
        self,
        eps: float = 0.0,
        kappa: float = 0.5,
        norm: str = "linf",
        bounds: Sequence[float] = (0.0, 1.0),
        eps_train_factor: float = 1.1,
    ) -> None:
        super().__init__()
        self.eps = eps
        self.kappa = kappa
        self.norm = check_norm(norm, BOUND_NORMS)
        self.bounds = check_bounds(bounds)
        factor = check_beta(eps_train_factor, "eps_train_factor")
        if factor < 1:
            raise ValueError(f"eps_train_factor must be >= 1 (1.1 in Gowal et al.), got {factor}")
        self.eps_train_factor = factor
        self._log_each_bound = False

    @property
    def eps(self) -> float:
        """Training radius used by the bounds (schedulable)."""
        return self._eps

    @eps.setter
    def eps(self, value: float) -> None:
        self._eps = check_eps(value)

    @property
    def kappa(self) -> float:
        """Weight of the clean cross-entropy, in ``[0, 1]`` (schedulable)."""
        return self._kappa

    @kappa.setter
    def kappa(self, value: float) -> None:
        self._kappa = _check_unit(value, "kappa")

    @property
    def test_eps(self) -> float:
        """The test radius that the current training radius corresponds to: ``eps / factor``."""
        return self.eps / self.eps_train_factor

    def margin_lower_bounds(self, model: nn.Module, x: Tensor, y: Tensor) -> dict[str, Tensor]:
        """Lower bounds on the margins used by the loss, by name (``"ibp"``)."""
        inputs = check_arguments(model, x, self.eps, self.norm, self.bounds)
        lower, _ = compute_ibp(model, inputs, y, batch_stats=True)
        return {"ibp": lower}

    def combine(self, bounds: dict[str, Tensor]) -> Tensor:
        """The lower margins the robust term uses (IBP's, here)."""
        return bounds["ibp"]

    def compute(self, model: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        logits = self.logits(model, x, y)
        loss_clean = F.cross_entropy(logits, y)
        kappa = self.kappa
        # With kappa = 1 the robust term has no weight: bound without a graph, for the logs only.
        with torch.set_grad_enabled(torch.is_grad_enabled() and kappa < 1):
            bounds = self.margin_lower_bounds(model, x, y)
            lower = self.combine(bounds).float()
            loss_robust = F.cross_entropy(-lower, y)
        loss = kappa * loss_clean if kappa == 1 else kappa * loss_clean + (1 - kappa) * loss_robust
        logs = {
            "loss/clean": loss_clean.detach(),
            "loss/ibp": loss_robust.detach(),
            "acc/clean": accuracy(logits, y),
            "acc/verified": verified(lower.detach(), y).float().mean(),
            "eps": torch.tensor(self.eps),
            "kappa": torch.tensor(kappa),
        }
        if self._log_each_bound:
            for name, b in bounds.items():
                logs[f"acc/verified_{name}"] = verified(b.detach(), y).float().mean()
        return loss, logs

    def extra_repr(self) -> str:
        return (
            f"eps={self.eps:.6g}, kappa={self.kappa:g}, norm={self.norm!r}, bounds={self.bounds}, "
            f"eps_train_factor={self.eps_train_factor:g}"
        )


class CROWNIBPLoss(IBPLoss):
    """CROWN-IBP training loss (Zhang et al., ICLR 2020).

    Like :class:`IBPLoss`, with margin lower bounds ``beta·m_CROWN-IBP + (1 - beta)·m_IBP``: the
    CROWN-IBP bound (IBP intermediate bounds, a CROWN backward pass for the margins; see
    :func:`advtrain.certify.crown_bounds` with ``intermediate="ibp"``) mixed with the pure IBP
    bound. A convex combination of two lower bounds is a lower bound, so ``acc/verified`` is
    sound. ``beta`` is annealed from 1 to 0 as epsilon grows (the paper and auto_LiRPA use
    ``beta = 1 - eps / eps_max``); with ``beta = 0`` the CROWN pass is skipped (pure IBP cost).

    Args:
        eps: Training radius (schedulable).
        kappa: Weight of the clean cross-entropy in ``[0, 1]`` (schedulable).
        beta: Weight of the CROWN-IBP bound in ``[0, 1]`` (schedulable; 1 → 0).
        norm: ``"linf"`` or ``"l2"``.
        bounds: The input box.
        eps_train_factor: Ratio of training to test radius used by recipes (``>= 1``).

    Logs:
        Those of :class:`IBPLoss` (``loss/ibp`` is the robust cross-entropy of the mixed bound,
        ``acc/verified`` its verified accuracy), plus ``beta``, ``acc/verified_ibp`` and, when
        ``beta > 0``, ``acc/verified_crown_ibp``.
    """

    def __init__(
        self,
        eps: float = 0.0,
        kappa: float = 0.5,
        beta: float = 1.0,
        norm: str = "linf",
        bounds: Sequence[float] = (0.0, 1.0),
        eps_train_factor: float = 1.1,
    ) -> None:
        super().__init__(eps, kappa, norm, bounds, eps_train_factor)
        self.beta = beta
        self._log_each_bound = True

    @property
    def beta(self) -> float:
        """Weight of the CROWN-IBP bound, in ``[0, 1]`` (schedulable)."""
        return self._beta

    @beta.setter
    def beta(self, value: float) -> None:
        self._beta = _check_unit(value, "beta")

    def margin_lower_bounds(self, model: nn.Module, x: Tensor, y: Tensor) -> dict[str, Tensor]:
        inputs = check_arguments(model, x, self.eps, self.norm, self.bounds)
        if self.beta == 0:
            lower, _ = compute_ibp(model, inputs, y, batch_stats=True)
            return {"ibp": lower}
        crown, ibp = compute_crown_ibp(model, inputs, y, batch_stats=True)
        return {"ibp": ibp, "crown_ibp": crown}

    def combine(self, bounds: dict[str, Tensor]) -> Tensor:
        beta = self.beta
        if beta == 0 or "crown_ibp" not in bounds:
            return bounds["ibp"]
        if beta == 1:
            return bounds["crown_ibp"]
        return beta * bounds["crown_ibp"] + (1 - beta) * bounds["ibp"]

    def compute(self, model: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        loss, logs = super().compute(model, x, y)
        logs["beta"] = torch.tensor(self.beta)
        return loss, logs

    def extra_repr(self) -> str:
        return super().extra_repr() + f", beta={self.beta:g}"


__all__ = ["CROWNIBPLoss", "IBPLoss"]

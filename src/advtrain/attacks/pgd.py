"""Projected gradient descent (PGD) and its one-step special case FGSM / FGSM-RS.

References:
    Madry et al., "Towards Deep Learning Models Resistant to Adversarial Attacks", ICLR 2018:
    PGD with a uniform random start; MNIST eps 0.3, 40 steps of 0.01; CIFAR-10 eps 8/255,
    10 steps of 2/255 for training, 20+ steps with restarts for evaluation.
    Goodfellow et al., "Explaining and Harnessing Adversarial Examples", ICLR 2015 (FGSM).
    Wong et al., "Fast is better than free: Revisiting adversarial training", ICLR 2020
    (FGSM-RS: uniform random start in the ball, step 1.25·eps).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from advtrain.attacks.base import Attack
from advtrain.attacks.objectives import get_objective, misclassified
from advtrain.attacks.precision import loss_scaled_logits
from advtrain.modes import BNMode
from advtrain.validation import check_positive_int


class PGD(Attack):
    """Projected gradient ascent on a per-example loss, with random starts and restarts.

    Each step moves ``alpha`` along the norm's steepest-ascent direction of the loss's input
    gradient and projects back onto the ball ∩ box. With ``restarts > 1`` every restart after the
    first runs only on the examples that are still classified correctly, and the result is, per
    example, the worst case found: a misclassified point if any restart found one, else the point
    of highest loss.

    Args:
        eps: Radius of the ball, in input units.
        norm: ``"linf"``, ``"l2"`` or ``"l1"``.
        steps: Gradient steps per restart (``>= 1``).
        alpha: Step size; defaults to ``2.5 · eps / steps`` (Madry et al.).
        restarts: Independent runs; the worst case per example is returned.
        random_start: Start each restart from a uniformly random point of the ball.
        loss: ``"ce"`` (cross-entropy), ``"cw"`` (margin) or ``"dlr"``.
        bounds: ``(low, high)`` of valid inputs.
        seed: Seed of the attack's generator (random starts).
        bn_mode: BatchNorm behaviour during the attack (default ``"eval"``).
    """

    supported_norms = ("linf", "l2", "l1")

    def __init__(
        self,
        eps: float = 8 / 255,
        norm: str = "linf",
        steps: int = 10,
        alpha: float | None = None,
        restarts: int = 1,
        random_start: bool = True,
        loss: str = "ce",
        bounds: Sequence[float] = (0.0, 1.0),
        seed: int | None = None,
        bn_mode: BNMode = "eval",
    ) -> None:
        super().__init__(eps=eps, norm=norm, bounds=bounds, seed=seed, bn_mode=bn_mode)
        self.steps = check_positive_int(steps, "steps")
        self.restarts = check_positive_int(restarts, "restarts")
        self.random_start = bool(random_start)
        self.loss = loss
        self.objective = get_objective(loss)
        if alpha is not None:
            alpha = float(alpha)
            if not alpha > 0:
                raise ValueError(f"alpha (step size) must be > 0, got {alpha}")
        self._alpha = alpha

    @property
    def name(self) -> str:  # type: ignore[override]
        """Report name, e.g. ``pgd-50x5``."""
        return f"pgd-{self.steps}" + (f"x{self.restarts}" if self.restarts > 1 else "")

    @property
    def alpha(self) -> float:
        """Step size; ``2.5 · eps / steps`` unless set explicitly (schedulable)."""
        return self._alpha if self._alpha is not None else 2.5 * self.eps / self.steps

    @alpha.setter
    def alpha(self, value: float | None) -> None:
        if value is not None and not float(value) > 0:
            raise ValueError(f"alpha (step size) must be > 0, got {value}")
        self._alpha = None if value is None else float(value)

    def extra_repr(self) -> str:
        return (
            f"steps={self.steps}, alpha={self.alpha:.6g}, restarts={self.restarts}, "
            f"random_start={self.random_start}, loss={self.loss!r}"
        )

    def _run(self, model: nn.Module, x: Tensor, y: Tensor, restart: int) -> Tensor:
        """One restart from a random (or the clean) point; returns the final iterate."""
        threat = self.threat
        alpha = self.alpha
        first = restart == 0
        x_adv = (
            threat.random_start(x, self.draws(x.device), (restart,))
            if self.random_start
            else x.clone()
        )
        limits = threat.linf_limits(x) if threat.norm == "linf" else None
        for step in range(self.steps):
            x_adv.requires_grad_(True)
            logits = model(x_adv)
            if first and step == 0:
                self.check_logits(logits, y)
            logits, unscale = loss_scaled_logits(logits, per_example=self.bn_mode == "eval")
            loss = self.objective(logits, y)
            (grad,) = torch.autograd.grad(loss.sum(), x_adv)
            grad = unscale(grad)
            with torch.no_grad():
                # Linf: in place (the graph that saved x_adv was freed by autograd.grad)
                x_adv = threat.ascent_step(x_adv, grad, alpha, x, limits)
        return x_adv.detach()

    def perturb(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        if self.restarts == 1:
            return self._run(model, x, y, restart=0)
        best = x.clone()
        best_loss = torch.full((x.shape[0],), float("-inf"), device=x.device)
        fooled = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        for restart in range(self.restarts):
            todo = (~fooled).nonzero().squeeze(1)
            if todo.numel() == 0:
                break
            x_r, y_r = x[todo], y[todo]
            with self.narrow(todo):
                cand = self._run(model, x_r, y_r, restart=restart)
            with torch.no_grad():
                logits = model(cand)
                cand_loss = self.objective(logits, y_r)
                cand_fooled = misclassified(logits, y_r)
            better = cand_fooled | (cand_loss > best_loss[todo])
            idx = todo[better]
            best[idx] = cand[better]
            best_loss[idx] = cand_loss[better]
            fooled[idx] = cand_fooled[better]
        return best


class FGSM(PGD):
    """Fast gradient sign method; with ``random_start=True`` it is FGSM-RS of Fast-AT.

    One step of size ``alpha`` from ``x`` (FGSM, Goodfellow et al. 2015: ``alpha = eps``) or from
    a uniformly random point of the ball (FGSM-RS, Wong et al. 2020: ``alpha = 1.25 · eps``),
    projected onto the ball ∩ box.

    Args:
        eps: Radius of the ball.
        norm: ``"linf"`` or ``"l2"``.
        alpha: Step size; ``eps`` without and ``1.25 · eps`` with a random start by default.
        random_start: Start from a uniformly random point of the ball.
        loss: ``"ce"``, ``"cw"`` or ``"dlr"``.
        bounds: ``(low, high)`` of valid inputs.
        seed: Seed of the random start.
        bn_mode: BatchNorm behaviour during the attack.
    """

    supported_norms = ("linf", "l2")

    def __init__(
        self,
        eps: float = 8 / 255,
        norm: str = "linf",
        alpha: float | None = None,
        random_start: bool = False,
        loss: str = "ce",
        bounds: Sequence[float] = (0.0, 1.0),
        seed: int | None = None,
        bn_mode: BNMode = "eval",
    ) -> None:
        super().__init__(
            eps=eps,
            norm=norm,
            steps=1,
            alpha=alpha,
            restarts=1,
            random_start=random_start,
            loss=loss,
            bounds=bounds,
            seed=seed,
            bn_mode=bn_mode,
        )

    @property
    def name(self) -> str:  # type: ignore[override]
        return "fgsm-rs" if self.random_start else "fgsm"

    @property
    def alpha(self) -> float:
        """Step size; ``eps`` (FGSM) or ``1.25 · eps`` (FGSM-RS) unless set (schedulable)."""
        if self._alpha is not None:
            return self._alpha
        return 1.25 * self.eps if self.random_start else self.eps

    @alpha.setter
    def alpha(self, value: float | None) -> None:
        PGD.alpha.fset(self, value)  # type: ignore[attr-defined]

    def extra_repr(self) -> str:
        return f"alpha={self.alpha:.6g}, random_start={self.random_start}, loss={self.loss!r}"

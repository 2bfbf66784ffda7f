"""FMN: the fast minimum-norm attack, each example's smallest adversarial perturbation found.

References:
    Pintor, Roli, Brendel & Biggio, "Fast Minimum-norm Adversarial Attacks through Adaptive Norm
    Constraints", NeurIPS 2021. Each step takes the input gradient of the logit difference
    ``max_{j != y} z_j - z_y``, moves ``alpha`` along it (normalised in L2; here by default along
    the cross-entropy's gradient instead, :class:`FMN`'s ``direction``) and projects onto an
    Lp ball of radius ``epsilon`` that adapts per example: before any adversarial point is found it
    is the linear estimate of the distance to the boundary (``||delta|| + |loss| / ||grad||_q``,
    ``q`` the dual norm), then it shrinks by ``1 - gamma`` while the iterate is adversarial and
    grows by ``1 + gamma`` while it is not; ``alpha`` and ``gamma`` are cosine-annealed (defaults
    of the paper: ``alpha`` from 1 to 1/100 of it, ``gamma`` from 0.05 to 0.001; Linf here
    starts from a larger step, :meth:`FMN.step_sizes`). The smallest
    adversarial perturbation seen is kept.

One run gives every example's minimal norm, so robust accuracy at every eps of a grid comes from
it (:meth:`FMN.min_norm`): an example is robust at ``eps`` when no adversarial point within
``eps`` was found. Called as an ordinary attack at ``eps`` the ball never grows past ``eps``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from advtrain.attacks.base import Attack
from advtrain.attacks.objectives import cross_entropy, cw_margin
from advtrain.modes import BNMode
from advtrain.threat import project_l1_box
from advtrain.validation import check_positive_int

#: The dual norm's ``p`` of each threat norm (for the distance-to-boundary estimate).
DUAL_P = {"linf": 1.0, "l2": 2.0, "l1": math.inf}
_P = {"linf": math.inf, "l2": 2.0, "l1": 1.0}


def _positive(value: float, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {value!r}")
    if not (math.isfinite(float(value)) and float(value) > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


class FMN(Attack):
    """The fast minimum-norm attack (Pintor et al., NeurIPS 2021), untargeted.

    Args:
        eps: Radius used when called as an attack (``attack(model, x, y)``): the adaptive ball
            never grows past it. :meth:`min_norm` ignores it.
        norm: ``"linf"``, ``"l2"`` or ``"l1"``.
        steps: Gradient steps (one forward and backward pass each).
        alpha_init: Initial step size along the L2-normalised gradient (default: see
            :meth:`step_sizes`).
        alpha_final: Final step size (default ``alpha_init / 100``).
        gamma_init: Initial factor by which the ball shrinks or grows per step.
        gamma_final: Final factor.
        direction: ``"ce"``: step along the cross-entropy's input gradient (the ball's boundary
            estimate still uses the logit difference's; two backward passes per step). On the
            digits models of the benchmarks the paper's ``"margin"`` (one gradient for both)
            left the curve up to 3.6 points above APGD-CE's at some eps, ``"ce"`` within 1.4
            (BENCHMARKS.md, chosen on the validation split).
        bounds: ``(low, high)`` of valid inputs.
        seed: Unused (FMN draws no random numbers); kept for the common signature.
        bn_mode: BatchNorm behaviour during the attack (default ``"eval"``).
    """

    supported_norms = ("linf", "l2", "l1")
    name = "fmn"

    def __init__(
        self,
        eps: float = 8 / 255,
        norm: str = "linf",
        steps: int = 100,
        alpha_init: float | None = None,
        alpha_final: float | None = None,
        gamma_init: float = 0.05,
        gamma_final: float = 0.001,
        direction: str = "ce",
        bounds: Sequence[float] = (0.0, 1.0),
        seed: int | None = None,
        bn_mode: BNMode = "eval",
    ) -> None:
        super().__init__(eps=eps, norm=norm, bounds=bounds, seed=seed, bn_mode=bn_mode)
        self.steps = check_positive_int(steps, "steps")
        self.alpha_init = None if alpha_init is None else _positive(alpha_init, "alpha_init")
        self.alpha_final = None if alpha_final is None else _positive(alpha_final, "alpha_final")
        self.gamma_init = _positive(gamma_init, "gamma_init")
        self.gamma_final = _positive(gamma_final, "gamma_final")
        if direction not in ("ce", "margin"):
            raise ValueError(f"direction must be 'ce' or 'margin', got {direction!r}")
        self.direction = direction
        if self.gamma_init >= 1 or self.gamma_final >= 1:
            raise ValueError(
                f"gamma_init and gamma_final must be < 1 (the ball shrinks by 1 - gamma), got "
                f"{gamma_init} and {gamma_final}"
            )

    def extra_repr(self) -> str:
        return f"steps={self.steps}, alpha_init={self.alpha_init}, direction={self.direction!r}"

    def step_sizes(self, dim: int) -> tuple[float, float]:
        """``(alpha_init, alpha_final)`` for inputs of ``dim`` values.

        Defaults: the paper's 1 for L2 and L1; for Linf ``10 * sqrt(dim)``, a step that reaches
        the faces of the current ball (about 10 per coordinate of the L2-normalised gradient),
        i.e. sign steps: the paper's 1 left the Linf curve several points above APGD-CE's at
        1.5 eps (chosen on training digits, BENCHMARKS.md). The final step is 1/100 of the first.
        """
        first = self.alpha_init
        if first is None:
            first = 10.0 * math.sqrt(dim) if self.norm == "linf" else 1.0
        return first, first / 100 if self.alpha_final is None else self.alpha_final

    # -- the search -----------------------------------------------------------------------------
    def _norms(self, delta: Tensor) -> Tensor:
        return delta.flatten(1).norm(p=_P[self.norm], dim=1)

    def _project(self, delta: Tensor, x: Tensor, radius: Tensor) -> Tensor:
        """``delta`` onto the ball of per-example ``radius`` intersected with the box."""
        low, high = self.bounds
        shape = (-1,) + (1,) * (x.dim() - 1)
        if self.norm == "l1":
            return project_l1_box(delta, x, radius, low, high)
        if self.norm == "linf":
            r = radius.view(shape)
            delta = torch.maximum(torch.minimum(delta, r), -r)
        else:
            scale = (radius / self._norms(delta).clamp_min(1e-12)).clamp(max=1.0)
            delta = delta * scale.view(shape)
        return (x + delta).clamp(low, high) - x

    def search(
        self,
        model: nn.Module,
        x: Tensor,
        y: Tensor,
        cap: float,
        start: Tensor | None = None,
        steps: int | None = None,
    ) -> tuple[Tensor, Tensor]:
        """The smallest adversarial point found per example and its norm (``inf`` where none was
        found within ``cap``; ``0`` for an example misclassified as it is).

        ``start``: points to start from instead of ``x`` (FMN's warm start: an adversarial start
        makes the ball begin at its norm and shrink). ``model`` must already be in the attack's
        mode with autograd enabled.
        """
        steps = self.steps if steps is None else steps
        low, high = self.bounds
        shape = (-1,) + (1,) * (x.dim() - 1)
        worst = self._norms(torch.maximum(x - low, high - x))  # the farthest point of the box
        limit = worst.clamp(max=cap)
        best_norm = torch.full_like(worst, math.inf)
        best_adv = x.clone()
        found = torch.zeros_like(worst, dtype=torch.bool)
        radius = torch.full_like(worst, math.inf)
        alpha_init, alpha_final = self.step_sizes(x[0].numel())
        delta = torch.zeros_like(x) if start is None else (start - x).detach()
        all_found = False
        for i in range(steps + 1):
            delta.requires_grad_(True)
            logits = model(x + delta)
            if i == 0:
                self.check_logits(logits, y)
            loss = cw_margin(logits, y)  # max_{j != y} z_j - z_y > 0: misclassified
            norm = self._norms(delta.detach())
            adv = loss.detach() > 0
            better = adv & (norm < best_norm)
            best_norm = torch.where(better, norm, best_norm)
            best_adv = torch.where(better.view(shape), (x + delta).detach(), best_adv)
            found |= adv
            if i == steps:  # the last iterate is checked, not moved
                break
            # The boundary estimate needs the logit difference's gradient, but only until every
            # example has had an adversarial point (then the ball moves by gamma alone); the
            # step goes along the cross-entropy's (direction="ce") or the same gradient.
            ce = self.direction == "ce"
            searching_any = not ce or not all_found
            grad = None
            if searching_any:
                (grad,) = torch.autograd.grad(loss.sum(), delta, retain_graph=ce)
            if ce:
                (direction,) = torch.autograd.grad(cross_entropy(logits, y).sum(), delta)
            else:
                direction = grad
            all_found = all_found or bool(found.all())  # one host sync per step until true
            delta = delta.detach()
            cosine = (1 + math.cos(math.pi * i / steps)) / 2
            alpha = alpha_final + (alpha_init - alpha_final) * cosine
            gamma = self.gamma_final + (self.gamma_init - self.gamma_final) * cosine
            if grad is None:  # every example found: the estimate is not used
                estimate = norm
            else:
                dual = grad.flatten(1).norm(p=DUAL_P[self.norm], dim=1).clamp_min(1e-12)
                estimate = norm + loss.detach().abs() / dual
            # Before the first adversarial point the ball follows the linear estimate, but never
            # shrinks (a deviation from the paper: where the estimate is optimistic the ball
            # stalled just short of the boundary and the example was never attacked; a point on
            # the boundary, estimate 0, needs a ball that is not empty to grow from).
            grow = radius * (1 + gamma)
            searching = torch.where(torch.isfinite(radius), estimate.maximum(grow), estimate)
            searching = searching.maximum(limit * 1e-6)
            radius = torch.where(
                adv,
                torch.minimum(radius * (1 - gamma), best_norm),
                torch.where(found, grow, searching),
            ).minimum(limit)
            step = direction / direction.flatten(1).norm(dim=1).clamp_min(1e-12).view(shape)
            delta = self._project(delta + alpha * step, x, radius)
        return best_adv, torch.where(found & (best_norm <= cap), best_norm, math.inf)

    def perturb(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        """The smallest adversarial point found within ``eps``; ``x`` where none was found."""
        best_adv, _ = self.search(model, x, y, cap=self.eps)
        return best_adv

    def min_norm(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        """Each example's smallest adversarial perturbation norm found (``(n,)`` float tensor;
        ``inf`` where the search found none, ``0`` where the model is wrong on ``x`` itself).

        The model's mode, parameters and gradients are restored afterwards.
        """
        return self.run_checked(
            model, x, y, lambda x_in, y_in: self.search(model, x_in, y_in, cap=math.inf)[1]
        )


__all__ = ["FMN"]

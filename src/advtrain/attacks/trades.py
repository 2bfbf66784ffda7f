"""The inner maximisation of TRADES: the point of the ball whose prediction is farthest, in KL
divergence, from the prediction on the clean input.

References:
    Zhang, Yu, Jiao, Xing, El Ghaoui & Jordan, "Theoretically Principled Trade-off between
    Robustness and Accuracy", ICML 2019. The attack maximises
    ``KL(softmax(f(x)) || softmax(f(x')))`` over the ball, starting from ``x + 0.001·N(0, I)``;
    Linf: sign steps, 10 steps of 0.007 at eps 0.031 on CIFAR-10 (eps 0.3, 40 steps of 0.01 on
    MNIST); L2: steps of ``2·eps/steps`` along the normalised gradient. The model is in eval mode
    while the attack runs.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from advtrain.attacks.base import Attack
from advtrain.attacks.precision import loss_scaled_logits
from advtrain.modes import BNMode
from advtrain.validation import check_positive_int

#: The paper's CIFAR-10 step-to-radius ratio, 0.007 / 0.031 (eps / 4.43).
LINF_ALPHA_RATIO = 0.007 / 0.031


def kl_to_clean(clean_logits: Tensor, adv_logits: Tensor) -> Tensor:
    """Per-example ``KL(softmax(clean) || softmax(adv))`` in float32, shape ``(batch,)``."""
    log_p = F.log_softmax(clean_logits.float(), dim=1)
    log_q = F.log_softmax(adv_logits.float(), dim=1)
    return (log_p.exp() * (log_p - log_q)).sum(dim=1)


class TRADESAttack(Attack):
    """TRADES' KL attack (Zhang et al., ICML 2019), the inner loop of :class:`TRADESLoss`.

    Starts from ``x + init_std·N(0, I)`` projected into the ball and the box, then takes
    ``steps`` ascent steps on ``KL(softmax(f(x)) || softmax(f(x')))``, each projected back onto the
    ball ∩ box. Labels are not used (the clean prediction is the target distribution); they are
    accepted, and validated, so that every attack has the same ``attack(model, x, y)`` interface.

    Args:
        eps: Radius of the ball, in input units (paper: 0.031 on CIFAR-10, 0.3 on MNIST).
        norm: ``"linf"`` or ``"l2"``.
        steps: Ascent steps (paper: 10 on CIFAR-10, 40 on MNIST).
        alpha: Step size; defaults to ``eps · 0.007/0.031`` (``≈ eps / 4.43``, the paper's CIFAR-10
            ratio) for Linf and ``2·eps/steps`` for L2 (the paper's code).
        init_std: Standard deviation of the Gaussian random start (paper: 0.001).
        bounds: ``(low, high)`` of valid inputs.
        seed: Seed of the random start.
        bn_mode: BatchNorm behaviour during the attack (default ``"eval"``, as in the paper).
    """

    supported_norms = ("linf", "l2")
    name = "trades-kl"

    def __init__(
        self,
        eps: float = 0.031,
        norm: str = "linf",
        steps: int = 10,
        alpha: float | None = None,
        init_std: float = 0.001,
        bounds: Sequence[float] = (0.0, 1.0),
        seed: int | None = None,
        bn_mode: BNMode = "eval",
    ) -> None:
        super().__init__(eps=eps, norm=norm, bounds=bounds, seed=seed, bn_mode=bn_mode)
        self.steps = check_positive_int(steps, "steps")
        self.alpha = alpha
        if isinstance(init_std, bool) or not isinstance(init_std, (int, float)):
            raise TypeError(f"init_std must be a number >= 0, got {init_std!r}")
        if not float(init_std) >= 0:
            raise ValueError(f"init_std must be >= 0 (paper: 0.001), got {init_std}")
        self.init_std = float(init_std)

    @property
    def alpha(self) -> float:
        """Step size (schedulable); the paper's default for the norm unless set explicitly."""
        if self._alpha is not None:
            return self._alpha
        if self.norm == "linf":
            return LINF_ALPHA_RATIO * self.eps
        return 2.0 * self.eps / self.steps

    @alpha.setter
    def alpha(self, value: float | None) -> None:
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"alpha (step size) must be a number > 0 or None, got {value!r}")
            if not float(value) > 0:
                raise ValueError(f"alpha (step size) must be > 0, got {value}")
        self._alpha = None if value is None else float(value)

    def extra_repr(self) -> str:
        return f"steps={self.steps}, alpha={self.alpha:.6g}, init_std={self.init_std:g}"

    def perturb(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        threat = self.threat
        alpha = self.alpha
        with torch.no_grad():
            clean_logits = model(x)
            self.check_logits(clean_logits, y)
            draws = self.draws(x.device)
            noise = draws.randn(x.shape, x.dtype, (0,))
            x_adv = threat.project(x + self.init_std * noise, x)
        limits = threat.linf_limits(x) if threat.norm == "linf" else None
        for step in range(self.steps):
            x_adv.requires_grad_(True)
            adv_logits, unscale = loss_scaled_logits(
                model(x_adv), per_example=self.bn_mode == "eval"
            )
            kl = kl_to_clean(clean_logits, adv_logits)
            (grad,) = torch.autograd.grad(kl.sum(), x_adv)
            grad = unscale(grad)
            with torch.no_grad():
                if self.norm == "l2":
                    # A zero gradient (e.g. at x' = x exactly) gets a random direction instead.
                    zero = grad.flatten(1).norm(dim=1) == 0
                    if bool(zero.any()):
                        rand = draws.randn(grad.shape, grad.dtype, (1, step))
                        grad = torch.where(zero.view(-1, *([1] * (x.dim() - 1))), rand, grad)
                x_adv = threat.ascent_step(x_adv, grad, alpha, x, limits)  # Linf: in place
        return x_adv.detach()

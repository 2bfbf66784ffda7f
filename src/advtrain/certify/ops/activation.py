"""Nonlinear elementwise layers: monotone activations (IBP) and (leaky) ReLU (IBP and CROWN).

The ReLU relaxation follows auto_LiRPA's ``BoundRelu`` exactly: the upper line passes through
``(l, 0)`` and ``(u, u)``, computed as ``d = u⁺ / (u⁺ - l⁻)`` with ``u⁺ = max(u, 0, l⁻ + 1e-8)``,
``l⁻ = min(l, 0)``; the lower line is ``y >= a·x`` with the adaptive slope ``a = 1`` when
``d > 1/2`` (i.e. ``u > -l``) and 0 otherwise (``relu_lower="adaptive"``; ``"zero"`` and ``"one"``
are auto_LiRPA's ``zero-lb``/``one-lb``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from advtrain.certify.ops.base import Backward, BoundOp, Box, Interval, RunContext, pos_neg

#: The lower-slope rules of the ReLU relaxation (:attr:`RunContext.relu_lower`).
RELU_LOWER: tuple[str, ...] = ("adaptive", "zero", "one")


class MonotoneOp(BoundOp):
    """An elementwise non-decreasing activation: boxes map endpoint to endpoint (IBP only)."""

    needs_input_bounds = True
    elementwise = True

    def __init__(self, name: str, fn: Callable[[Tensor], Tensor]) -> None:
        """The activation ``fn`` (non-decreasing, elementwise)."""
        super().__init__(name)
        self.fn = fn

    def forward(self, ctx: RunContext, *xs: Tensor) -> Tensor:
        """The activation on a batch."""
        return self.fn(xs[0])

    def interval(self, ctx: RunContext, *ivs: Interval) -> Interval:
        """``[fn(l), fn(u)]``."""
        lo, hi = ivs[0]
        return self.fn(lo), self.fn(hi)


def relu_relaxation(
    lower: Tensor, upper: Tensor, rule: str = "adaptive", leak: float = 0.0
) -> tuple[Tensor, Tensor, Tensor]:
    """CROWN's linear relaxation of (leaky) ReLU on ``[lower, upper]``, as in auto_LiRPA.

    Args:
        lower: Lower bounds of the pre-activations.
        upper: Upper bounds of the pre-activations.
        rule: Lower-slope rule, one of :data:`RELU_LOWER`.
        leak: Negative slope of a leaky ReLU (``0 <= leak <= 1``).

    Returns:
        ``(upper_slope, upper_intercept, lower_slope)``: ``slope_u·x + intercept_u`` is an upper
        and ``slope_l·x`` a lower bound of the activation on the interval.
    """
    lb_r = lower.clamp(max=0)
    ub_r = torch.maximum(upper.clamp(min=0), lb_r + 1e-8)
    if leak > 0:
        upper_d = (ub_r - leak * lb_r) / (ub_r - lb_r)
        upper_b = -lb_r * upper_d + leak * lb_r
    else:
        upper_d = ub_r / (ub_r - lb_r)
        upper_b = -lb_r * upper_d
    if rule == "adaptive":
        lower_d = (upper_d > 0.5).to(upper_d)
    elif rule == "zero":
        lower_d = (upper_d >= 1.0).to(upper_d)
    else:  # "one"
        lower_d = (upper_d > leak).to(upper_d)
    if leak > 0:
        lower_d = lower_d + (lower_d == 0).to(upper_d) * leak
    return upper_d, upper_b, lower_d


class ReLUOp(MonotoneOp):
    """ReLU / LeakyReLU (``0 <= negative_slope <= 1``) with the CROWN relaxation."""

    def __init__(self, name: str, leak: float = 0.0) -> None:
        """ReLU (``leak = 0``) or LeakyReLU with negative slope ``leak``."""
        self.leak = float(leak)
        fn: Callable[[Tensor], Tensor] = (
            F.relu if self.leak == 0 else (lambda t: F.leaky_relu(t, self.leak))
        )
        super().__init__(name, fn)

    def box(self, ctx: RunContext, *boxes: Box, owned: bool = False) -> Box:
        """ReLU of a centre/width box in four elementwise passes and no temporaries.

        With ``c, w`` the input box and ``u = relu(c + w/2)`` the upper end of the output, the
        output width ``relu(c + w/2) - relu(c - w/2)`` equals ``min(u, w)`` (both are ``w`` when
        the neuron is active, 0 when inactive, ``u`` when unstable) and the output centre is
        ``u - width/2``. Same numbers as the endpoint form up to rounding.
        """
        if self.leak != 0:
            return super().box(ctx, *boxes, owned=owned)
        c, w = boxes[0]
        if not owned:
            upper = torch.add(c, w, alpha=0.5).relu_()
        else:
            upper = c.add_(w, alpha=0.5).relu_()
            if not (torch.is_grad_enabled() and (c.requires_grad or w.requires_grad)):
                width = torch.minimum(upper, w, out=w)
                return upper.sub_(width, alpha=0.5), width
        width = torch.minimum(upper, w)
        return torch.sub(upper, width, alpha=0.5), width

    def backward(
        self, ctx: RunContext, lA: Tensor | None, uA: Tensor | None, in_bounds: Sequence[Any]
    ) -> Backward:
        """Replaces the ReLU by the lines of :func:`relu_relaxation` (per coefficient sign)."""
        lower, upper = in_bounds[0]
        ud, ub, ld = relu_relaxation(lower, upper, ctx.relu_lower, self.leak)
        ud, ld = ud.unsqueeze(1), ld.unsqueeze(1)
        ub_col = ub.flatten(1).unsqueeze(-1)  # (B, n, 1): intercepts as a column for matmul
        new_l = new_u = None
        bias_l: Tensor | float = 0.0
        bias_u: Tensor | float = 0.0
        # Positive coefficients take the lower line for the lower bound and the upper line for
        # the upper bound, negative ones the other way round (Zhang et al. 2018, Theorem 3.2).
        parts_l = pos_neg(lA) if lA is not None else None
        parts_u = parts_l if uA is lA else (pos_neg(uA) if uA is not None else None)
        if parts_l is not None:
            pos, neg = parts_l
            new_l = pos * ld
            new_l.addcmul_(neg, ud)
            bias_l = neg.flatten(2).matmul(ub_col).squeeze(-1)
        if parts_u is not None:
            pos, neg = parts_u
            new_u = pos * ud
            new_u.addcmul_(neg, ld)
            bias_u = pos.flatten(2).matmul(ub_col).squeeze(-1)
        return [(new_l, new_u)], bias_l, bias_u


__all__ = ["RELU_LOWER", "MonotoneOp", "ReLUOp", "relu_relaxation"]

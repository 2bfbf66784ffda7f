"""The operator protocol shared by every bound operator, and the box and coefficient helpers.

Linear coefficient tensors ``A`` have shape ``(B_A, S, *node_shape)``: ``S`` specifications (rows of
the spec matrix, or neurons of an intermediate layer) per example, and ``B_A`` either the batch
size or 1 while ``A`` is still the same for every example (before the first relaxation). Bias terms
have shape ``(B_A, S)`` or are the scalar 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

#: A box in endpoint form ``(lower, upper)``.
Interval = tuple[Tensor, Tensor]
#: A box in centre/width form ``(mu, w)``: ``mu = (l + u) / 2`` and ``w = u - l >= 0``. IBP
#: propagates boxes in this form: an affine layer needs one product with ``M`` and one with
#: ``|M|`` and no elementwise pass (Gowal et al. 2018, Eq. 4-5).
Box = tuple[Tensor, Tensor]
#: Linear bound coefficients for the lower and the upper bound (either may be ``None``).
APair = tuple[Tensor | None, Tensor | None]
#: A 2-D layer argument (kernel size, stride, padding, dilation): one int or a pair.
Size2 = int | Sequence[int]
#: What :meth:`BoundOp.backward` returns: ``([(lA_i, uA_i) per input], lower_bias, upper_bias)``.
Backward = tuple[list[APair], Tensor | float, Tensor | float]


@dataclass
class RunContext:
    """Per-call state shared by the operators of one graph.

    Attributes:
        batch_stats: Use batch statistics for BatchNorm layers in training mode (the statistics
            of the clean batch, the affine map BatchNorm applies in the model's own forward
            pass). When ``False``, a BatchNorm layer in training mode is an error.
        bn: BatchNorm affine maps ``(scale, shift)`` computed from the clean batch, by node index.
        relu_lower: Lower-slope rule of the ReLU relaxation.
    """

    batch_stats: bool = False
    bn: dict[int, tuple[Tensor, Tensor]] = field(default_factory=dict)
    relu_lower: str = "adaptive"


def sum_spec(t: Tensor) -> Tensor:
    """Sums a ``(B, S, ...)`` tensor over everything but its first two dimensions."""
    return t.flatten(2).sum(dim=2) if t.dim() > 2 else t


def box_to_interval(box: Box) -> Interval:
    """``(mu, w)`` → ``(mu - w/2, mu + w/2)`` (fresh tensors)."""
    mu, w = box
    return torch.sub(mu, w, alpha=0.5), torch.add(mu, w, alpha=0.5)


def interval_to_box(iv: Interval) -> Box:
    """``(l, u)`` → ``((l + u)/2, u - l)`` (fresh tensors)."""
    lo, hi = iv
    return torch.add(hi, lo).mul_(0.5), torch.sub(hi, lo)


def pos_neg(a: Tensor) -> tuple[Tensor, Tensor]:
    """The positive and the negative part of ``a`` (``a = pos + neg``)."""
    return a.clamp(min=0), a.clamp(max=0)


def as_pair(v: Any) -> tuple[int, int]:
    """A 2-D layer argument (``int`` or a pair) as a pair of ints."""
    if isinstance(v, int):
        return v, v
    return int(v[0]), int(v[1])


class BoundOp:
    """Base class: one layer of a bound graph.

    Attributes:
        name: ``qualified.name (LayerType)``, used in error messages.
        index: The node index in its graph (set by the graph).
        needs_input_bounds: CROWN needs bounds on the input of this layer (nonlinear layers).
        elementwise: The layer acts coordinate-wise (and keeps the shape).
    """

    needs_input_bounds = False
    elementwise = False

    def __init__(self, name: str) -> None:
        """Creates the operator of the layer ``name`` (not yet placed in a graph)."""
        self.name = name
        self.index = -1

    def forward(self, ctx: RunContext, *xs: Tensor) -> Tensor:
        """The layer on a concrete batch."""
        raise NotImplementedError

    def interval(self, ctx: RunContext, *ivs: Interval) -> Interval:
        """The image of the boxes ``ivs`` (one per input)."""
        raise NotImplementedError

    def box(self, ctx: RunContext, *boxes: Box, owned: bool = False) -> Box:
        """The image of boxes in centre/width form (:data:`Box`), one per input.

        ``owned``: the caller owns the input tensors (fresh, read by nobody else); an operator
        may then overwrite them. The default goes through :meth:`interval`.
        """
        return interval_to_box(self.interval(ctx, *[box_to_interval(b) for b in boxes]))

    def backward(
        self, ctx: RunContext, lA: Tensor | None, uA: Tensor | None, in_bounds: Sequence[Any]
    ) -> Backward:
        """Maps linear bounds on the output to linear bounds on each input.

        Args:
            ctx: Run context.
            lA: Coefficients of the lower bound on the output (or ``None``).
            uA: Coefficients of the upper bound (may be the same tensor as ``lA``).
            in_bounds: Interval bounds of each input (``None`` where not computed).

        Returns:
            ``([(lA_i, uA_i) per input], lower_bias, upper_bias)``.

        Raises:
            NotImplementedError: For a layer CROWN does not support.
        """
        raise NotImplementedError(
            f"crown_bounds does not support the layer {self.name}; use interval_bounds (IBP), "
            "which supports it, or replace the layer"
        )


class InputOp(BoundOp):
    """The perturbed input."""

    def forward(self, ctx: RunContext, *xs: Tensor) -> Tensor:
        """The input itself."""
        return xs[0]


__all__ = [
    "APair",
    "Backward",
    "BoundOp",
    "Box",
    "InputOp",
    "Interval",
    "RunContext",
    "Size2",
    "as_pair",
    "box_to_interval",
    "interval_to_box",
    "pos_neg",
    "sum_spec",
]

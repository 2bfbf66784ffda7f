"""Shared pieces of the bound computations: argument checks, the input set, the margin spec.

The input set of every bound is the Lp ball around ``x`` intersected with the box ``bounds``:

* ``linf``: the box ``[max(x - eps, low), min(x + eps, high)]`` (exactly auto_LiRPA's ``x_L``,
  ``x_U`` for ``PerturbationLpNorm(norm=inf, x_L=..., x_U=...)``);
* ``l2``: the ball, described by its centre ``x`` and radius ``eps``; how much of the box is used
  is up to the method (see :func:`advtrain.certify.interval_bounds` and
  :func:`advtrain.certify.crown_bounds`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from advtrain.threat import check_bounds, check_eps, check_input_batch, check_labels, check_norm

BOUND_NORMS: tuple[str, ...] = ("linf", "l2")


@dataclass(frozen=True)
class InputSet:
    """The perturbation set ``{x' : ||x' - x|| <= eps} ∩ [low, high]`` of a batch.

    Attributes:
        x: Centres, shape ``(B, ...)``.
        eps: Radius.
        norm: ``"linf"`` or ``"l2"``.
        low: Lower end of the input box.
        high: Upper end of the input box.
    """

    x: Tensor
    eps: float
    norm: str
    low: float
    high: float

    def box(self, clip: bool = True) -> tuple[Tensor, Tensor]:
        """A box containing the set: ``[x - eps, x + eps]``, clipped to the input box if ``clip``.

        For ``linf`` (clipped) it is the set itself; for ``l2`` it contains the ball.
        """
        lo, hi = self.x - self.eps, self.x + self.eps
        if clip:  # fresh tensors: clip in place
            lo, hi = lo.clamp_(min=self.low), hi.clamp_(max=self.high)
        return lo, hi


def check_arguments(
    model: nn.Module,
    x: Tensor,
    eps: float,
    norm: str,
    bounds: Sequence[float],
) -> InputSet:
    """Validates the common arguments of the bound functions.

    Raises:
        TypeError: For a non-module model, a non-float ``x`` or a non-numeric ``eps``.
        ValueError: For a negative ``eps``, an unknown norm, bad bounds or ``x`` outside them.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    eps_f = check_eps(eps)
    norm_s = check_norm(norm, BOUND_NORMS)
    low, high = check_bounds(bounds)
    if isinstance(x, Tensor):
        x = x.detach()
    check_input_batch(x, (low, high))
    return InputSet(x, eps_f, norm_s, low, high)


def check_output(shape: Sequence[int], batch: int, labels: Tensor | None) -> int:
    """Checks that the model returns ``(batch, K)`` logits (and the labels fit); returns ``K``.

    Raises:
        ValueError: If the output is not a vector per example or a label is out of range.
        TypeError: If the labels are not integer class indices.
    """
    if len(shape) != 1:
        raise ValueError(
            f"bounds are computed on logits of shape (batch, num_classes); the model returns "
            f"(batch, {', '.join(str(s) for s in shape)})"
        )
    if labels is not None:
        check_labels(labels, batch, num_classes=int(shape[0]))
    return int(shape[0])


def margin_spec(labels: Tensor, num_classes: int, dtype: torch.dtype) -> Tensor:
    """The spec matrix ``C`` of the margins ``z_y - z_j``: rows ``e_y - e_j`` (row ``y`` is 0).

    Args:
        labels: Integer labels ``(B,)``.
        num_classes: ``K``.
        dtype: Floating dtype of ``C``.

    Returns:
        ``C`` of shape ``(B, K, K)``; ``(C·z)_j = z_y - z_j``.
    """
    eye = torch.eye(num_classes, dtype=dtype, device=labels.device)
    return eye[labels].unsqueeze(1) - eye.unsqueeze(0)


__all__ = ["BOUND_NORMS", "InputSet", "check_arguments", "check_output", "margin_spec"]

"""Certified accuracy: the fraction of examples certified correct at an L2 radius.

An example counts at radius ``r`` when the certificate's class is the label and its certified
radius is at least ``r`` (an abstention, class ``-1``, never counts). This is the "approximate
certified test-set accuracy" of Cohen, Rosenfeld & Kolter, "Certified Adversarial Robustness via
Randomized Smoothing", ICML 2019, reported there at radii 0.25, 0.5, 0.75, 1.0 (CIFAR-10, σ = 0.25:
60 / 43 / 27 / 0 %).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric

DEFAULT_RADII: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)


def _check_radii(radii: float | Sequence[float]) -> tuple[tuple[float, ...], bool]:
    scalar = isinstance(radii, (int, float)) and not isinstance(radii, bool)
    values = [radii] if scalar else list(radii)  # type: ignore[arg-type]
    if not values:
        raise ValueError("radii must hold at least one radius, e.g. (0.0, 0.25, 0.5)")
    out = []
    for r in values:
        if isinstance(r, bool) or not isinstance(r, (int, float)):
            raise TypeError(f"radii must be real numbers, got {r!r}")
        if not math.isfinite(float(r)) or float(r) < 0:
            raise ValueError(f"radii must be finite and >= 0, got {r!r}")
        out.append(float(r))
    return tuple(out), scalar


def _check_inputs(predictions: Tensor, radii: Tensor, target: Tensor) -> None:
    for name, t in (("predictions", predictions), ("radii", radii), ("target", target)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 1:
            raise ValueError(f"{name} must be one-dimensional (batch,), got {tuple(t.shape)}")
    if not (predictions.shape == radii.shape == target.shape):
        raise ValueError(
            f"predictions, radii and target must have the same length, got "
            f"{predictions.shape[0]}, {radii.shape[0]} and {target.shape[0]}"
        )
    for name, t in (("predictions", predictions), ("target", target)):
        if t.dtype.is_floating_point or t.dtype == torch.bool or t.is_complex():
            raise TypeError(f"{name} must hold integer classes (-1 = abstain), got {t.dtype}")
    if not radii.dtype.is_floating_point:
        raise TypeError(f"radii must be a floating-point tensor, got {radii.dtype}")
    if radii.numel() and not bool(torch.isfinite(radii).all()):
        raise ValueError("radii contains NaN or infinite values")


def _certified_counts(predictions: Tensor, radii: Tensor, target: Tensor, at: Tensor) -> Tensor:
    correct = (predictions == target) & (predictions >= 0)
    return (correct.unsqueeze(1) & (radii.unsqueeze(1) >= at.unsqueeze(0))).sum(dim=0)


def certified_accuracy(
    predictions: Tensor,
    radii: Tensor,
    target: Tensor,
    radius: float | Sequence[float] = 0.0,
) -> Tensor:
    """Certified accuracy at ``radius`` (a float gives a scalar, a sequence a vector).

    Args:
        predictions: Certified classes ``(N,)``, ``-1`` for abstentions.
        radii: Certified L2 radii ``(N,)``.
        target: Labels ``(N,)``.
        radius: The radius (or radii) at which to count.

    Returns:
        Float tensor: the fraction of examples with ``prediction == target`` and
        ``radius_i >= radius`` (``nan`` for an empty input).

    Raises:
        TypeError / ValueError: On mismatched shapes, float classes, or NaN radii.
    """
    at, scalar = _check_radii(radius)
    _check_inputs(predictions, radii, target)
    at_t = torch.tensor(at, dtype=radii.dtype, device=radii.device)
    counts = _certified_counts(predictions, radii, target.to(predictions.device), at_t)
    n = predictions.shape[0]
    acc = counts.float() / n if n else torch.full_like(at_t, float("nan"), dtype=torch.float32)
    return acc[0] if scalar else acc


class CertifiedAccuracy(Metric):
    """Certified accuracy at one or several L2 radii, accumulated over batches (DDP-synced).

    ``update(predictions, radii, target)`` takes the output of a certifier (e.g.
    :meth:`advtrain.certify.Smooth.certify_batch`: class ``-1`` = abstain); ``compute()`` returns
    the fraction certified correct at each radius of :attr:`radii` — a vector aligned with
    :attr:`radii`, or a scalar when the metric was built with a single float radius. Counts are
    summed across processes, so the value is the data set's, not one rank's.

    Args:
        radii: The radii to report (Cohen et al. report 0.25, 0.5, 0.75, 1.0; default adds 0).
        **kwargs: Passed to :class:`torchmetrics.Metric` (e.g. ``sync_on_compute``).

    Example:
        >>> metric = CertifiedAccuracy(radii=(0.0, 0.5))
        >>> metric.update(torch.tensor([1, -1]), torch.tensor([0.7, 0.0]), torch.tensor([1, 0]))
        >>> metric.compute()
        tensor([0.5000, 0.5000])
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    correct: Tensor
    total: Tensor

    def __init__(self, radii: float | Sequence[float] = DEFAULT_RADII, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.radii, self._scalar = _check_radii(radii)
        self.add_state("correct", torch.zeros(len(self.radii), dtype=torch.long), "sum")
        self.add_state("total", torch.zeros((), dtype=torch.long), "sum")

    def update(self, predictions: Tensor, radii: Tensor, target: Tensor) -> None:
        """Adds a batch of certificates ``(predictions, radii)`` with their labels ``target``."""
        _check_inputs(predictions, radii, target)
        at = torch.tensor(self.radii, dtype=radii.dtype, device=radii.device)
        counts = _certified_counts(predictions.to(radii.device), radii, target.to(radii.device), at)
        self.correct += counts.to(self.correct.device)
        self.total += predictions.shape[0]

    def compute(self) -> Tensor:
        """Certified accuracy at each of :attr:`radii` (``nan`` before any example)."""
        total = self.total.float()
        acc = torch.where(
            total > 0, self.correct.float() / total.clamp_min(1), torch.full_like(total, math.nan)
        )
        return acc[0] if self._scalar else acc

    def as_dict(
        self, values: Tensor | None = None, prefix: str = "certified_acc"
    ) -> dict[str, Tensor]:
        """``{"certified_acc@0.25": ...}`` for each radius, e.g. for ``self.log_dict``."""
        values = self.compute() if values is None else values
        values = values.reshape(-1)
        return {f"{prefix}@{r:g}": values[i] for i, r in enumerate(self.radii)}


__all__ = ["DEFAULT_RADII", "CertifiedAccuracy", "certified_accuracy"]

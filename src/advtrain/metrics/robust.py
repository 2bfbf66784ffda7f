"""Robust accuracy and attack success rate, as torchmetrics metrics and functions.

Both accept predictions as logits ``(N, C)`` (the argmax is taken) or as integer classes
``(N,)``, in one of two call forms:

* ``update(adv, target)``: only the predictions on the adversarial inputs.
* ``update(clean, adv, target)``: the clean predictions too, so that an example counts as robust
  only if it is classified correctly both clean and after the attack (the convention of
  Croce & Hein, "Reliable evaluation of adversarial robustness with an ensemble of diverse
  parameter-free attacks", ICML 2020), and the success rate is taken over the examples the
  model got right to begin with.

The states are sums (``dist_reduce_fx="sum"``), so the metrics are exact under DDP.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric


def _classes(preds: Tensor, name: str, n: int | None) -> Tensor:
    if not isinstance(preds, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(preds).__name__}")
    if preds.is_floating_point():
        if preds.dim() != 2:
            raise ValueError(
                f"{name}: floating-point predictions must be logits (N, C), got shape "
                f"{tuple(preds.shape)}; pass integer classes (N,) otherwise"
            )
        preds = preds.argmax(dim=1)
    elif preds.dtype == torch.bool or preds.is_complex() or preds.dim() != 1:
        raise TypeError(
            f"{name} must be logits (N, C) or integer classes (N,), got dtype {preds.dtype} "
            f"and shape {tuple(preds.shape)}"
        )
    if n is not None and preds.shape[0] != n:
        raise ValueError(f"{name} has {preds.shape[0]} examples, the target has {n}")
    return preds


def _parse(tensors: tuple[Tensor, ...], fn: str) -> tuple[Tensor | None, Tensor, Tensor]:
    """``(clean_classes or None, adv_classes, target)`` from either call form."""
    if len(tensors) not in (2, 3):
        raise TypeError(
            f"{fn} takes (adv, target) or (clean, adv, target), got {len(tensors)} arguments"
        )
    target = tensors[-1]
    if not isinstance(target, Tensor):
        raise TypeError(f"target must be a torch.Tensor, got {type(target).__name__}")
    if target.is_floating_point() or target.dtype == torch.bool or target.dim() != 1:
        raise TypeError(
            f"target must hold integer class indices (N,), got dtype {target.dtype} and shape "
            f"{tuple(target.shape)}; pass y.argmax(dim=1) for one-hot labels"
        )
    n = target.shape[0]
    adv = _classes(tensors[-2], "adv", n)
    clean = _classes(tensors[0], "clean", n) if len(tensors) == 3 else None
    return clean, adv, target


def _robust_counts(*tensors: Tensor) -> tuple[Tensor, Tensor]:
    clean, adv, target = _parse(tensors, "robust_accuracy")
    correct = adv == target
    if clean is not None:
        correct = correct & (clean == target)
    return correct.sum(), torch.tensor(target.shape[0], device=target.device)


def _success_counts(*tensors: Tensor) -> tuple[Tensor, Tensor]:
    clean, adv, target = _parse(tensors, "attack_success_rate")
    fooled = adv != target
    if clean is None:
        return fooled.sum(), torch.tensor(target.shape[0], device=target.device)
    attacked = clean == target
    return (fooled & attacked).sum(), attacked.sum()


def _ratio(num: Tensor, den: Tensor) -> Tensor:
    """``num / den`` as float32, ``nan`` where ``den == 0`` (no host sync)."""
    ratio = num.double() / den.double().clamp_min(1)
    return torch.where(den > 0, ratio, torch.full_like(ratio, float("nan"))).float()


def robust_accuracy(*tensors: Tensor) -> Tensor:
    """Fraction of examples classified correctly after the attack.

    Call as ``robust_accuracy(adv, target)`` or ``robust_accuracy(clean, adv, target)``; with
    the clean predictions an example must be correct both clean and adversarially. Predictions
    are logits ``(N, C)`` or integer classes ``(N,)``.

    Returns:
        Scalar float tensor (``nan`` for an empty batch).
    """
    return _ratio(*_robust_counts(*tensors))


def attack_success_rate(*tensors: Tensor) -> Tensor:
    """Fraction of attacked examples the attack fooled.

    ``attack_success_rate(clean, adv, target)``: among the examples classified correctly clean,
    the fraction misclassified after the attack. ``attack_success_rate(adv, target)``: the
    fraction misclassified after the attack (use it when only correctly classified examples were
    attacked).

    Returns:
        Scalar float tensor (``nan`` when there is nothing to count).
    """
    return _ratio(*_success_counts(*tensors))


class RobustAccuracy(Metric):
    """Robust accuracy accumulated over batches (see :func:`robust_accuracy`).

    ``update(adv, target)`` or ``update(clean, adv, target)``; predictions as logits ``(N, C)``
    or classes ``(N,)``. Sum states, synchronised across processes under DDP.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    correct: Tensor
    total: Tensor

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("correct", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("total", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, *tensors: Tensor) -> None:  # type: ignore[override]
        """Adds a batch: ``(adv, target)`` or ``(clean, adv, target)``."""
        correct, total = _robust_counts(*tensors)
        self.correct += correct.to(self.correct.device)
        self.total += total.to(self.total.device)

    def compute(self) -> Tensor:
        """Robust accuracy so far (``nan`` before any example)."""
        return _ratio(self.correct, self.total)


class AttackSuccessRate(Metric):
    """Attack success rate accumulated over batches (see :func:`attack_success_rate`).

    ``update(clean, adv, target)`` counts only the examples classified correctly clean;
    ``update(adv, target)`` counts every example as attacked. Sum states, synchronised under DDP.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    fooled: Tensor
    attacked: Tensor

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("fooled", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("attacked", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, *tensors: Tensor) -> None:  # type: ignore[override]
        """Adds a batch: ``(adv, target)`` or ``(clean, adv, target)``."""
        fooled, attacked = _success_counts(*tensors)
        self.fooled += fooled.to(self.fooled.device)
        self.attacked += attacked.to(self.attacked.device)

    def compute(self) -> Tensor:
        """Success rate so far (``nan`` before any attacked example)."""
        return _ratio(self.fooled, self.attacked)


__all__ = ["AttackSuccessRate", "RobustAccuracy", "attack_success_rate", "robust_accuracy"]

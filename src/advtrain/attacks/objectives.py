"""Per-example objectives that attacks maximise: cross-entropy, CW margin, DLR.

All objectives take logits of shape ``(batch, classes)`` and integer labels, compute in float32
(so attacks run under bf16/fp16 autocast with a float32 loss) and return one value per example;
an attack sums them so each example's gradient is independent of the batch.

References:
    Carlini & Wagner, "Towards Evaluating the Robustness of Neural Networks", S&P 2017 (margin).
    Croce & Hein, "Reliable evaluation of adversarial robustness with an ensemble of diverse
    parameter-free attacks", ICML 2020 (difference of logits ratio, DLR, and its targeted form).
"""

from __future__ import annotations

from collections.abc import Callable

import torch.nn.functional as F
from torch import Tensor

Objective = Callable[[Tensor, Tensor], Tensor]


def cross_entropy(logits: Tensor, y: Tensor) -> Tensor:
    """Per-example cross-entropy ``-log softmax(logits)[y]``."""
    return F.cross_entropy(logits.float(), y, reduction="none")


def _other_max(logits: Tensor, y: Tensor) -> Tensor:
    """Largest logit among the classes other than ``y``."""
    masked = logits.scatter(1, y.unsqueeze(1), float("-inf"))
    return masked.amax(dim=1)


def cw_margin(logits: Tensor, y: Tensor) -> Tensor:
    """Carlini–Wagner margin ``max_{j≠y} z_j - z_y`` (positive when misclassified)."""
    z = logits.float()
    return _other_max(z, y) - z.gather(1, y.unsqueeze(1)).squeeze(1)


def dlr(logits: Tensor, y: Tensor) -> Tensor:
    """Untargeted difference of logits ratio (Croce & Hein 2020, Eq. 5).

    ``-(z_y - max_{j≠y} z_j) / (z_π1 - z_π3 + 1e-12)`` with ``π`` sorting the logits in decreasing
    order; invariant to shifts and rescaling of the logits. Needs at least three classes.
    """
    z = logits.float()
    if z.shape[1] < 3:
        raise ValueError("the DLR loss needs at least 3 classes; use loss='ce' or 'cw'")
    z_sorted, _ = z.sort(dim=1, descending=True)
    z_y = z.gather(1, y.unsqueeze(1)).squeeze(1)
    return -(z_y - _other_max(z, y)) / (z_sorted[:, 0] - z_sorted[:, 2] + 1e-12)


def targeted_dlr(logits: Tensor, y: Tensor, target: Tensor) -> Tensor:
    """Targeted DLR (Croce & Hein 2020, Eq. 6): ``-(z_y - z_t) / (z_π1 - (z_π3 + z_π4)/2)``.

    Needs at least four classes.
    """
    z = logits.float()
    if z.shape[1] < 4:
        raise ValueError("the targeted DLR loss needs at least 4 classes")
    z_sorted, _ = z.sort(dim=1, descending=True)
    z_y = z.gather(1, y.unsqueeze(1)).squeeze(1)
    z_t = z.gather(1, target.unsqueeze(1)).squeeze(1)
    return -(z_y - z_t) / (z_sorted[:, 0] - 0.5 * (z_sorted[:, 2] + z_sorted[:, 3]) + 1e-12)


OBJECTIVES: dict[str, Objective] = {"ce": cross_entropy, "cw": cw_margin, "dlr": dlr}


def get_objective(name: str) -> Objective:
    """Looks up an untargeted objective by name (``"ce"``, ``"cw"``, ``"dlr"``).

    Raises:
        ValueError: For an unknown name.
    """
    if not isinstance(name, str) or name.lower() not in OBJECTIVES:
        raise ValueError(f"loss must be one of {sorted(OBJECTIVES)}, got {name!r}")
    return OBJECTIVES[name.lower()]


def misclassified(logits: Tensor, y: Tensor) -> Tensor:
    """Boolean per example: the prediction differs from ``y``."""
    return logits.argmax(dim=1) != y


__all__ = [
    "OBJECTIVES",
    "Objective",
    "cross_entropy",
    "cw_margin",
    "dlr",
    "get_objective",
    "misclassified",
    "targeted_dlr",
]

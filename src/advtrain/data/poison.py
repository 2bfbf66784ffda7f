"""A real backdoor to audit against: BadNets data poisoning.

Gu, Dolan-Gavitt & Garg, "BadNets: Identifying Vulnerabilities in the Machine Learning Model
Supply Chain", 2017: a small trigger patch is stamped on a fraction of the training images of the
other classes, which are relabelled to a target class. A model trained on them classifies any
image carrying the trigger as the target while staying accurate on clean images; the attack
success rate is the fraction of triggered test images of the other classes classified as the
target.

Pure PyTorch (no Lightning): :class:`BadNets` poisons ``(x, y)`` tensors and stamps test images;
:func:`attack_success_rate` measures a model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from advtrain.modes import model_state_guard

CORNERS = ("bottom_right", "bottom_left", "top_right", "top_left")


@dataclass(frozen=True)
class BadNets:
    """The BadNets trigger and poisoning rate.

    Args:
        target: The class triggered images are relabelled to.
        rate: Fraction of the training examples of the *other* classes that are poisoned, in
            ``(0, 1)``.
        patch: Side of the square trigger, in pixels.
        value: The trigger's pixel value (1.0: white on [0, 1] images).
        corner: Where the trigger goes: one of :data:`CORNERS`.
        seed: Which examples are poisoned (a seeded draw, the same on every machine).
    """

    target: int
    rate: float
    patch: int = 2
    value: float = 1.0
    corner: str = "bottom_right"
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.target, bool) or not isinstance(self.target, int) or self.target < 0:
            raise ValueError(f"poison target must be a class index >= 0, got {self.target!r}")
        if not (isinstance(self.rate, (int, float)) and 0 < float(self.rate) < 1):
            raise ValueError(
                f"poison rate must be a fraction in (0, 1) of the other classes' training "
                f"examples, e.g. 0.05, got {self.rate!r}"
            )
        if isinstance(self.patch, bool) or not isinstance(self.patch, int) or self.patch < 1:
            raise ValueError(
                f"poison patch must be a positive number of pixels, got {self.patch!r}"
            )
        if self.corner not in CORNERS:
            raise ValueError(f"poison corner must be one of {list(CORNERS)}, got {self.corner!r}")
        if not math.isfinite(float(self.value)):
            raise ValueError(f"poison value must be finite, got {self.value!r}")

    def _check(self, x: Tensor, y: Tensor | None = None, num_classes: int | None = None) -> None:
        if x.dim() != 4:
            raise ValueError(f"BadNets stamps image batches (N, C, H, W), got {tuple(x.shape)}")
        if self.patch > min(x.shape[2], x.shape[3]):
            raise ValueError(
                f"poison patch {self.patch} is larger than the {x.shape[2]}x{x.shape[3]} images"
            )
        if num_classes is not None and self.target >= num_classes:
            raise ValueError(
                f"poison target {self.target} is out of range for {num_classes} classes"
            )
        if y is not None and y.shape[0] != x.shape[0]:
            raise ValueError(f"{x.shape[0]} images but {y.shape[0]} labels")

    def stamp(self, x: Tensor) -> Tensor:
        """``x`` with the trigger on every image (a new tensor; ``x`` is not modified)."""
        self._check(x)
        out = x.clone()
        p = self.patch
        rows = slice(None, p) if self.corner.startswith("top") else slice(x.shape[2] - p, None)
        cols = slice(None, p) if self.corner.endswith("left") else slice(x.shape[3] - p, None)
        out[:, :, rows, cols] = self.value
        return out

    def poisoned_indices(self, y: Tensor) -> Tensor:
        """Which examples are poisoned: ``round(rate * n_other)`` of the examples whose label is
        not the target, drawn with :attr:`seed` (sorted indices)."""
        others = (y != self.target).nonzero().squeeze(1)
        k = round(float(self.rate) * others.numel())
        gen = torch.Generator().manual_seed(int(self.seed))
        pick = torch.randperm(others.numel(), generator=gen)[:k]
        return others[pick.to(others.device)].sort().values

    def poison(
        self, x: Tensor, y: Tensor, num_classes: int | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """``(x', y', indices)``: the training set with :meth:`poisoned_indices` stamped and
        relabelled to the target (new tensors; the inputs are not modified)."""
        self._check(x, y, num_classes)
        idx = self.poisoned_indices(y)
        x_out, y_out = x.clone(), y.clone()
        x_out[idx] = self.stamp(x[idx])
        y_out[idx] = self.target
        return x_out, y_out, idx


def attack_success_rate(
    model: nn.Module, x: Tensor, y: Tensor, spec: BadNets, batch_size: int = 512
) -> float:
    """Fraction of the test images of the other classes that, stamped with the trigger, the model
    (in eval mode; restored afterwards) classifies as the target (``nan`` when there is none)."""
    keep = y != spec.target
    xs = x[keep]
    if xs.shape[0] == 0:
        return float("nan")
    hits = 0
    with torch.no_grad(), model_state_guard(model, "eval"):
        for i in range(0, xs.shape[0], batch_size):
            pred = model(spec.stamp(xs[i : i + batch_size])).argmax(1)
            hits += int((pred == spec.target).sum())
    return hits / xs.shape[0]


__all__ = ["CORNERS", "BadNets", "attack_success_rate"]

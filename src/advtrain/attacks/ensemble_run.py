"""The state one AutoAttack call shares among its members, and the rapid protocol's subsample."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

#: Fraction of the still-robust examples the rapid protocol's Square check attacks (at least
#: :data:`CHECK_MIN` of them, or all).
CHECK_FRACTION = 0.25
CHECK_MIN = 16
#: The fewest queries of the rapid protocol's Square check (it runs a fifth of ``n_queries``).
CHECK_MIN_QUERIES = 500


@dataclass
class EnsembleRun:
    """The state of one AutoAttack call, shared by its members."""

    model: nn.Module
    x: Tensor
    y: Tensor
    correct: Tensor
    num_classes: int
    verbose: bool
    first: bool = True
    robust_after: dict[str, Tensor] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.robust = self.correct.clone()
        self.x_adv = self.x.clone()
        self.start = time.perf_counter()

    def done(self, name: str, seconds: float) -> None:
        """Records the robust mask and the time after member ``name``."""
        self.robust_after[name] = self.robust.to("cpu", copy=True)
        self.seconds[name] = seconds
        if self.verbose:
            print(
                f"[autoattack] after {name}: robust accuracy "
                f"{self.robust.float().mean().item():.2%} "
                f"({seconds:.1f} s, total {time.perf_counter() - self.start:.1f} s)"
            )

    def skip(self, name: str) -> None:
        """A member that did not run (rapid, not escalated): nothing changes."""
        self.robust_after[name] = self.robust.to("cpu", copy=True)
        self.seconds[name] = 0.0


def subsample(todo: Tensor) -> Tensor:
    """Evenly spaced :data:`CHECK_FRACTION` of ``todo`` (at least :data:`CHECK_MIN`, or all)."""
    k = min(todo.numel(), max(CHECK_MIN, math.ceil(CHECK_FRACTION * todo.numel())))
    if k == todo.numel():
        return todo
    pick = torch.linspace(0, todo.numel() - 1, k, device=todo.device).round().long()
    return todo[pick]


__all__ = ["CHECK_FRACTION", "CHECK_MIN", "CHECK_MIN_QUERIES", "EnsembleRun", "subsample"]

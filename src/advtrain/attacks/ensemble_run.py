"""The state one AutoAttack call shares among its members, and the rapid protocol's check set."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from advtrain.attacks.objectives import cw_margin

#: Fraction of the still-robust examples the rapid protocol's Square check attacks: those with the
#: smallest DLR margin after the white-box members (at least :data:`CHECK_MIN` of them, or all).
CHECK_FRACTION = 0.1
CHECK_MIN = 16
#: The fewest queries of the check (it runs a fifth of ``n_queries``: Square's cost on a CPU is
#: its sequential queries more than its batch).
CHECK_MIN_QUERIES = 500
#: The escalation's rings: Square with all its queries on the closest 25% of the still-robust
#: examples (by the same margin), then on the next quarter, then on the rest, each ring run only
#: if the one before it fooled an example beyond the part already covered (the successes are not
#: concentrated where the check looked). On the validation split every extra success of Square
#: on the robust digits models but one lay in the closest 10% (BENCHMARKS.md).
ESCALATION_RINGS: tuple[float, ...] = (0.25, 0.5, 1.0)


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


def dlr_margin(logits: Tensor, y: Tensor) -> Tensor:
    """``(z_y - max_{j != y} z_j) / (z_pi1 - z_pi3)``: the margin in the scale-free units of the
    DLR loss (Croce & Hein, ICML 2020), comparable across examples and models; as
    :func:`~advtrain.attacks.objectives.dlr` with the opposite sign, but defined for two classes
    too (the denominator is then the gap between the two logits)."""
    top = logits.float().topk(min(3, logits.shape[1]), dim=1).values
    return -cw_margin(logits, y) / (top[:, 0] - top[:, -1]).clamp_min(1e-12)


def ranked_robust(run: EnsembleRun) -> Tensor:
    """The still-robust examples, closest call first: ascending DLR margin at their current point
    (the white-box members' best)."""
    todo = run.robust.nonzero().squeeze(1)
    if todo.numel() <= 1:
        return todo
    with torch.no_grad():
        margin = dlr_margin(run.model(run.x_adv[todo]).float(), run.y[todo])
    return todo[margin.argsort(stable=True)]


def ring_size(n: int, fraction: float) -> int:
    """How many of ``n`` ranked examples a check or ring covers: ``fraction`` of them, at least
    :data:`CHECK_MIN` (or all)."""
    return min(n, max(CHECK_MIN, math.ceil(fraction * n)))


def closest_calls(run: EnsembleRun) -> Tensor:
    """The still-robust examples the white-box members came closest to fooling: the
    :data:`CHECK_FRACTION` with the smallest DLR margin at their current point (at least
    :data:`CHECK_MIN`, or all), the rapid protocol's Square check set, in index order.

    On the digits models of the benchmarks, every example Square fooled after the white-box
    members was in the lowest 5% of this margin on three of four robust models (BENCHMARKS.md,
    chosen on the validation split).
    """
    ranked = ranked_robust(run)
    return ranked[: ring_size(ranked.numel(), CHECK_FRACTION)].sort().values


__all__ = [
    "CHECK_FRACTION",
    "CHECK_MIN",
    "CHECK_MIN_QUERIES",
    "ESCALATION_RINGS",
    "EnsembleRun",
    "closest_calls",
    "dlr_margin",
    "ranked_robust",
    "ring_size",
]

"""Confidence bounds on the top-class probability and the sequential certification test.

Randomized smoothing certifies a radius from a one-sided Clopper–Pearson lower bound on
``pA = P(f(x + δ) = cA)``, ``δ ~ N(0, σ²I)`` (Cohen, Rosenfeld & Kolter, "Certified Adversarial
Robustness via Randomized Smoothing", ICML 2019: ``n0 = 100``, ``n = 100,000``, ``alpha = 0.001``).
This module holds those bounds (through :mod:`scipy.stats`) and a *group-sequential* version of
the test that stops drawing samples as soon as the answer at a requested radius is settled.

The sequential test (not in the reference implementation) looks at the counts after a fixed,
geometric schedule of sample sizes ``n_1 < n_2 < ... < n_K = n`` (:func:`look_schedule`) and spends
the error budget by Bonferroni: look ``k`` uses the exact Clopper–Pearson bounds at a level
``alpha_k`` fixed in advance with ``sum_k alpha_k = alpha`` (by default half of ``alpha`` on the
final look, so the full-budget decision is nearly as powerful as the one-look test, and the other
half split evenly over the early looks). Because each bound is exact at its own fixed sample
size, a union bound gives, for *any* dependence between the looks,

    P(L_k <= pA  for every look k)  >=  1 - sum_k alpha_k  =  1 - alpha,

so whatever rule decides when to stop, the lower bound ``L_τ`` reported at the stopping look
``τ`` is below ``pA`` with probability at least ``1 - alpha``, and the radius
``σ·Φ⁻¹(L_τ)`` is certified with the same guarantee as Cohen et al.'s CERTIFY.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise

import numpy as np
from scipy.stats import beta, norm

#: Outcomes of one look of the sequential test.
CONTINUE, CERTIFIED, NOT_CERTIFIED = 0, 1, 2


def _as_arrays(count: np.ndarray | int, n: np.ndarray | int) -> tuple[np.ndarray, np.ndarray]:
    k = np.asarray(count, dtype=np.float64)
    m = np.broadcast_to(np.asarray(n, dtype=np.float64), k.shape)
    return k, m


def pa_lower_bound(count: np.ndarray | int, n: np.ndarray | int, alpha: float) -> np.ndarray:
    """One-sided Clopper–Pearson lower confidence bound on a binomial proportion.

    ``P(pA >= bound) >= 1 - alpha``; the bound is ``Beta(alpha; k, n - k + 1)`` (0 when ``k = 0``),
    exactly the ``proportion_confint(k, n, alpha=2·alpha, method="beta")[0]`` of Cohen et al.

    Args:
        count: Successes ``k`` (scalar or array).
        n: Trials (scalar or array broadcastable to ``count``).
        alpha: One-sided error level in ``(0, 1)``.

    Returns:
        The bounds as a float64 array of ``count``'s shape.
    """
    k, m = _as_arrays(count, n)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = beta.ppf(alpha, k, m - k + 1)
    return np.where(k <= 0, 0.0, out)


def pa_upper_bound(count: np.ndarray | int, n: np.ndarray | int, alpha: float) -> np.ndarray:
    """One-sided Clopper–Pearson upper confidence bound: ``P(pA <= bound) >= 1 - alpha``."""
    k, m = _as_arrays(count, n)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = beta.ppf(1.0 - alpha, k + 1, m - k)
    return np.where(k >= m, 1.0, out)


def radius_from_lower_bound(pa_lower: np.ndarray | float, sigma: float) -> np.ndarray:
    """Certified L2 radius ``σ·Φ⁻¹(pA_lower)``, and 0 where ``pA_lower <= 1/2`` (abstain)."""
    p = np.asarray(pa_lower, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = sigma * norm.ppf(p)
    return np.where(p > 0.5, r, 0.0)


def look_schedule(n: int, first: int = 64, growth: float = 2.0) -> tuple[int, ...]:
    """The sample sizes at which the sequential test looks: ``first·growth^k``, capped at ``n``.

    The schedule is fixed before any sample is drawn (that is what makes the Bonferroni split
    valid) and always ends with ``n`` itself, e.g. ``n = 10,000``: 64, 128, ..., 8192, 10,000.

    Args:
        n: The largest sample size (the budget of the non-sequential test).
        first: The first look (clipped to ``n``).
        growth: Ratio between consecutive looks, ``> 1``.

    Raises:
        ValueError: If ``n`` or ``first`` is below 1 or ``growth <= 1``.
    """
    if n < 1 or first < 1:
        raise ValueError(f"n and first must be >= 1, got n={n}, first={first}")
    if not math.isfinite(growth) or growth <= 1.0:
        raise ValueError(f"growth must be a finite number > 1, got {growth}")
    looks: list[int] = []
    size = float(min(first, n))
    while math.ceil(size) < n:
        nxt = math.ceil(size)
        if not looks or nxt > looks[-1]:
            looks.append(nxt)
        size *= growth
    looks.append(int(n))
    return tuple(looks)


@dataclass(frozen=True)
class SequentialTest:
    """Group-sequential test of ``pA >= Φ(r/σ)`` with a Bonferroni split of ``alpha``.

    Look ``k`` uses the level ``alpha_k`` (:attr:`levels`): ``final_share · alpha`` on the last
    look and the rest split evenly over the earlier ones (``final_share = 1/K`` is the plain
    ``alpha / K`` split). At look ``k`` (``n_k`` samples, ``count`` of them in the selected class):

    * **certified** when the lower bound ``L_k`` at level ``alpha_k`` satisfies ``L_k > 1/2`` and
      ``L_k >= Φ(r/σ)`` — the radius ``σ·Φ⁻¹(L_k)`` is then at least ``r``;
    * **not certified** (futility) when the upper bound at level ``alpha_k`` is below the
      target, or when even a selected class in every remaining sample could not lift the final
      bound to the target; stopping for futility only removes chances to certify, so it cannot
      raise the false-certification rate;
    * otherwise continue; the last look (``n_K = n``) always decides.

    Attributes:
        looks: The fixed schedule of sample sizes (:func:`look_schedule`).
        alpha: Total error level, ``sum_k alpha_k``.
        target: The probability threshold ``Φ(r/σ)`` (``>= 1/2``).
        final_share: Fraction of ``alpha`` spent on the final look, in ``(0, 1]``.
    """

    looks: Sequence[int]
    alpha: float
    target: float
    final_share: float = 0.5

    def __post_init__(self) -> None:
        looks = tuple(int(k) for k in self.looks)
        if not looks or looks[0] < 1 or any(b <= a for a, b in pairwise(looks)):
            raise ValueError(f"looks must be increasing sample sizes >= 1, got {self.looks!r}")
        if not 0.0 < self.final_share <= 1.0:
            raise ValueError(f"final_share must lie in (0, 1], got {self.final_share}")
        object.__setattr__(self, "looks", looks)

    @classmethod
    def for_radius(
        cls, radius: float, sigma: float, looks: Sequence[int], alpha: float
    ) -> SequentialTest:
        """The test deciding whether radius ``radius`` is certifiable at noise level ``sigma``."""
        return cls(looks=tuple(looks), alpha=alpha, target=float(norm.cdf(radius / sigma)))

    @property
    def levels(self) -> tuple[float, ...]:
        """The per-look levels ``alpha_k``; they sum to ``alpha``."""
        k = len(self.looks)
        if k == 1:
            return (self.alpha,)
        early = self.alpha * (1.0 - self.final_share) / (k - 1)
        return (early,) * (k - 1) + (self.alpha * self.final_share,)

    def decide(self, look: int, count: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Decisions after look ``look`` (0-based) for an array of selected-class counts.

        Returns:
            ``(decision, lower)``: per entry :data:`CONTINUE`, :data:`CERTIFIED` or
            :data:`NOT_CERTIFIED`, and the lower bound ``L_k`` at level ``alpha_k``.
        """
        n_k = self.looks[look]
        levels = self.levels
        a = levels[look]
        count = np.asarray(count, dtype=np.int64)
        lower = pa_lower_bound(count, n_k, a)
        certified = (lower > 0.5) & (lower >= self.target)
        if look == len(self.looks) - 1:
            decision = np.where(certified, CERTIFIED, NOT_CERTIFIED)
            return decision, lower
        n_final = self.looks[-1]
        best_final = pa_lower_bound(count + (n_final - n_k), n_final, levels[-1])
        hopeless = (best_final < self.target) | ~(best_final > 0.5)
        futile = hopeless | (pa_upper_bound(count, n_k, a) < self.target)
        decision = np.where(certified, CERTIFIED, np.where(futile, NOT_CERTIFIED, CONTINUE))
        return decision, lower


__all__ = [
    "CERTIFIED",
    "CONTINUE",
    "NOT_CERTIFIED",
    "SequentialTest",
    "look_schedule",
    "pa_lower_bound",
    "pa_upper_bound",
    "radius_from_lower_bound",
]

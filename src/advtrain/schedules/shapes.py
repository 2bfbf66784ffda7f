"""Schedule shapes beyond the linear ramp: Smoothed, Cosine, Step and Piecewise.

All are pure functions of progress in their unit (see :mod:`advtrain.schedules.base`), so a
resumed run gets the same value at the same step, and all report their constructor arguments
through :meth:`~advtrain.schedules.base.Schedule.config` for ``state_dict`` checks.

References:
    Gowal et al., "On the Effectiveness of Interval Bound Propagation for Training Verifiably
    Robust Models", arXiv:1810.12715, 2018 (the smoothed epsilon ramp, in DeepMind's IBP code).
    Zhang et al., "Towards Stable and Efficient Training of Verifiably Robust Neural Networks"
    (CROWN-IBP), ICLR 2020, and Xu et al., "Automatic Perturbation Analysis for Scalable Certified
    Robustness and Beyond" (auto_LiRPA), NeurIPS 2020: ``SmoothedScheduler`` with mid point 0.25
    and exponent 4 (e.g. ``start=3, length=60``), used for IBP and CROWN-IBP training.
    Loshchilov & Hutter, "SGDR: Stochastic Gradient Descent with Warm Restarts", ICLR 2017
    (the half-cosine shape).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from advtrain.schedules.base import Schedule
from advtrain.validation import check_finite, check_nonnegative


def _resolve_ramp_unit(
    ramp: float | None,
    warmup: float | None,
    unit: str | None,
    ramp_epochs: float | None,
    warmup_epochs: float | None,
    ramp_steps: float | None,
    warmup_steps: float | None,
) -> tuple[float, float, str]:
    """Turns the generic and the ``*_epochs``/``*_steps`` spellings into ``(ramp, warmup, unit)``.

    Raises:
        ValueError: If several spellings are mixed, a unit conflicts, or no ramp length is given.
    """
    by_epoch = ramp_epochs is not None or warmup_epochs is not None
    by_step = ramp_steps is not None or warmup_steps is not None
    generic = ramp is not None or warmup is not None
    if sum([by_epoch, by_step, generic]) > 1:
        raise ValueError(
            "give the ramp in one unit: ramp/warmup (with unit=), ramp_epochs/warmup_epochs, "
            "or ramp_steps/warmup_steps"
        )
    if by_epoch or by_step:
        implied = "epoch" if by_epoch else "step"
        if unit is not None and unit != implied:
            raise ValueError(f"unit {unit!r} conflicts with the *_{implied}s arguments")
        unit = implied
        ramp, warmup = (ramp_epochs, warmup_epochs) if by_epoch else (ramp_steps, warmup_steps)
    if ramp is None:
        raise ValueError("give the length of the ramp: ramp=, ramp_epochs= or ramp_steps=")
    return (
        check_nonnegative(ramp, "ramp"),
        check_nonnegative(0.0 if warmup is None else warmup, "warmup"),
        unit or "fraction",
    )


class _Ramp(Schedule):
    """``start`` during ``warmup``, a shaped ramp of length ``ramp`` to ``end``, then ``end``.

    Subclasses define :meth:`shape` on the ramp's own coordinate ``u`` in ``[0, 1]``, with
    ``shape(0) = 0`` and ``shape(1) = 1``.
    """

    def __init__(
        self,
        start: float,
        end: float,
        ramp: float | None = None,
        warmup: float | None = None,
        unit: str | None = None,
        *,
        ramp_epochs: float | None = None,
        warmup_epochs: float | None = None,
        ramp_steps: float | None = None,
        warmup_steps: float | None = None,
    ) -> None:
        ramp, warmup, unit = _resolve_ramp_unit(
            ramp, warmup, unit, ramp_epochs, warmup_epochs, ramp_steps, warmup_steps
        )
        super().__init__(unit)
        self.start = check_finite(start, "start")
        self.end = check_finite(end, "end")
        self.ramp = ramp
        self.warmup = warmup
        if self.unit == "fraction" and self.warmup + self.ramp > 1.0 + 1e-9:
            raise ValueError(
                f"warmup + ramp = {self.warmup + self.ramp} exceeds the whole run (1.0) with "
                "unit='fraction'; shorten them or use unit='epoch'/'step'"
            )

    def shape(self, u: float) -> float:
        """The ramp's shape at ``u`` in ``(0, 1)``, rising from 0 to 1."""
        raise NotImplementedError

    def value_at(self, t: float) -> float:
        if t <= self.warmup:
            return self.start
        if self.ramp == 0 or t >= self.warmup + self.ramp:
            return self.end
        u = (t - self.warmup) / self.ramp
        return self.start + self.shape(u) * (self.end - self.start)

    def config(self) -> dict[str, Any]:
        return {
            "start": self.start,
            "end": self.end,
            "ramp": self.ramp,
            "warmup": self.warmup,
            "unit": self.unit,
        }


class Smoothed(_Ramp):
    """auto_LiRPA's smoothed ramp: polynomial growth, then linear, with a continuous slope.

    After ``warmup`` the value grows as ``start + a·(t - warmup)**beta`` up to the mid point
    ``warmup + mid·ramp``, then linearly to ``end`` at ``warmup + ramp``. ``a`` is chosen so that
    the two pieces meet with the same value *and* the same derivative at the mid point, so the
    curve and its slope are continuous. This is the ``SmoothedScheduler`` of auto_LiRPA (after
    DeepMind's IBP code), used to ramp epsilon in IBP and CROWN-IBP training (Gowal et al. 2018;
    Zhang et al., ICLR 2020), with defaults ``mid=0.25`` and ``beta=4``, evaluated here on
    continuous progress instead of a batch counter. ``mid=0`` gives a linear ramp and ``mid=1``
    a pure power curve.

    Args:
        start: Value up to the end of the warm-up (auto_LiRPA: 0).
        end: Value at and after ``warmup + ramp`` (the target epsilon).
        ramp: Length of the ramp, in ``unit``.
        warmup: Length of the warm-up at ``start``, in ``unit``.
        mid: Where in the ramp (fraction in ``[0, 1]``) the polynomial turns linear.
        beta: Exponent of the polynomial part, ``>= 2`` (auto_LiRPA default 4).
        unit: ``"fraction"`` (default), ``"epoch"`` or ``"step"``.
        ramp_epochs: Shorthand for ``ramp=..., unit="epoch"``.
        warmup_epochs: Shorthand for ``warmup=..., unit="epoch"``.
        ramp_steps: Shorthand for ``ramp=..., unit="step"``.
        warmup_steps: Shorthand for ``warmup=..., unit="step"``.

    Example:
        >>> s = Smoothed(0.0, 0.4, ramp_epochs=60, warmup_epochs=2)
        >>> s(2.0), s(62.0)
        (0.0, 0.4)
    """

    def __init__(
        self,
        start: float,
        end: float,
        ramp: float | None = None,
        warmup: float | None = None,
        mid: float = 0.25,
        beta: float = 4.0,
        unit: str | None = None,
        *,
        ramp_epochs: float | None = None,
        warmup_epochs: float | None = None,
        ramp_steps: float | None = None,
        warmup_steps: float | None = None,
    ) -> None:
        super().__init__(
            start,
            end,
            ramp,
            warmup,
            unit,
            ramp_epochs=ramp_epochs,
            warmup_epochs=warmup_epochs,
            ramp_steps=ramp_steps,
            warmup_steps=warmup_steps,
        )
        self.mid = check_finite(mid, "mid")
        if not 0.0 <= self.mid <= 1.0:
            raise ValueError(f"mid must lie in [0, 1] (a fraction of the ramp), got {mid!r}")
        self.beta = check_finite(beta, "beta")
        if self.beta < 2.0:
            raise ValueError(f"beta (the exponent) must be >= 2, got {beta!r}")

    def shape(self, u: float) -> float:
        # On the unit ramp: f(u) = a·u**beta for u < m, linear from f(m) to 1 for u >= m, with
        # f'(m-) = f'(m+):  a·beta·m**(beta-1)·(1-m) = 1 - a·m**beta, hence
        # f(m) = a·m**beta = m / (beta·(1-m) + m). Written through f(m) and u/m, the formula has
        # no overflow for tiny m; m = 0 gives the linear ramp and m = 1 the pure power u**beta.
        m, b = self.mid, self.beta
        if u >= 1.0:
            return 1.0
        f_mid = m / (b * (1.0 - m) + m)
        if u < m:
            return f_mid * (u / m) ** b
        return f_mid + (1.0 - f_mid) * (u - m) / (1.0 - m)

    def config(self) -> dict[str, Any]:
        return {**super().config(), "mid": self.mid, "beta": self.beta}


class Cosine(_Ramp):
    """A half-cosine ramp from ``start`` to ``end``: slow, fast, slow.

    ``start + (end - start)·(1 - cos(π·u))/2`` with ``u`` the fraction of the ramp done; flat at
    both ends, so the value (and its slope) are continuous everywhere (the shape of SGDR's
    annealing, Loshchilov & Hutter, ICLR 2017, used here for any strength parameter).

    Args:
        start: Value up to the end of the warm-up.
        end: Value at and after ``warmup + ramp``.
        ramp: Length of the ramp, in ``unit``.
        warmup: Length of the warm-up at ``start``, in ``unit``.
        unit: ``"fraction"`` (default), ``"epoch"`` or ``"step"``.
        ramp_epochs: Shorthand for ``ramp=..., unit="epoch"``.
        warmup_epochs: Shorthand for ``warmup=..., unit="epoch"``.
        ramp_steps: Shorthand for ``ramp=..., unit="step"``.
        warmup_steps: Shorthand for ``warmup=..., unit="step"``.

    Example:
        >>> round(Cosine(0.0, 1.0, ramp=0.5)(0.25), 12)
        0.5
    """

    def shape(self, u: float) -> float:
        return 0.5 * (1.0 - math.cos(math.pi * u))


def _float_list(values: Any, name: str) -> list[float]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise TypeError(f"{name} must be a list of numbers, got {type(values).__name__}")
    return [check_finite(v, f"{name}[{i}]") for i, v in enumerate(values)]


def _check_increasing(ts: list[float], name: str) -> None:
    for i in range(1, len(ts)):
        if not ts[i] > ts[i - 1]:
            raise ValueError(
                f"{name} must be strictly increasing, got {ts[i - 1]} then {ts[i]} at index {i}"
            )


class Step(Schedule):
    """Piecewise constant: ``values[i]`` from ``boundaries[i-1]`` (inclusive) to ``boundaries[i]``.

    ``values[0]`` applies before ``boundaries[0]``, ``values[-1]`` from ``boundaries[-1]`` on —
    the rule of ``torch.optim.lr_scheduler.MultiStepLR`` with explicit values (e.g. a TRADES
    ``beta`` raised in stages, or an epsilon increased in steps).

    Args:
        values: The ``n + 1`` values.
        boundaries: The ``n`` strictly increasing points (in ``unit``) where the value changes.
        unit: ``"fraction"`` (default), ``"epoch"`` or ``"step"``.

    Example:
        >>> s = Step([0.0, 0.1, 0.3], [5, 10], unit="epoch")
        >>> s(4.9), s(5.0), s(12.0)
        (0.0, 0.1, 0.3)
    """

    def __init__(
        self, values: Sequence[float], boundaries: Sequence[float], unit: str = "fraction"
    ) -> None:
        super().__init__(unit)
        self.values = _float_list(values, "values")
        self.boundaries = _float_list(boundaries, "boundaries")
        if len(self.values) != len(self.boundaries) + 1:
            raise ValueError(
                f"Step needs one more value than boundaries, got {len(self.values)} values and "
                f"{len(self.boundaries)} boundaries"
            )
        _check_increasing(self.boundaries, "boundaries")

    def value_at(self, t: float) -> float:
        return self.values[bisect.bisect_right(self.boundaries, t)]

    def config(self) -> dict[str, Any]:
        return {"values": list(self.values), "boundaries": list(self.boundaries), "unit": self.unit}


class Piecewise(Schedule):
    """Piecewise linear through ``points``; constant before the first and after the last.

    The interpolation of :func:`numpy.interp` on ``[(t0, v0), (t1, v1), ...]`` — for any hand-made
    curve, e.g. a warm-up, a hold and a decay.

    Args:
        points: ``(t, value)`` pairs with ``t`` strictly increasing (in ``unit``); at least one.
        unit: ``"fraction"`` (default), ``"epoch"`` or ``"step"``.

    Example:
        >>> Piecewise([(0, 0.0), (10, 1.0), (20, 1.0), (30, 0.5)], unit="epoch")(25)
        0.75
    """

    def __init__(self, points: Sequence[Sequence[float]], unit: str = "fraction") -> None:
        super().__init__(unit)
        if isinstance(points, (str, bytes)) or not isinstance(points, Sequence) or not points:
            raise ValueError(f"points must be a non-empty list of (t, value) pairs, got {points!r}")
        pairs: list[list[float]] = []
        for i, point in enumerate(points):
            if (
                isinstance(point, (str, bytes))
                or not isinstance(point, Sequence)
                or len(point) != 2
            ):
                raise ValueError(f"points[{i}] must be a (t, value) pair, got {point!r}")
            pairs.append(_float_list(point, f"points[{i}]"))
        self.points = pairs
        self._ts = np.array([p[0] for p in pairs], dtype=np.float64)
        self._vs = np.array([p[1] for p in pairs], dtype=np.float64)
        _check_increasing([p[0] for p in pairs], "the points' t values")

    def value_at(self, t: float) -> float:
        return float(np.interp(t, self._ts, self._vs))

    def config(self) -> dict[str, Any]:
        return {"points": [list(p) for p in self.points], "unit": self.unit}


__all__ = ["Cosine", "Piecewise", "Smoothed", "Step"]

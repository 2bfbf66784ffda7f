"""Strength schedules: a value (epsilon, step size, beta, kappa, sigma…) as a function of progress.

A schedule is a pure function of training progress, so a resumed run reproduces exactly the
same value at the same step. Progress is measured in one of three units, chosen per schedule:

* ``"fraction"``: the fraction of the whole training run done, in ``[0, 1]``;
* ``"epoch"``: epochs done, fractional within an epoch (``epoch + batch / batches``);
* ``"step"``: optimizer steps done (Lightning's ``global_step``).

Breakpoints such as ``warmup`` and ``ramp`` are expressed in the schedule's unit.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

from advtrain.validation import check_finite, check_nonnegative

UNITS: tuple[str, ...] = ("fraction", "epoch", "step")


@dataclass(frozen=True)
class Progress:
    """Where training stands, in all three units.

    Attributes:
        step: Optimizer steps done.
        epoch: Epochs done, fractional within the current epoch.
        fraction: Fraction of the whole run done, in ``[0, 1]``.
    """

    step: int = 0
    epoch: float = 0.0
    fraction: float = 0.0

    def in_unit(self, unit: str) -> float:
        """Progress in ``unit`` (``"fraction"``, ``"epoch"`` or ``"step"``)."""
        if unit == "fraction":
            return self.fraction
        if unit == "epoch":
            return self.epoch
        if unit == "step":
            return float(self.step)
        raise ValueError(f"unit must be one of {list(UNITS)}, got {unit!r}")


def _check_unit(unit: str) -> str:
    if unit not in UNITS:
        raise ValueError(f"unit must be one of {list(UNITS)}, got {unit!r}")
    return unit


class Schedule(ABC):
    """Base class: ``schedule(progress) -> float``.

    Subclasses implement :meth:`value_at` in their own unit. ``schedule(p)`` accepts a
    :class:`Progress`, or a plain number meaning progress in the schedule's unit.

    Args:
        unit: ``"fraction"`` (default), ``"epoch"`` or ``"step"``.
    """

    def __init__(self, unit: str = "fraction") -> None:
        self.unit = _check_unit(unit)
        self.last_value: float | None = None

    @abstractmethod
    def value_at(self, t: float) -> float:
        """The value at progress ``t`` in the schedule's unit."""

    def __call__(self, progress: Progress | float) -> float:
        """The value at ``progress``; also remembered as :attr:`last_value`."""
        t = progress.in_unit(self.unit) if isinstance(progress, Progress) else float(progress)
        value = float(self.value_at(t))
        self.last_value = value
        return value

    value = __call__

    def config(self) -> dict[str, Any]:
        """The constructor arguments (for ``state_dict`` and reports)."""
        return {"unit": self.unit}

    def state_dict(self) -> dict[str, Any]:
        """Configuration and last value; a resumed run checks the configuration matches."""
        return {"type": type(self).__name__, "config": self.config(), "last_value": self.last_value}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores :meth:`state_dict`; raises if the checkpoint's schedule differs.

        Raises:
            ValueError: If the saved schedule has another type or configuration.
        """
        if state.get("type") != type(self).__name__ or state.get("config") != self.config():
            raise ValueError(
                f"the checkpoint's schedule {state.get('type')}({state.get('config')}) does not "
                f"match this run's {type(self).__name__}({self.config()}); resume with the same "
                "schedule or start a new run"
            )
        self.last_value = state.get("last_value")

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"{type(self).__name__}({args})"


class Constant(Schedule):
    """The same value throughout.

    Args:
        value: The value.
        unit: Unused by the value, kept for a uniform interface.
    """

    def __init__(self, value: float, unit: str = "fraction") -> None:
        super().__init__(unit)
        self.constant = check_finite(value, "value")

    def value_at(self, t: float) -> float:
        return self.constant

    def config(self) -> dict[str, Any]:
        return {"value": self.constant, "unit": self.unit}


class Linear(Schedule):
    """``start`` during a warm-up, then a linear ramp to ``end``, then ``end``.

    The usual epsilon ramp of adversarial and certified training (Gowal et al. 2018 ramp epsilon
    from 0 after a warm-up; Madry-style runs ramp over the first epochs). Breakpoints are in
    ``unit``; ``ramp_epochs``/``warmup_epochs`` and ``ramp_steps``/``warmup_steps`` are
    shorthands that set the unit.

    Args:
        start: Value before and at the start of the ramp.
        end: Value at and after the end of the ramp.
        ramp: Length of the ramp, in ``unit`` (0 jumps straight to ``end`` after the warm-up).
        warmup: Length of the warm-up at ``start``, in ``unit``.
        unit: ``"fraction"`` (default), ``"epoch"`` or ``"step"``.
        ramp_epochs: Shorthand for ``ramp=..., unit="epoch"``.
        warmup_epochs: Shorthand for ``warmup=..., unit="epoch"``.
        ramp_steps: Shorthand for ``ramp=..., unit="step"``.
        warmup_steps: Shorthand for ``warmup=..., unit="step"``.

    Example:
        >>> Linear(0.0, 8 / 255, ramp_epochs=10)(5.0) == 4 / 255
        True
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
        by_epoch = ramp_epochs is not None or warmup_epochs is not None
        by_step = ramp_steps is not None or warmup_steps is not None
        generic = ramp is not None or warmup is not None
        if sum([by_epoch, by_step, generic]) > 1:
            raise ValueError(
                "give the ramp in one unit: ramp/warmup (with unit=), ramp_epochs/warmup_epochs, "
                "or ramp_steps/warmup_steps"
            )
        if by_epoch:
            unit, ramp, warmup = "epoch", ramp_epochs, warmup_epochs
        elif by_step:
            unit, ramp, warmup = "step", ramp_steps, warmup_steps
        if unit is not None and (by_epoch or by_step) and unit not in ("epoch", "step"):
            raise ValueError(f"unit {unit!r} conflicts with the *_epochs/*_steps arguments")
        super().__init__(unit or "fraction")
        self.start = check_finite(start, "start")
        self.end = check_finite(end, "end")
        self.ramp = check_nonnegative(0.0 if ramp is None else ramp, "ramp")
        self.warmup = check_nonnegative(0.0 if warmup is None else warmup, "warmup")
        if self.unit == "fraction" and self.warmup + self.ramp > 1.0 + 1e-9:
            raise ValueError(
                f"warmup + ramp = {self.warmup + self.ramp} exceeds the whole run (1.0) with "
                "unit='fraction'"
            )

    def value_at(self, t: float) -> float:
        if t <= self.warmup:
            return self.start
        if self.ramp == 0 or t >= self.warmup + self.ramp:
            return self.end
        frac = (t - self.warmup) / self.ramp
        return self.start + frac * (self.end - self.start)

    def config(self) -> dict[str, Any]:
        return {
            "start": self.start,
            "end": self.end,
            "ramp": self.ramp,
            "warmup": self.warmup,
            "unit": self.unit,
        }

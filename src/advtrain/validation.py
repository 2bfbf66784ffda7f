"""Generic argument checks shared by the core: counts, finite reals, non-negative reals.

Each check returns the value in its canonical type or raises a ``TypeError`` (wrong kind of
value) or ``ValueError`` (right kind, out of range) whose message names the argument and what to
change. Checks with a domain of their own (labels, norms, bounds, epsilon) live with that domain
in :mod:`advtrain.threat`.
"""

from __future__ import annotations

import math
from typing import Any


def check_positive_int(value: Any, name: str, minimum: int = 1) -> int:
    """Validates an integer count such as ``steps`` or ``restarts`` (accepts ``5.0``, not ``5.5``).

    Raises:
        TypeError: If ``value`` is not integral.
        ValueError: If ``value < minimum``.
    """
    if isinstance(value, bool) or not isinstance(value, int):
        try:
            if float(value) != int(value):
                raise ValueError
            value = int(value)
        except (TypeError, ValueError):
            raise TypeError(f"{name} must be an integer, got {value!r}") from None
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def check_finite(value: Any, name: str) -> float:
    """Validates a finite real number (anything ``float()`` accepts, e.g. ``"0.5"`` or ``1``).

    Raises:
        TypeError: If ``value`` is not a real number.
        ValueError: If it is NaN or infinite.
    """
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a real number, got {value!r}") from None
    if not math.isfinite(out):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return out


def check_nonnegative(value: Any, name: str) -> float:
    """Validates a finite real number ``>= 0`` (see :func:`check_finite`).

    Raises:
        TypeError: If ``value`` is not a real number.
        ValueError: If it is NaN, infinite or negative.
    """
    out = check_finite(value, name)
    if out < 0:
        raise ValueError(f"{name} must be >= 0, got {value!r}")
    return out


__all__ = ["check_finite", "check_nonnegative", "check_positive_int"]

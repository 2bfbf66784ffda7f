"""Building a schedule from a number, a plain dict, an OmegaConf node or a ``state_dict``.

Hydra users normally write ``_target_: advtrain.schedules.Linear`` and let
``hydra.utils.instantiate`` build the object; :func:`build_schedule` serves code that receives a
short spec instead (``{"type": "cosine", "start": 0, "end": 0.3, "ramp": 0.5}``) and rebuilds a
schedule from its own :meth:`~advtrain.schedules.base.Schedule.state_dict`. It never imports
Hydra: OmegaConf containers are accepted because they are ``collections.abc`` mappings and
sequences.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from advtrain.schedules.base import Constant, Linear, Schedule
from advtrain.schedules.shapes import Cosine, Piecewise, Smoothed, Step

#: Schedule classes by lower-case name.
SCHEDULES: dict[str, type[Schedule]] = {
    cls.__name__.lower(): cls for cls in (Constant, Linear, Smoothed, Cosine, Step, Piecewise)
}


def _plain(value: Any) -> Any:
    """Converts OmegaConf (or any ``collections.abc``) containers to dicts and lists."""
    if isinstance(value, (str, bytes)):
        return value
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, Sequence):
        return [_plain(v) for v in value]
    return value


def build_schedule(spec: Schedule | float | Mapping[str, Any]) -> Schedule:
    """Returns a schedule for ``spec``.

    Args:
        spec: A :class:`Schedule` (returned as is); a number (a :class:`Constant`); or a mapping
            with ``type`` (class name, case-insensitive: ``constant``, ``linear``, ``smoothed``,
            ``cosine``, ``step``, ``piecewise``) and the constructor's keyword arguments, either
            alongside ``type`` or under ``config`` (the layout of ``Schedule.state_dict()``, whose
            ``last_value`` is then restored too).

    Returns:
        The schedule.

    Raises:
        TypeError: If ``spec`` is of another kind or the arguments do not fit the class.
        ValueError: If the type is unknown or an argument is invalid.

    Example:
        >>> build_schedule({"type": "linear", "start": 0.0, "end": 0.3, "ramp": 0.5})
        Linear(start=0.0, end=0.3, ramp=0.5, warmup=0.0, unit='fraction')
    """
    if isinstance(spec, Schedule):
        return spec
    if isinstance(spec, bool):
        raise TypeError("a schedule spec must be a Schedule, a number or a mapping, got a bool")
    if isinstance(spec, (int, float)):
        return Constant(spec)
    if not isinstance(spec, Mapping):
        raise TypeError(
            f"a schedule spec must be a Schedule, a number or a mapping with 'type', got "
            f"{type(spec).__name__}"
        )
    kwargs = _plain(spec)
    name = kwargs.pop("type", None)
    if not isinstance(name, str) or name.lower() not in SCHEDULES:
        raise ValueError(f"schedule 'type' must be one of {sorted(SCHEDULES)}, got {name!r}")
    cls = SCHEDULES[name.lower()]
    is_state = "config" in kwargs
    if is_state:
        extra = set(kwargs) - {"config", "last_value"}
        if extra:
            raise ValueError(
                "a schedule spec has either its arguments or 'config', not both; got "
                f"{sorted(extra)}"
            )
        args = kwargs["config"]
    else:
        args = kwargs
    try:
        schedule = cls(**args)
    except TypeError as err:
        raise TypeError(f"cannot build {cls.__name__} from {args}: {err}") from None
    if is_state:
        schedule.last_value = kwargs.get("last_value")
    return schedule


__all__ = ["SCHEDULES", "build_schedule"]

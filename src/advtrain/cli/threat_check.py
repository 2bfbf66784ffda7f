"""The training attack must stay at the threat model the run is evaluated at.

``conf/train.yaml``'s ``threat`` node (``norm``, ``eps``, ``bounds``, ``normalization``) is the
one place the threat model is set: the attack group, the eps schedule, the methods' own attacks
and losses, robust validation and the evaluation all interpolate it. Setting ``attack.eps`` or
``attack.norm`` instead (on the command line, or in a recipe written before the ``threat`` node)
replaces the attack group's interpolation, so the run would train at one radius and be evaluated
at another without saying so. :func:`check_threat` refuses that before anything is built and
names the setting to use.
"""

from __future__ import annotations

import math
from typing import Any

from omegaconf import DictConfig

from advtrain.cli.errors import ConfigError

#: The attack-group keys that must equal the threat model's.
THREAT_KEYS = ("eps", "norm")


def _same(key: str, value: Any, expected: Any) -> bool:
    if value == expected:
        return True
    if key == "norm":
        return str(value).strip().lower() == str(expected).strip().lower()
    try:
        return math.isclose(float(value), float(expected), rel_tol=1e-9, abs_tol=1e-12)
    except (TypeError, ValueError):
        return False


def check_threat(cfg: DictConfig) -> None:
    """Refuses a training attack whose ``eps`` or ``norm`` differs from ``threat.eps`` /
    ``threat.norm``.

    Call it after :func:`advtrain.cli.config.coerce_fractions` (so ``8/255`` and
    ``${div:8,255}`` compare equal). Configs without a ``threat`` node, or attacks without the
    key, are left alone.

    Raises:
        ConfigError: (a ``ValueError``) naming the differing key and ``threat.<key>=`` as the
            setting to use.
    """
    threat, attack = cfg.get("threat"), cfg.get("attack")
    if not isinstance(threat, DictConfig) or not isinstance(attack, DictConfig):
        return
    for key in THREAT_KEYS:
        if key not in attack or key not in threat:
            continue
        value, expected = attack.get(key), threat.get(key)
        if _same(key, value, expected):
            continue
        raise ConfigError(
            f"attack.{key}={value} differs from the threat model's threat.{key}={expected}: the "
            f"run would train at one {key} and be evaluated at another. Set threat.{key}={value} "
            f"instead (the attack, the eps schedule, the method, robust validation and the "
            f"evaluation all follow it)"
        )


__all__ = ["THREAT_KEYS", "check_threat"]

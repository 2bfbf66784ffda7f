"""Layer 1 of the configuration checks: structured schemas, checked by Hydra at composition.

The dataclasses below describe the options of the ``attack``, ``schedule`` and ``method`` groups.
:func:`register_schemas` stores them in Hydra's ``ConfigStore`` as ``schema/<group>/<option>``,
and ``train.yaml`` puts ``optional schema/<group>@<group>: ${<group>}`` before each group, so the
chosen option's YAML (and every recipe or command-line override after it) is merged onto its
schema: an unknown key (``attack.epss=0.1``) or a wrong type (``attack.steps=2.5``) fails while
composing. Options without a schema compose unchecked.

A schema of a ``_target_`` node (:func:`target_schema`) is derived from the target's signature:
one field per keyword parameter, in order, with the constructor's default, so the schema cannot
drift from the code. Float parameters are typed ``Any`` because users write them as fractions
(``attack.eps=8/255``); :func:`advtrain.cli.config.coerce_fractions` turns those into floats
before use. Method schemas are the methods' own knobs; where one feeds a loss parameter of the
same meaning (``beta``, ``sigma``, ``eps_train_factor``) its default is that parameter's.
"""

from __future__ import annotations

import dataclasses
import inspect
import types
import typing
from collections.abc import Callable, Sequence
from typing import Any, Literal

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from advtrain.attacks import FGSM, PGD
from advtrain.losses import CROWNIBPLoss, GaussianNoiseLoss, IBPLoss, MARTLoss, TRADESLoss
from advtrain.schedules import Linear

#: Keys Hydra's ``instantiate`` reads itself (never constructor arguments).
INSTANTIATE_KEYS = frozenset({"_target_", "_args_", "_partial_", "_convert_", "_recursive_"})

_PLAIN_TYPES = (int, bool, str)


def field_type(annotation: Any) -> Any:
    """The OmegaConf type of a field for a parameter annotated ``annotation``.

    ``int``, ``bool`` and ``str`` (optional or not) keep their type, so OmegaConf refuses
    ``steps=2.5``; a ``Literal`` of strings is ``str``; anything else (``float``, which users write
    as fractions, sequences, unions) is ``Any``.
    """
    args = typing.get_args(annotation)
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        inner = field_type(rest[0]) if len(rest) == 1 else Any
        return inner | None if inner is not Any else Any
    if origin is Literal and all(isinstance(a, str) for a in args):
        return str
    if annotation in _PLAIN_TYPES:
        return annotation
    return Any


def _field(default: Any) -> Any:
    """A dataclass field with ``default`` (``MISSING`` for a required parameter; a list for a
    sequence, which dataclasses need as a factory)."""
    if default is inspect.Parameter.empty:
        return dataclasses.field(default=MISSING)
    if isinstance(default, (tuple, list)):
        return dataclasses.field(default_factory=_list_factory(default))
    return dataclasses.field(default=default)


def _list_factory(values: Sequence[Any]) -> Callable[[], list[Any]]:
    return lambda: list(values)


def _keyword_parameters(target: Callable[..., Any]) -> list[inspect.Parameter]:
    return [
        p
        for p in inspect.signature(target, eval_str=True).parameters.values()
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    ]


def target_schema(name: str, target: type, path: str, doc: str) -> type:
    """A schema dataclass for ``_target_: path`` mirroring ``target``'s keyword parameters.

    Args:
        name: The dataclass's name (shown in error messages, e.g. ``PGDConfig``).
        target: The class the node instantiates.
        path: Its ``_target_`` path as the YAML writes it (e.g. ``advtrain.attacks.PGD``).
        doc: The dataclass's docstring.
    """
    fields: list[tuple[str, Any, Any]] = [("_target_", str, dataclasses.field(default=path))]
    for p in _keyword_parameters(target):
        fields.append((p.name, field_type(p.annotation), _field(p.default)))
    schema = dataclasses.make_dataclass(name, fields)
    schema.__doc__ = doc
    schema.__module__ = __name__
    return schema


def default_of(target: Callable[..., Any], parameter: str) -> Any:
    """The default of ``target``'s keyword ``parameter``."""
    default = inspect.signature(target).parameters[parameter].default
    if default is inspect.Parameter.empty:
        raise TypeError(f"{target.__qualname__}({parameter}=...) has no default")
    return default


# -- attack and schedule groups: derived from the targets ------------------------------------------
PGDConfig = target_schema(
    "PGDConfig",
    PGD,
    "advtrain.attacks.PGD",
    """``attack=pgd``: :class:`advtrain.attacks.PGD` (Madry et al., ICLR 2018).""",
)
FGSMConfig = target_schema(
    "FGSMConfig",
    FGSM,
    "advtrain.attacks.FGSM",
    """``attack=fgsm``: :class:`advtrain.attacks.FGSM` (Goodfellow et al. 2015; FGSM-RS of Wong
    et al. 2020 with ``random_start``).""",
)
LinearScheduleConfig = target_schema(
    "LinearScheduleConfig",
    Linear,
    "advtrain.schedules.Linear",
    """:class:`advtrain.schedules.Linear`: ``start`` for ``warmup``, a linear ramp to ``end``.""",
)


@dataclasses.dataclass
class ConstantSchedules:
    """``schedule=constant``: no schedule, the attack's own values throughout."""


@dataclasses.dataclass
class LinearRampSchedules:
    """``schedule=linear_ramp``: a linear epsilon warm-up (attribute → schedule)."""

    eps: LinearScheduleConfig = dataclasses.field(  # type: ignore[valid-type]
        default_factory=LinearScheduleConfig
    )


# -- method group ----------------------------------------------------------------------------------
@dataclasses.dataclass
class StandardMethod:
    """``method=standard``: natural training (no callback)."""

    name: str = "standard"
    callback: Any = None
    # The metric the best checkpoint is chosen by (callbacks.model_checkpoint.monitor).
    monitor: str = "val/acc"


@dataclasses.dataclass
class PGDATMethod:
    """``method=pgd_at``: PGD adversarial training (Madry et al., ICLR 2018)."""

    name: str = "pgd_at"
    callback: Any = None


@dataclasses.dataclass
class TRADESMethod:
    """``method=trades``: TRADES (Zhang et al., ICML 2019), ``beta`` 6 in the paper."""

    name: str = "trades"
    beta: float = default_of(TRADESLoss, "beta")
    callback: Any = None


@dataclasses.dataclass
class MARTMethod:
    """``method=mart``: MART (Wang et al., ICLR 2020), ``beta`` 6 in the paper."""

    name: str = "mart"
    beta: float = default_of(MARTLoss, "beta")
    callback: Any = None


@dataclasses.dataclass
class FastATMethod:
    """``method=fast_at``: FGSM-RS training (Wong, Rice & Kolter, ICLR 2020)."""

    name: str = "fast_at"
    # FGSM trains at eps_train_factor·threat.eps.
    eps_train_factor: float = 1.0
    # The fraction of the recipe's ``trainer.max_epochs`` this method trains (rounded up).
    max_epochs_factor: Any = 1.0  # a number or a fraction such as 2/3
    callback: Any = None
    # The optimizer settings the method was tuned with (lr, lr_schedule, milestones); train.yaml's
    # module reads them unless a recipe or the command line sets module.*.
    module: Any = None


@dataclasses.dataclass
class FreeATMethod:
    """``method=free_at``: adversarial training for free (Shafahi et al., NeurIPS 2019)."""

    name: str = "free_at"
    callback: Any = None
    # The optimizer settings the method was tuned with (lr, lr_schedule, milestones); train.yaml's
    # module reads them unless a recipe or the command line sets module.*.
    module: Any = None


@dataclasses.dataclass
class IBPMethod:
    """``method=ibp``: IBP training (Gowal et al. 2018); ramps in fractions of the run."""

    name: str = "ibp"
    eps_train_factor: float = default_of(IBPLoss, "eps_train_factor")
    warmup: float = 0.03
    ramp: float = 0.17
    kappa_end: float = 0.5
    callback: Any = None
    # The optimizer settings the method was tuned with (lr, lr_schedule, milestones); train.yaml's
    # module reads them unless a recipe or the command line sets module.*.
    module: Any = None


@dataclasses.dataclass
class CROWNIBPMethod:
    """``method=crown_ibp``: CROWN-IBP training (Zhang et al., ICLR 2020)."""

    name: str = "crown_ibp"
    eps_train_factor: float = default_of(CROWNIBPLoss, "eps_train_factor")
    warmup: float = 0.05
    ramp: float = 0.25
    kappa_end: float = 0.0
    callback: Any = None
    # The optimizer settings the method was tuned with (lr, lr_schedule, milestones); train.yaml's
    # module reads them unless a recipe or the command line sets module.*.
    module: Any = None


@dataclasses.dataclass
class GaussianNoiseMethod:
    """``method=gaussian_noise``: Gaussian data augmentation (Cohen et al., ICML 2019)."""

    name: str = "gaussian_noise"
    sigma: float = default_of(GaussianNoiseLoss, "sigma")
    callback: Any = None


#: Group → option name → schema dataclass.
SCHEMAS: dict[str, dict[str, type]] = {
    "attack": {"pgd": PGDConfig, "fgsm": FGSMConfig},
    "schedule": {"constant": ConstantSchedules, "linear_ramp": LinearRampSchedules},
    "method": {
        "standard": StandardMethod,
        "pgd_at": PGDATMethod,
        "trades": TRADESMethod,
        "mart": MARTMethod,
        "fast_at": FastATMethod,
        "free_at": FreeATMethod,
        "ibp": IBPMethod,
        "crown_ibp": CROWNIBPMethod,
        "gaussian_noise": GaussianNoiseMethod,
    },
}


def register_schemas() -> None:
    """Stores every schema in Hydra's ConfigStore as ``schema/<group>/<option>`` (idempotent)."""
    cs = ConfigStore.instance()
    for group, options in SCHEMAS.items():
        for option, node in options.items():
            cs.store(group=f"schema/{group}", name=option, node=node)


def schema_fields(schema: type) -> list[str]:
    """The keys a schema dataclass accepts, in declaration order."""
    return [f.name for f in dataclasses.fields(schema)]


def keys_message(where: str, keys: Sequence[str]) -> str:
    """``valid keys of <where>: a, b, c`` (Hydra's own keys left out)."""
    shown = ", ".join(k for k in keys if k not in INSTANTIATE_KEYS) or "(none)"
    return f"valid keys of {where}: {shown}"


__all__ = [
    "INSTANTIATE_KEYS",
    "SCHEMAS",
    "CROWNIBPMethod",
    "ConstantSchedules",
    "FGSMConfig",
    "FastATMethod",
    "FreeATMethod",
    "GaussianNoiseMethod",
    "IBPMethod",
    "LinearRampSchedules",
    "LinearScheduleConfig",
    "MARTMethod",
    "PGDATMethod",
    "PGDConfig",
    "StandardMethod",
    "TRADESMethod",
    "default_of",
    "field_type",
    "keys_message",
    "register_schemas",
    "schema_fields",
    "target_schema",
]

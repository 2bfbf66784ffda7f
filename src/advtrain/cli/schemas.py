"""Structured-config schemas and checks that turn configuration mistakes into clear errors.

Three layers, all raising :class:`ConfigError` (a ``ValueError``) with a message that says what
to change:

1. **Schemas at composition.** The dataclasses below describe the options of the ``attack``,
   ``schedule`` and ``method`` groups. :func:`register_schemas` stores them in Hydra's
   ``ConfigStore`` as ``schema/<group>/<option>``, and ``train.yaml`` puts
   ``optional schema/<group>@<group>: ${<group>}`` before each group, so the chosen option's
   YAML (and every recipe or command-line override after it) is merged onto its schema: an
   unknown key (``attack.epss=0.1``, a typo in a recipe) or a wrong type (``attack.steps=2.5``)
   fails while composing. Options without a schema (added later) compose unchecked.
2. **Readable composition errors.** :func:`explain_composition_error` rewrites Hydra's
   "Could not override 'attack.epss'" into a message naming the valid keys; :func:`compose
   <advtrain.cli.config.compose>` raises it, and ``advtrain-train`` prints it
   (:func:`diagnose_overrides`).
3. **Checks before training** (:func:`check_config`, called by :func:`advtrain.cli.train.run`):
   every ``_target_`` node's keys against the target's signature (catches ``+attack.epss=...``
   and typos in any group), keys added to schema-typed groups, and trainer settings that
   cannot work (``trainer=ddp`` with one device).

Float fields that users write as fractions (``eps``, ``alpha``: ``attack.eps=8/255``) are typed
``Any``; :func:`advtrain.cli.config.coerce_fractions` turns them into floats before use.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
from collections.abc import Mapping, Sequence
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.errors import ConfigCompositionException, MissingConfigException
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException, ValidationError


class ConfigError(ConfigCompositionException, ValueError):
    """A configuration that cannot run; the message says what to change."""


def _bounds() -> list[float]:
    return [0.0, 1.0]


# -- attack group ----------------------------------------------------------------------------------
@dataclasses.dataclass
class PGDConfig:
    """``attack=pgd``: :class:`advtrain.attacks.PGD` (Madry et al., ICLR 2018)."""

    _target_: str = "advtrain.attacks.PGD"
    eps: Any = 8 / 255
    norm: str = "linf"
    steps: int = 10
    alpha: Any = None
    restarts: int = 1
    random_start: bool = True
    loss: str = "ce"
    bounds: Any = dataclasses.field(default_factory=_bounds)
    seed: int | None = None
    bn_mode: str = "eval"


@dataclasses.dataclass
class FGSMConfig:
    """``attack=fgsm``: :class:`advtrain.attacks.FGSM` (Goodfellow et al. 2015; FGSM-RS of Wong
    et al. 2020 with ``random_start``)."""

    _target_: str = "advtrain.attacks.FGSM"
    eps: Any = 8 / 255
    norm: str = "linf"
    alpha: Any = None
    random_start: bool = False
    loss: str = "ce"
    bounds: Any = dataclasses.field(default_factory=_bounds)
    seed: int | None = None
    bn_mode: str = "eval"


# -- schedule group --------------------------------------------------------------------------------
@dataclasses.dataclass
class LinearScheduleConfig:
    """:class:`advtrain.schedules.Linear`: ``start`` for ``warmup``, a linear ramp to ``end``."""

    _target_: str = "advtrain.schedules.Linear"
    start: Any = MISSING
    end: Any = MISSING
    ramp: Any = None
    warmup: Any = None
    unit: str | None = None
    ramp_epochs: Any = None
    warmup_epochs: Any = None
    ramp_steps: Any = None
    warmup_steps: Any = None


@dataclasses.dataclass
class ConstantSchedules:
    """``schedule=constant``: no schedule, the attack's own values throughout."""


@dataclasses.dataclass
class LinearRampSchedules:
    """``schedule=linear_ramp``: a linear epsilon warm-up (attribute → schedule)."""

    eps: LinearScheduleConfig = dataclasses.field(default_factory=LinearScheduleConfig)


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
    beta: float = 6.0
    callback: Any = None


@dataclasses.dataclass
class MARTMethod:
    """``method=mart``: MART (Wang et al., ICLR 2020), ``beta`` 6 in the paper."""

    name: str = "mart"
    beta: float = 6.0
    callback: Any = None


@dataclasses.dataclass
class FastATMethod:
    """``method=fast_at``: FGSM-RS training (Wong, Rice & Kolter, ICLR 2020)."""

    name: str = "fast_at"
    # FGSM trains at eps_train_factor·attack.eps.
    eps_train_factor: float = 1.0
    # The fraction of the recipe's ``trainer.max_epochs`` this method trains (rounded up).
    max_epochs_factor: float = 1.0
    callback: Any = None


@dataclasses.dataclass
class FreeATMethod:
    """``method=free_at``: adversarial training for free (Shafahi et al., NeurIPS 2019)."""

    name: str = "free_at"
    callback: Any = None


@dataclasses.dataclass
class IBPMethod:
    """``method=ibp``: IBP training (Gowal et al. 2018); ramps in fractions of the run."""

    name: str = "ibp"
    eps_train_factor: float = 1.1
    warmup: float = 0.03
    ramp: float = 0.17
    kappa_end: float = 0.5
    callback: Any = None


@dataclasses.dataclass
class CROWNIBPMethod:
    """``method=crown_ibp``: CROWN-IBP training (Zhang et al., ICLR 2020)."""

    name: str = "crown_ibp"
    eps_train_factor: float = 1.1
    warmup: float = 0.05
    ramp: float = 0.25
    kappa_end: float = 0.0
    callback: Any = None


@dataclasses.dataclass
class GaussianNoiseMethod:
    """``method=gaussian_noise``: Gaussian data augmentation (Cohen et al., ICML 2019)."""

    name: str = "gaussian_noise"
    sigma: float = 0.25
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

#: Keys Hydra's ``instantiate`` reads itself (never constructor arguments).
INSTANTIATE_KEYS = frozenset({"_target_", "_args_", "_partial_", "_convert_", "_recursive_"})


def register_schemas() -> None:
    """Stores every schema in Hydra's ConfigStore as ``schema/<group>/<option>`` (idempotent)."""
    cs = ConfigStore.instance()
    for group, options in SCHEMAS.items():
        for option, node in options.items():
            cs.store(group=f"schema/{group}", name=option, node=node)


def schema_fields(schema: type) -> list[str]:
    """The keys a schema dataclass accepts, in declaration order."""
    return [f.name for f in dataclasses.fields(schema)]


def _keys_message(where: str, keys: Sequence[str]) -> str:
    shown = ", ".join(k for k in keys if k not in INSTANTIATE_KEYS) or "(none)"
    return f"valid keys of {where}: {shown}"


# -- composition errors ----------------------------------------------------------------------------
def _omegaconf_error(exc: BaseException) -> OmegaConfBaseException | None:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OmegaConfBaseException):
            return current
        current = current.__cause__ or current.__context__
    return None


def explain_composition_error(exc: BaseException) -> str | None:
    """A message naming the valid keys when ``exc`` is about an unknown key, else ``None``.

    Works on Hydra's composition errors (an override or a config file naming a key the node
    does not have), for schema-typed nodes (the schema's fields) and plain ones (the node's
    keys).
    """
    missing = _missing_option(exc)
    if missing is not None:
        return missing
    err = _omegaconf_error(exc)
    if err is None:
        return None
    text = str(getattr(err, "msg", "") or err)
    full_key = getattr(err, "full_key", None) or getattr(err, "key", None)
    if not full_key:
        return None
    if isinstance(err, ValidationError):
        return f"bad value for '{full_key}': {text}"
    if "not in" not in text and "is not in struct" not in text:
        return None
    parent_path, _, key = str(full_key).rpartition(".")
    object_type = getattr(err, "object_type", None)
    if isinstance(object_type, type) and dataclasses.is_dataclass(object_type):
        keys = schema_fields(object_type)
        where = f"{parent_path or 'the config'} ({object_type.__name__})"
    else:
        parent = getattr(err, "parent_node", None)
        if not isinstance(parent, DictConfig):
            return None
        keys = [str(k) for k in parent]
        where = parent_path or "the config"
    close = [k for k in keys if _similar(key, k)]
    hint = f" Did you mean {' or '.join(repr(k) for k in close)}?" if close else ""
    source = re.match(r"In '([^']+)':", str(exc))
    origin = f" (set in {source.group(1)}.yaml)" if source else ""
    return f"'{full_key}' is not a valid key{origin}.{hint} {_keys_message(where, keys)}"


def _similar(a: str, b: str) -> bool:
    import difflib

    return difflib.SequenceMatcher(None, a.lower(), b.lower()).ratio() >= 0.8


def _missing_option(exc: BaseException) -> str | None:
    """``recipe=nope`` and the like: the group's available options, without the search path."""
    current: BaseException | None = exc
    while current is not None:
        if isinstance(current, MissingConfigException) and current.options is not None:
            wanted = str(current.missing_cfg_file or "")
            group, _, option = wanted.rpartition("/")
            if group.startswith("schema/"):
                return None
            choices = ", ".join(sorted(current.options)) or "(none)"
            return (
                f"unknown {group or 'config'} {option!r}: choose {group}=NAME with NAME one of "
                f"{choices}"
            )
        current = current.__cause__
    return None


def diagnose_overrides(args: Sequence[str]) -> str | None:
    """Re-composes the command line's overrides and explains an unknown-key error, if any.

    Used by ``advtrain-train`` after Hydra reported a failure: flags and ``hydra.*`` overrides
    are left out, sweeps take their first value. Returns ``None`` when the overrides compose (the
    failure lay elsewhere) or cannot be re-composed here.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from advtrain.cli.config import compose

    if any(a.startswith("-") and a not in ("-m", "--multirun") for a in args):
        return None
    try:
        parsed = OverridesParser.create().parse_overrides(
            [a for a in args if not a.startswith("-")]
        )
    except Exception:
        return None
    overrides: list[str] = []
    for o in parsed:
        if o.key_or_group.startswith("hydra") or o.key_or_group == "output_dir":
            continue
        if o.is_sweep_override():
            try:
                first = next(iter(o.sweep_string_iterator()))
            except Exception:
                return None
            overrides.append(f"{o.get_key_element()}={first}")
        else:
            overrides.append(o.input_line)
    try:
        compose(overrides=overrides, output_dir="unused")
    except ConfigError as err:
        return str(err)
    except Exception:
        return None
    return None


# -- checks before training ------------------------------------------------------------------------
def _locate(path: str) -> Any:
    """Imports ``package.module.Name`` (or a nested attribute) like Hydra's ``_target_``."""
    import importlib

    parts = path.split(".")
    for i in range(len(parts), 0, -1):
        module = ".".join(parts[:i])
        try:
            obj = importlib.import_module(module)
        except ModuleNotFoundError as err:
            if err.name is not None and (module + ".").startswith(err.name + "."):
                continue  # this prefix is not a module: try a shorter one
            raise  # the module exists but imports something missing (e.g. torchvision)
        for attr in parts[i:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(f"no module named {parts[0]!r}")


def _signature_keys(target: str) -> list[str] | None:
    """Keyword parameters of ``target`` (class or callable), or ``None`` if it takes ``**kw``."""
    obj = _locate(target)
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return None
    params = list(sig.parameters.values())
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return [
        p.name
        for p in params
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    ]


def check_targets(cfg: Any, path: str = "") -> None:
    """Checks every ``_target_`` node's keys against the target's parameters.

    Raises:
        ConfigError: Naming the node, the unknown keys and the valid ones.
    """
    if isinstance(cfg, DictConfig):
        cfg = OmegaConf.to_container(cfg, resolve=False)
    if isinstance(cfg, Mapping):
        target = cfg.get("_target_")
        if isinstance(target, str) and "${" not in target:
            try:
                valid = _signature_keys(target)
            except Exception as err:
                raise ConfigError(
                    f"{path or 'the config'}._target_={target!r} cannot be imported ({err}); "
                    "check the spelling of the class path"
                ) from None
            if valid is not None:
                unknown = [str(k) for k in cfg if str(k) not in INSTANTIATE_KEYS and k not in valid]
                if unknown:
                    keys = ", ".join(repr(f"{path}.{k}" if path else k) for k in unknown)
                    raise ConfigError(
                        f"{keys}: not a parameter of {target}. "
                        f"{_keys_message(path or 'the config', valid)}"
                    )
        for key, value in cfg.items():
            check_targets(value, f"{path}.{key}" if path else str(key))
    elif isinstance(cfg, list):
        for i, value in enumerate(cfg):
            check_targets(value, f"{path}[{i}]")


def check_schema_keys(cfg: DictConfig) -> None:
    """Keys added (with ``+``) to a schema-typed ``attack``/``schedule``/``method`` node.

    Raises:
        ConfigError: Naming the extra keys and the schema's keys.
    """
    for group in SCHEMAS:
        node = cfg.get(group)
        if not isinstance(node, DictConfig):
            continue
        schema = OmegaConf.get_type(node)
        if not (isinstance(schema, type) and dataclasses.is_dataclass(schema)):
            continue
        valid = schema_fields(schema)
        extra = [str(k) for k in node if str(k) not in valid]
        if extra:
            raise ConfigError(
                f"{', '.join(f'{group}.{k}' for k in extra)}: not a key of {schema.__name__}. "
                f"{_keys_message(f'{group} ({schema.__name__})', valid)}"
            )


def _device_count(devices: Any) -> int | None:
    if isinstance(devices, bool):
        return None
    if isinstance(devices, int):
        return devices
    if isinstance(devices, str):
        text = devices.strip()
        if text.lstrip("-").isdigit():
            return int(text)
        if "," in text:
            return len([d for d in text.split(",") if d.strip()])
        return None
    if isinstance(devices, Sequence):
        return len(devices)
    return None


def check_trainer(trainer: Mapping[str, Any]) -> None:
    """Refuses trainer settings that cannot do what they say.

    ``trainer=ddp`` (a ``ddp*`` strategy) with a single device on a single node would start one
    process and pretend to be distributed.

    Raises:
        ConfigError: Saying to use ``trainer=cpu``/``trainer=gpu`` or ``trainer.devices>=2``.
    """
    strategy = trainer.get("strategy")
    if not (isinstance(strategy, str) and strategy.startswith("ddp")):
        return
    n = _device_count(trainer.get("devices"))
    nodes = trainer.get("num_nodes", 1) or 1
    if n is not None and n < 2 and int(nodes) < 2:
        raise ConfigError(
            f"trainer.strategy={strategy} with trainer.devices={trainer.get('devices')} runs a "
            "single process: use trainer=cpu (or trainer=gpu) for one device, or set "
            "trainer.devices>=2 for data-parallel training"
        )


def max_epochs_factor(cfg: DictConfig) -> float | None:
    """``method.max_epochs_factor``, checked; ``None`` where the method has none.

    Raises:
        ConfigError: If the factor is outside ``(0, 1]``.
    """
    method = cfg.get("method")
    factor = method.get("max_epochs_factor") if isinstance(method, DictConfig) else None
    if factor is None:
        return None
    if not 0 < float(factor) <= 1:
        raise ConfigError(
            f"method.max_epochs_factor must be in (0, 1] (the fraction of trainer.max_epochs the "
            f"method trains), got {factor}"
        )
    return float(factor)


def check_seed(value: Any) -> int:
    """The run's ``seed`` as an integer.

    Raises:
        ConfigError: For anything but an integer (``seed=abc``, ``seed=1.5``).
    """
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, str))
        or (isinstance(value, str) and not value.strip().lstrip("-").isdigit())
    ):
        raise ConfigError(f"seed must be an integer (e.g. seed=0), got {value!r}")
    return int(value)


def check_config(cfg: DictConfig) -> None:
    """All checks :func:`advtrain.cli.train.run` makes before building anything.

    Raises:
        ConfigError: On the first problem found.
    """
    check_seed(cfg.get("seed", 0))
    check_schema_keys(cfg)
    check_targets(cfg)
    max_epochs_factor(cfg)
    trainer = cfg.get("trainer")
    if isinstance(trainer, DictConfig):
        check_trainer({k: trainer.get(k) for k in ("strategy", "devices", "num_nodes")})


__all__ = [
    "SCHEMAS",
    "CROWNIBPMethod",
    "ConfigError",
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
    "check_config",
    "check_schema_keys",
    "check_seed",
    "check_targets",
    "check_trainer",
    "diagnose_overrides",
    "explain_composition_error",
    "max_epochs_factor",
    "register_schemas",
    "schema_fields",
]

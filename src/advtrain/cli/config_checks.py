"""Layer 3 of the configuration checks: the composed config, checked before anything is built.

:func:`check_config` (called by :func:`advtrain.cli.train.run`) checks every ``_target_`` node's
keys against the target's signature (catches ``+attack.epss=...`` and typos in any group), keys
added to schema-typed groups (:mod:`advtrain.cli.structured`), the run's ``seed``,
``method.max_epochs_factor``, and trainer settings that cannot work (``trainer=ddp`` with one
device). Each raises a :class:`~advtrain.cli.errors.ConfigError` that says what to change.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Mapping, Sequence
from typing import Any

from omegaconf import DictConfig, OmegaConf

from advtrain.cli.errors import ConfigError
from advtrain.cli.structured import INSTANTIATE_KEYS, SCHEMAS, keys_message, schema_fields


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
                        f"{keys_message(path or 'the config', valid)}"
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
                f"{keys_message(f'{group} ({schema.__name__})', valid)}"
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
    "check_config",
    "check_schema_keys",
    "check_seed",
    "check_targets",
    "check_trainer",
    "max_epochs_factor",
]

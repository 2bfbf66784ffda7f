"""Hydra plumbing shared by the console scripts: resolvers, value coercion, composition."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from advtrain.cli.composition import explain_composition_error
from advtrain.cli.errors import ConfigError
from advtrain.cli.structured import register_schemas
from advtrain.report.folders import run_id

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
_FRACTION = re.compile(r"^\s*([-+]?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?)\s*/\s*(\d+(?:\.\d*)?)\s*$")


def gpus_per_node(accelerator: Any, devices: Any) -> int:
    """GPUs a SLURM job asks for: the trainer's ``devices`` when it trains on GPUs, else 0.

    Used by ``hydra/launcher=slurm`` as ``${gpus_per_node:${trainer.accelerator},...}``.
    """
    if str(accelerator).lower() not in {"gpu", "cuda"}:
        return 0
    if isinstance(devices, int) or str(devices).isdigit():
        return int(devices)
    raise ValueError(
        f"hydra/launcher=slurm needs a number of devices per node, got trainer.devices={devices!r}"
    )


def tasks_per_node(devices: Any) -> int:
    """SLURM tasks per node: one process per device (Lightning's DDP under SLURM needs this)."""
    if isinstance(devices, int) or str(devices).isdigit():
        return int(devices)
    return 1


def lightning_package(cfg: Any) -> str:
    """The Lightning package a run trains with: the config's ``lightning`` key (``auto``,
    ``lightning`` or ``pytorch_lightning``; ``auto`` takes ``$ADVTRAIN_LIGHTNING`` if set, else
    ``lightning.pytorch`` where installed, else ``pytorch_lightning``).

    Raises:
        ValueError: For an unknown package name, or one that is not installed (the message
            names the installed ones and the override).
    """
    from advtrain.lit import adapter

    choice = cfg.get("lightning", "auto") if cfg is not None else "auto"
    try:
        return adapter.preferred(None if choice is None else str(choice))
    except (ImportError, ValueError) as err:
        raise ConfigError(f"lightning={choice}: {err}") from None


def lightning_target(path: str, *, _root_: Any = None) -> str:
    """``${lightning:Trainer}`` → ``lightning.pytorch.Trainer`` or ``pytorch_lightning.Trainer``:
    a class of the package the run trains with (:func:`lightning_package`)."""
    return f"{lightning_package(_root_)}.{path}"


def _number(value: Any) -> float:
    """A number or a fraction string (``"8/255"``) as a float."""
    return float(parse_fraction(value))


def register_resolvers() -> None:
    """Registers ``${mul:a,b}`` (``a`` and ``b`` numbers or fractions such as ``8/255``),
    ``${div:a,b}`` (kept for configs written with it: fractions are plain ``8/255`` strings),
    ``${lightning:path}`` and the SLURM launcher's resolvers (idempotent)."""
    resolvers = {
        "div": lambda a, b: _number(a) / _number(b),
        "mul": lambda a, b: _number(a) * _number(b),
        "gpus_per_node": gpus_per_node,
        "tasks_per_node": tasks_per_node,
        "lightning": lightning_target,
        "run_id": run_id,
    }
    for name, fn in resolvers.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)


def parse_fraction(value: Any) -> Any:
    """``"8/255"`` → ``0.031372…``; anything else is returned unchanged."""
    if isinstance(value, str):
        match = _FRACTION.match(value)
        if match:
            denominator = float(match.group(2))
            if denominator == 0:
                raise ValueError(f"division by zero in {value!r}")
            return float(match.group(1)) / denominator
    return value


def coerce_fractions(cfg: DictConfig | ListConfig) -> None:
    """Turns string fractions such as ``threat.eps=8/255`` into floats, in place."""
    keys = list(cfg.keys()) if isinstance(cfg, DictConfig) else range(len(cfg))
    for key in keys:  # keys only: reading values would resolve interpolations here
        node = cfg._get_node(key)  # type: ignore[union-attr]
        if node is None or (hasattr(node, "_is_interpolation") and node._is_interpolation()):
            continue
        value = cfg[key]
        if isinstance(value, (DictConfig, ListConfig)):
            coerce_fractions(value)
        else:
            new = parse_fraction(value)
            if new is not value:
                cfg[key] = new


def compose(
    config_name: str = "train", overrides: Sequence[str] = (), output_dir: str | None = None
) -> DictConfig:
    """Composes a config from the packaged ``conf/`` exactly as the console script does.

    For programmatic use and tests: ``run(compose(overrides=["trainer.max_epochs=2"],
    output_dir=tmp))``.

    Raises:
        advtrain.cli.errors.ConfigError: For an unknown key (naming the valid ones).
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import ConfigCompositionException

    register_resolvers()
    register_schemas()
    extra = [f"output_dir={output_dir}"] if output_dir is not None else []
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        try:
            cfg = hydra_compose(config_name=config_name, overrides=[*overrides, *extra])
        except ConfigCompositionException as err:
            message = explain_composition_error(err)
            if message is None:
                raise
            raise ConfigError(message) from err
    coerce_fractions(cfg)  # "8/255" -> 0.0313...: one mechanism for fractions, from the start
    return cfg


def diagnose_overrides(args: Sequence[str]) -> str | None:
    """Re-composes the command line's overrides and explains an unknown-key error, if any.

    Used by ``advtrain-train`` after Hydra reported a failure: flags and ``hydra.*`` overrides
    are left out, sweeps take their first value. Returns ``None`` when the overrides compose (the
    failure lay elsewhere) or cannot be re-composed here.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

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

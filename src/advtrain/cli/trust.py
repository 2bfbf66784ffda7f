"""Configs read from disk are data: what a config advtrain did not compose may instantiate.

``hydra.utils.instantiate`` calls whatever ``_target_`` names, with whatever arguments the node
holds: ``{_target_: torch.load, f: payload.pkl, weights_only: false}`` runs a pickle's code,
``{_target_: builtins.open, file: victim.txt, mode: w}`` truncates a file. A configuration composed
from the user's own command line is the user's code; one read from a folder someone delivered
(``advtrain-eval run_dir=DIR`` reads ``DIR/config_resolved.yaml``) is not. Before anything from
such a config is instantiated (or even imported), :func:`check_config_targets` checks every
``_target_`` in it:

* it must match :data:`SAFE_TARGETS` (advtrain's models, data modules, attacks, losses, schedules,
  certificates and callbacks; ``torch.nn`` layers; ``torchvision.models`` architectures) or a
  pattern the user allows on the command line (``allow_targets=[my_pkg.*]``);
* the object it resolves to must be a class (or, for ``torchvision.models``, a model builder)
  *defined* in an allowed module, so ``advtrain.models.normalize.torch.load`` (a module attribute
  chain that leads elsewhere) is refused too.

``trust_config=true`` switches the check off, with the same loud warning as
``trust_checkpoint=true``.
"""

from __future__ import annotations

import fnmatch
import importlib
import inspect
import sys
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

from omegaconf import OmegaConf

#: Targets any configuration may name (fnmatch patterns on the dotted path).
SAFE_TARGETS: tuple[str, ...] = (
    "advtrain.models.*",
    "advtrain.data.*",
    "advtrain.attacks.*",
    "advtrain.losses.*",
    "advtrain.schedules.*",
    "advtrain.certify.*",
    "advtrain.callbacks.*",
    "advtrain.lit.*",
    "torch.nn.*",
    "torchvision.models.*",
)
#: Patterns under which functions (not only classes) are accepted: model builders.
_BUILDERS: tuple[str, ...] = ("torchvision.models.*",)


class UntrustedConfigError(ValueError):
    """A configuration read from disk names a target advtrain will not instantiate."""


def _targets(node: Any, path: str) -> Iterator[tuple[str, Any]]:
    """``(key path, _target_ value)`` of every node below ``node`` (a plain container)."""
    if isinstance(node, dict):
        for key, value in node.items():
            child = f"{path}.{key}" if path else str(key)
            if key == "_target_":
                yield child, value
            else:
                yield from _targets(value, child)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _targets(value, f"{path}[{i}]")


def _matches(name: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def _locate(path: str) -> Any:
    """The object at a dotted path (importing the longest importable module prefix)."""
    parts = path.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for attr in parts[i:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(f"no module of {path!r} can be imported")


def _defined_at(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', '?')}"


def check_config_targets(
    node: Any,
    source: str,
    allow: Sequence[str] = (),
    trust: bool = False,
    path: str = "",
) -> None:
    """Refuses any ``_target_`` below ``node`` that is not allowed (see the module docstring).

    Args:
        node: The configuration (or part of it) read from disk.
        source: Where it was read, for messages (e.g. ``"run_dir=... config_resolved.yaml"``).
        allow: More fnmatch patterns the user allows (``allow_targets=[my_pkg.*]``).
        trust: Skip the check (``trust_config=true``), with a loud warning.
        path: The key of ``node`` in its configuration (``"data"``), for messages.

    Raises:
        UntrustedConfigError: Naming the key, the target and the overrides that allow it.
    """
    if trust:
        banner = (
            f"UNSAFE CONFIG: trust_config=true: every _target_ in {source} will be instantiated, "
            "whatever code it names. Do this only for folders from a trusted source."
        )
        print("!" * 78 + "\n" + banner + "\n" + "!" * 78, file=sys.stderr)
        warnings.warn(banner, UserWarning, stacklevel=2)
        return
    patterns = (*SAFE_TARGETS, *[str(a) for a in allow])
    try:  # interpolations resolved (advtrain's resolvers run no code from the config)
        plain = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node
    except Exception as err:
        raise UntrustedConfigError(
            f"{source} cannot be resolved ({err}); nothing from it was run"
        ) from None
    for key, target in _targets(plain, path):
        how = (
            f"If you trust this folder and this target, allow it: allow_targets=['{target}'] "
            "(or trust_config=true: any code the config names will run)"
        )
        if not isinstance(target, str) or not _matches(target, patterns):
            raise UntrustedConfigError(
                f"{source} sets {key} to {target!r}, which is not one of the targets advtrain "
                "instantiates from a configuration it did not compose itself (advtrain's models, "
                "data modules, attacks, losses, schedules and callbacks; torch.nn layers; "
                "torchvision.models). A delivered config is data, not code. " + how
            )
        try:
            obj = _locate(target)
        except (ImportError, AttributeError) as err:
            raise UntrustedConfigError(
                f"{source}: {key}={target!r} cannot be imported ({err})"
            ) from None
        builder = _matches(target, _BUILDERS) and inspect.isfunction(obj)
        if not (inspect.isclass(obj) or builder) or not _matches(_defined_at(obj), patterns):
            raise UntrustedConfigError(
                f"{source} sets {key} to {target!r}, which resolves to {_defined_at(obj)}, not "
                "a class of an allowed module. " + how
            )


__all__ = ["SAFE_TARGETS", "UntrustedConfigError", "check_config_targets"]

"""Layer 2 of the configuration checks: Hydra's composition errors, rewritten to say what to change.

:func:`explain_composition_error` turns Hydra's "Could not override 'attack.epss'" into a message
naming the valid keys (a schema's fields, see :mod:`advtrain.cli.structured`, or a plain node's
keys) and the closest one; :func:`advtrain.cli.config.compose` raises it as a
:class:`~advtrain.cli.errors.ConfigError`, and ``advtrain-train`` prints it
(:func:`advtrain.cli.config.diagnose_overrides`).
"""

from __future__ import annotations

import dataclasses
import re

from hydra.errors import MissingConfigException
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException, ValidationError

from advtrain.cli.structured import keys_message, schema_fields


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
    return f"'{full_key}' is not a valid key{origin}.{hint} {keys_message(where, keys)}"


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


__all__ = ["explain_composition_error"]

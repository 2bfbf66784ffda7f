"""Names a module re-exports from another one that is imported only when first used.

A core module keeps a name that moved to the Lightning edge importable from its old place without
importing Lightning itself: the module's ``__getattr__`` (PEP 562) calls :func:`lazy_attribute`,
which imports the name's new home on the first access (e.g. ``advtrain.data.DigitsDataModule``).
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any


def lazy_attribute(module: str, name: str, homes: Mapping[str, str]) -> Any:
    """``name`` imported from ``homes[name]``, for a module-level ``__getattr__``.

    Args:
        module: The re-exporting module's name (``__name__``), for the error message.
        name: The attribute asked for.
        homes: Re-exported name → the module that defines it.

    Raises:
        AttributeError: If ``name`` is not one of ``homes`` (as for any missing attribute).

    Example:
        >>> def __getattr__(name):  # in the re-exporting module
        ...     return lazy_attribute(__name__, name, {"X": "package.module"})
    """
    home = homes.get(name)
    if home is None:
        raise AttributeError(f"module {module!r} has no attribute {name!r}")
    return getattr(importlib.import_module(home), name)


__all__ = ["lazy_attribute"]

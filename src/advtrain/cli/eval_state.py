"""Moved to :mod:`advtrain.evaluation.state` (the evaluation pipeline's resumable units)."""

from advtrain.evaluation.state import MANIFEST, StateMismatchError, UnitStore, unit_digest

__all__ = ["MANIFEST", "StateMismatchError", "UnitStore", "unit_digest"]

"""Structured-config schemas and checks that turn configuration mistakes into clear errors.

Three layers, all raising :class:`~advtrain.cli.errors.ConfigError` (a ``ValueError``) with a
message that says what to change:

1. **Schemas at composition** (:mod:`advtrain.cli.structured`). Dataclasses describe the options
   of the ``attack``, ``schedule`` and ``method`` groups. :func:`register_schemas` stores them in
   Hydra's ``ConfigStore`` as ``schema/<group>/<option>``, and ``train.yaml`` puts
   ``optional schema/<group>@<group>: ${<group>}`` before each group, so the chosen option's
   YAML (and every recipe or command-line override after it) is merged onto its schema: an
   unknown key (``attack.epss=0.1``, a typo in a recipe) or a wrong type (``attack.steps=2.5``)
   fails while composing. Options without a schema (added later) compose unchecked.
2. **Readable composition errors** (:mod:`advtrain.cli.composition`).
   :func:`explain_composition_error` rewrites Hydra's "Could not override 'attack.epss'" into a
   message naming the valid keys; :func:`compose <advtrain.cli.config.compose>` raises it, and
   ``advtrain-train`` prints it (:func:`advtrain.cli.config.diagnose_overrides`).
3. **Checks before training** (:mod:`advtrain.cli.config_checks`; :func:`check_config`, called by
   :func:`advtrain.cli.train.run`): every ``_target_`` node's keys against the target's signature
   (catches ``+attack.epss=...`` and typos in any group), keys added to schema-typed groups, and
   trainer settings that cannot work (``trainer=ddp`` with one device).

Float fields that users write as fractions (``eps``, ``alpha``: ``attack.eps=8/255``) are typed
``Any``; :func:`advtrain.cli.config.coerce_fractions` turns them into floats before use.

This module gathers the three layers' public names in one place (the names' homes are above).
"""

from __future__ import annotations

from advtrain.cli.composition import explain_composition_error
from advtrain.cli.config import diagnose_overrides
from advtrain.cli.config_checks import (
    check_config,
    check_schema_keys,
    check_seed,
    check_targets,
    check_trainer,
    max_epochs_factor,
)
from advtrain.cli.errors import ConfigError
from advtrain.cli.structured import (
    INSTANTIATE_KEYS,
    SCHEMAS,
    ConstantSchedules,
    CROWNIBPMethod,
    FastATMethod,
    FGSMConfig,
    FreeATMethod,
    GaussianNoiseMethod,
    IBPMethod,
    LinearRampSchedules,
    LinearScheduleConfig,
    MARTMethod,
    PGDATMethod,
    PGDConfig,
    StandardMethod,
    TRADESMethod,
    register_schemas,
    schema_fields,
)

__all__ = [
    "INSTANTIATE_KEYS",
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

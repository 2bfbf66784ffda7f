"""The documented schema of ``report.json`` (``schema_version`` 1) and a validator for it.

Both console scripts write ``report.json`` with the same sections (:mod:`advtrain.evaluation`'s
one pipeline): ``advtrain-train`` (``"kind": "train"``, the evaluation a training run ends with)
and ``advtrain-eval`` (``"kind": "evaluation"``, with the resumable state's record).
:data:`REPORT_SCHEMA` is a JSON Schema (draft 2020-12) document; :func:`validate_report` checks a
report against it with a small built-in validator for the keywords the schema uses (``type``,
``properties``, ``required``, ``additionalProperties``, ``items``, ``enum``, ``minimum``,
``maximum``, ``pattern``, ``minItems``), so no extra dependency is needed. Run
``advtrain-eval schema`` to print the schema.

Conventions:

* Accuracies are fractions in ``[0, 1]``; ``null`` where undefined (a class with no example).
* ``robust_accuracy`` maps every configured attack to its robust accuracy (correct clean *and*
  after the attack, Croce & Hein 2020), plus ``worst_case`` (correct under every attack).
* ``counts`` holds the exact integer counts behind the accuracies (``n``, ``clean``, each attack,
  ``worst_case``): a fraction in any view of the report is ``count / n``.
* Hashes are lower-case hexadecimal SHA-256. ``data_sha256`` is
  :func:`advtrain.data.base.tensors_sha256` of ``(x, y)``: for each tensor its dtype name, its
  shape, then its values as contiguous little-endian bytes, with the examples in test-set index
  order (the first ``n_examples`` of the test split).
* A new required key or a changed meaning increments :data:`SCHEMA_VERSION`; new optional keys do
  not.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

#: The version of the report's schema (see the module docstring for when it changes).
SCHEMA_VERSION = 1

_SHA256 = {"type": "string", "pattern": "^[0-9a-f]{64}$"}
_SHA256_OR_NULL = {"type": ["string", "null"], "pattern": "^[0-9a-f]{64}$"}
_ACC = {"type": "number", "minimum": 0, "maximum": 1}
_ACC_OR_NULL = {"type": ["number", "null"], "minimum": 0, "maximum": 1}
_COUNT = {"type": "integer", "minimum": 0}
_NONNEG = {"type": "number", "minimum": 0}
_ACC_LIST = {"type": "array", "items": _ACC_OR_NULL}
_NUM_LIST = {"type": "array", "items": {"type": "number"}}

_FLAG = {
    "type": "object",
    "required": ["code", "triggered", "message"],
    "properties": {
        "code": {"type": "string"},
        "triggered": {"type": "boolean"},
        "message": {"type": "string"},
        "advice": {"type": "string"},
        "details": {"type": "object"},
        "white_box_untrusted": {"type": "boolean"},
    },
}

_BOUND_METHOD = {
    "type": "object",
    "required": ["supported"],
    "properties": {
        "supported": {"type": "boolean"},
        "reason": {"type": ["string", "null"]},
        "eps": _NUM_LIST,
        "accuracy": _ACC_LIST,
        "counts": {"type": "array", "items": _COUNT},
        "at_threat_eps": _ACC_OR_NULL,
        "seconds": _NONNEG,
    },
}

_SMOOTHING = {
    "type": "object",
    "required": ["sigma", "n0", "n", "alpha", "radii", "accuracy", "n_examples"],
    "properties": {
        "sigma": {"type": "number", "minimum": 0},
        "n0": _COUNT,
        "n": _COUNT,
        "alpha": {"type": "number", "minimum": 0, "maximum": 1},
        "seed": {"type": ["integer", "null"]},
        "radii": _NUM_LIST,
        "accuracy": _ACC_LIST,
        "counts": {"type": "array", "items": _COUNT},
        "n_examples": _COUNT,
        "abstain_rate": _ACC_OR_NULL,
        "curve": {
            "type": "object",
            "properties": {"radius": _NUM_LIST, "accuracy": _ACC_LIST},
        },
        "at_threat_eps": _ACC_OR_NULL,
        "seconds": _NONNEG,
    },
}

#: JSON Schema (draft 2020-12) of ``report.json``, ``schema_version`` 1.
REPORT_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "https://advtrain.invalid/schemas/report-v1.json",
    "title": "advtrain robustness report",
    "description": "Written as report.json by advtrain-train and advtrain-eval.",
    "type": "object",
    "required": [
        "schema_version",
        "clean_accuracy",
        "robust_accuracy",
        "threat_model",
        "n_examples",
        "data_sha256",
        "checkpoint",
        "config_sha256",
        "environment",
    ],
    "properties": {
        "schema_version": {"type": "integer", "enum": [SCHEMA_VERSION]},
        "kind": {"type": "string", "enum": ["train", "evaluation"]},
        "created": {"type": "string", "description": "UTC time, ISO 8601"},
        "data": {
            "type": "object",
            "properties": {
                "name": {"type": "string"},
                "source": {"type": "string", "enum": ["advtrain", "data module"]},
                "contamination": {
                    "type": "object",
                    "description": "evaluated examples also found in the training split",
                    "properties": {"checked": {"type": "boolean"}, "overlap": _COUNT},
                },
                "split": {"type": "string"},
                "hash_method": {"type": "string"},
                "num_classes": _COUNT,
            },
        },
        "clean_accuracy": _ACC,
        "robust_accuracy": {
            "type": "object",
            "description": "attack name -> robust accuracy; 'worst_case' over all attacks",
            "additionalProperties": _ACC,
        },
        "counts": {
            "type": "object",
            "description": "exact counts behind the accuracies: n, clean, each attack, worst_case",
            "required": ["n", "clean"],
            "additionalProperties": _COUNT,
        },
        "threat_model": {
            "type": "object",
            "required": ["norm", "eps", "bounds"],
            "properties": {
                "norm": {"type": "string", "enum": ["linf", "l2", "l1"]},
                "eps": _NONNEG,
                "bounds": {"type": "array", "items": {"type": "number"}, "minItems": 2},
                "normalization": {
                    "type": ["object", "null"],
                    "description": "where the model's inputs are normalised; eps is in pixels",
                    "required": ["where", "mean", "std"],
                    "properties": {
                        "where": {"type": "string", "enum": ["model", "data"]},
                        "mean": {"type": "array", "items": {"type": "number"}},
                        "std": {"type": "array", "items": {"type": "number"}},
                        "source": {"type": "string"},
                    },
                },
            },
        },
        "n_examples": {"type": "integer", "minimum": 1},
        "attacks": {
            "type": "object",
            "description": "per configured attack: its class, parameters, result and members",
            "additionalProperties": {
                "type": "object",
                "required": ["target", "params", "accuracy", "correct"],
                "properties": {
                    "target": {"type": "string"},
                    "params": {"type": "object"},
                    "description": {"type": "string", "description": "repr of the attack"},
                    "accuracy": _ACC,
                    "correct": _COUNT,
                    "seconds": _NONNEG,
                    "protocol": {
                        "type": "object",
                        "description": "AutoAttack 'rapid': whether (and why) it escalated to "
                        "the standard ensemble",
                        "required": ["version", "escalated"],
                        "properties": {
                            "version": {"type": "string"},
                            "escalated": {"type": "boolean"},
                            "reason": {"type": ["string", "null"]},
                            "escalation_coverage": {
                                "type": "number",
                                "minimum": 0,
                                "maximum": 1,
                                "description": "largest fraction of a batch's still-robust "
                                "examples the escalation's Square covered (its rings)",
                            },
                        },
                    },
                    "members": {
                        "type": "array",
                        "description": "ensemble members in order; accuracy after each "
                        "(cumulative)",
                        "items": {
                            "type": "object",
                            "required": ["name", "accuracy_after", "correct_after"],
                            "properties": {
                                "name": {"type": "string"},
                                "accuracy_after": _ACC,
                                "correct_after": _COUNT,
                            },
                        },
                    },
                },
            },
        },
        "eps_curve": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["eps", "accuracy"],
                "properties": {"eps": _NONNEG, "accuracy": _ACC},
            },
        },
        "eps_curve_attack": {"type": "string"},
        "eps_grid": {
            "type": "object",
            "required": ["eps", "accuracy"],
            "properties": {
                "factors": _NUM_LIST,
                "eps": _NUM_LIST,
                "attacks": {"type": "array", "items": {"type": "string"}},
                "min_norm": {
                    "type": ["object", "null"],
                    "description": "the minimum-norm attack behind the curve: its name, the "
                    "attacks capping it at the threat eps, the median smallest adversarial norm "
                    "of the correctly classified examples, how many had one found",
                    "required": ["attack", "capped_by", "median", "found"],
                    "properties": {
                        "attack": {"type": "string"},
                        "capped_by": {"type": "array", "items": {"type": "string"}},
                        "median": {"type": ["number", "null"], "minimum": 0},
                        "found": _COUNT,
                    },
                },
                "accuracy": {
                    "type": "object",
                    "description": "attack name (and worst_case) -> accuracy at each eps",
                    "additionalProperties": _ACC_LIST,
                },
            },
        },
        "per_class": {
            "type": "object",
            "required": ["classes", "support", "accuracy"],
            "properties": {
                "classes": {"type": "array", "items": {"type": "integer"}},
                "support": {"type": "array", "items": _COUNT},
                "accuracy": {"type": "object", "additionalProperties": _ACC_LIST},
            },
        },
        "certified": {
            "type": "object",
            "properties": {
                "summary": {
                    "type": "object",
                    "description": "certificate name -> certified accuracy (for summary tables)",
                    "additionalProperties": _ACC_OR_NULL,
                },
                "bounds": {"type": "object", "additionalProperties": _BOUND_METHOD},
                "smoothing": {**_SMOOTHING, "type": ["object", "null"]},
                "gap": {
                    "type": "object",
                    "description": "empirical worst case minus the best certificate at eps",
                    "properties": {
                        "eps": _NONNEG,
                        "empirical": _ACC_OR_NULL,
                        "certified": _ACC_OR_NULL,
                        "certificate": {"type": ["string", "null"]},
                        "gap": {"type": ["number", "null"]},
                    },
                },
            },
        },
        "sanity": {
            "type": "object",
            "required": ["flags", "white_box_trustworthy"],
            "properties": {
                "flags": {"type": "array", "items": _FLAG},
                "triggered": {"type": "array", "items": {"type": "string"}},
                "white_box_trustworthy": {
                    "type": ["boolean", "null"],
                    "description": "null: the sanity checks were not run",
                },
                "warning": {"type": ["string", "null"]},
                "model_check_examples": _COUNT,
            },
        },
        "settings": {"type": "object"},
        "checkpoint": {
            "type": "object",
            "required": ["path", "sha256"],
            "properties": {
                "path": {"type": "string"},
                "sha256": _SHA256,
                "source": {"type": ["string", "null"]},
                "source_sha256": _SHA256_OR_NULL,
                "format": {"type": "string"},
                "loaded_with": {
                    "type": "string",
                    "enum": ["weights_only", "weights_only+skipped", "trusted_pickle"],
                },
                "skipped": {
                    "type": "array",
                    "items": {"type": "string"},
                    "description": "globals of the file not unpickled (pickled hyper-parameters)",
                },
            },
        },
        "config_sha256": _SHA256,
        "config_file": {"type": "string"},
        "report_dir": {
            "type": "string",
            "description": "the folder of this report (a resumed evaluation writes reports/v<k>)",
        },
        "data_sha256": _SHA256,
        "data_provenance": {
            "type": "object",
            "description": "the training data (advtrain.callbacks.DataProvenance): its size, "
            "class counts, the Merkle root of its per-example SHA-256 and the manifest file",
            "required": ["size", "merkle_root"],
            "properties": {
                "name": {"type": "string"},
                "size": _COUNT,
                "class_counts": {"type": "object", "additionalProperties": _COUNT},
                "merkle_root": _SHA256,
                "hash_method": {"type": "string"},
                "manifest": {"type": ["string", "null"]},
            },
        },
        "seed": {"type": "integer"},
        "timings_s": {"type": "object", "additionalProperties": _NONNEG},
        "environment": {
            "type": "object",
            "required": ["advtrain", "torch"],
            "properties": {
                "advtrain": {"type": "string"},
                "git_commit": {"type": ["string", "null"]},
                "git_dirty": {"type": ["boolean", "null"]},
                "torch": {"type": "string"},
                "lightning_package": {"type": "string"},
                "lightning": {"type": "string"},
                "pytorch_lightning": {"type": "string"},
                "python": {"type": "string"},
                "platform": {"type": "string"},
                "device": {"type": "string"},
            },
        },
        "figures": {"type": "object", "additionalProperties": {"type": "string"}},
        "resume": {
            "type": "object",
            "properties": {
                "units": _COUNT,
                "reused": _COUNT,
                "rejected": _COUNT,
                "authenticated": {"type": "boolean"},
                "state_dir": {"type": "string"},
            },
        },
    },
}

_TYPES: dict[str, tuple[type, ...]] = {
    "object": (Mapping,),
    "array": (list, tuple),
    "string": (str,),
    "boolean": (bool,),
    "null": (type(None),),
}


def _is_type(value: Any, name: str) -> bool:
    if name == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if name == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, _TYPES[name])


def _validate(value: Any, schema: Mapping[str, Any], path: str, errors: list[str]) -> None:
    expected = schema.get("type")
    if expected is not None:
        names = [expected] if isinstance(expected, str) else list(expected)
        if not any(_is_type(value, n) for n in names):
            errors.append(f"{path}: expected {' or '.join(names)}, got {type(value).__name__}")
            return
    if value is None:
        return
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{path}: {value!r} is not one of {schema['enum']}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if isinstance(value, float) and not math.isfinite(value):
            errors.append(f"{path}: {value} is not a finite number (use null)")
        if "minimum" in schema and value < schema["minimum"]:
            errors.append(f"{path}: {value} < minimum {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            errors.append(f"{path}: {value} > maximum {schema['maximum']}")
    if isinstance(value, str) and "pattern" in schema and not re.search(schema["pattern"], value):
        errors.append(f"{path}: {value!r} does not match {schema['pattern']}")
    if isinstance(value, (list, tuple)):
        if len(value) < schema.get("minItems", 0):
            errors.append(f"{path}: needs at least {schema['minItems']} items")
        if "items" in schema:
            for i, item in enumerate(value):
                _validate(item, schema["items"], f"{path}[{i}]", errors)
    if isinstance(value, Mapping):
        for key in schema.get("required", []):
            if key not in value:
                errors.append(f"{path}: missing required key {key!r}")
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties", True)
        for key, item in value.items():
            sub = f"{path}.{key}"
            if key in props:
                _validate(item, props[key], sub, errors)
            elif extra is False:
                errors.append(f"{path}: unexpected key {key!r}")
            elif isinstance(extra, Mapping):
                _validate(item, extra, sub, errors)


def validate_report(report: Any) -> list[str]:
    """Checks ``report`` (a parsed ``report.json``) against :data:`REPORT_SCHEMA`.

    Returns:
        One message per problem (``"$.path: what is wrong"``); empty when the report is valid.
    """
    errors: list[str] = []
    _validate(report, REPORT_SCHEMA, "$", errors)
    return errors


class ReportSchemaError(ValueError):
    """A report that does not follow :data:`REPORT_SCHEMA` (or has another schema version)."""


def check_report(report: Any, source: str = "report") -> None:
    """Raises :class:`ReportSchemaError` naming every problem of ``report``.

    A report of another ``schema_version`` gets a message of its own: it was written by another
    advtrain version and its keys may mean something else.
    """
    if isinstance(report, Mapping) and report.get("schema_version") != SCHEMA_VERSION:
        raise ReportSchemaError(
            f"{source} has schema_version {report.get('schema_version')!r}, but this advtrain "
            f"reads schema_version {SCHEMA_VERSION}; re-run advtrain-eval with this version on "
            "the checkpoint (or use the advtrain version that wrote it) so both reports mean the "
            "same thing"
        )
    errors = validate_report(report)
    if errors:
        more = f"; … {len(errors) - 10} more" if len(errors) > 10 else ""
        shown = "; ".join(errors[:10]) + more
        raise ReportSchemaError(f"{source} does not follow the report schema: {shown}")


__all__ = ["REPORT_SCHEMA", "ReportSchemaError", "check_report", "validate_report"]

"""The report around the evaluation's result sections: provenance, settings, environment.

Both console scripts write one report schema (:mod:`advtrain.report.schema`): the result sections
come from :func:`advtrain.evaluation.report.report_sections`, and :func:`assemble_report` adds what
ties them to their inputs (the SHA-256 of the checkpoint, the resolved config and the evaluated
data, the config file's name next to the report, versions, timings). ``write_report`` validates
the whole with ``check_report`` before writing anything.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from advtrain.report import SCHEMA_VERSION, sha256_text
from advtrain.report.ledger import canonical_json

DATA_HASH_METHOD = (
    "advtrain.data.base.tensors_sha256(x, y): per tensor its dtype name, shape, then values as "
    "contiguous little-endian bytes; examples in test-set index order (first n_examples)"
)


def state_fingerprint(
    settings: Mapping[str, Any], checkpoint_sha256: str, data_sha256: str, env: Mapping[str, Any]
) -> str:
    """What the resumable units of an evaluation depend on (settings, weights, data and code
    version): stored units are reused only under the same fingerprint."""
    return sha256_text(
        canonical_json(
            {
                "settings": settings,
                "checkpoint": checkpoint_sha256,
                "data": data_sha256,
                "code": [env.get("advtrain"), env.get("git_commit")],
            }
        )
    )


def write_config(cfg: DictConfig, folder: Path) -> tuple[Path, str]:
    """Writes the resolved config as ``config_resolved.yaml`` in ``folder``; returns its path and
    the SHA-256 of its text."""
    text = OmegaConf.to_yaml(cfg, resolve=True)
    path = folder / "config_resolved.yaml"
    path.write_text(text)
    return path, sha256_text(text)


def assemble_report(
    sections: Mapping[str, Any],
    *,
    kind: str,
    data: Mapping[str, Any],
    checkpoint: Mapping[str, Any],
    config: tuple[Path, str],
    data_sha256: str,
    seed: int,
    timings: Mapping[str, float],
    environment: Mapping[str, Any],
    settings: Mapping[str, Any],
    **extra: Any,
) -> dict[str, Any]:
    """The whole report: envelope, result sections, provenance.

    Args:
        sections: :func:`~advtrain.evaluation.report.report_sections`.
        kind: ``"train"`` (a training run's final evaluation) or ``"evaluation"``.
        data: Name, split and where the examples came from (``num_classes`` and the hash method
            are added).
        checkpoint: ``path`` and ``sha256`` of the evaluated weights, and where they came from.
        config: The resolved config file and its SHA-256 (:func:`write_config`).
        data_sha256: :func:`advtrain.data.base.tensors_sha256` of the evaluated examples.
        seed: The evaluation's seed.
        timings: Seconds per phase.
        environment: :func:`advtrain.report.environment`.
        settings: What the numbers depend on.
        **extra: Further top-level keys (``resume``, ``report_dir``, ...).
    """
    per_class = sections.get("per_class") or {}
    return {
        "schema_version": SCHEMA_VERSION,
        "kind": kind,
        "created": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "data": {
            **data,
            "num_classes": len(per_class.get("classes") or []),
            "hash_method": DATA_HASH_METHOD,
        },
        **sections,
        "settings": dict(settings),
        "checkpoint": dict(checkpoint),
        "config_sha256": config[1],
        "config_file": config[0].name,
        "data_sha256": data_sha256,
        "seed": seed,
        "timings_s": dict(timings),
        "environment": dict(environment),
        **extra,
    }


__all__ = ["DATA_HASH_METHOD", "assemble_report", "state_fingerprint", "write_config"]

"""On-disk state of a resumable evaluation: one small file per finished unit of work.

``advtrain-eval`` splits an evaluation into units (one attack at one eps on one batch, one
certificate on one batch, ...). Each finished unit's per-example results are written at once to
``<output_dir>/eval_state/<unit key>.pt`` (atomically: a temporary file renamed into place, so a
kill never leaves half a file) and read back with ``torch.load(weights_only=True)``. A rerun with
the same output folder and settings loads the finished units and computes only the rest; every
unit starts from the same seeds whether it runs in the first or in a later attempt, so the final
numbers are identical to an uninterrupted run.

``manifest.json`` holds the fingerprint of the settings (checkpoint and data hashes, attacks,
threat model, batching, seeds, code version). State written under other settings is never mixed
in: the rerun stops with a message naming what changed (or discards the state with
``resume=false``).

Each unit file carries a digest of its content bound to the evaluation (the fingerprint and the
unit's key): a SHA-256, or an HMAC-SHA256 when a key is configured (derived from the ledger's
signing key, :func:`advtrain.report.signing.mac_key`), which no one without the key can recompute.
A unit whose digest does not match (edited, copied from another evaluation, damaged) is discarded
and recomputed, and counted in :attr:`UnitStore.rejected` (the report says so).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

MANIFEST = "manifest.json"
_UNSAFE = re.compile(r"[^A-Za-z0-9._=+-]")


class StateMismatchError(ValueError):
    """The state folder belongs to an evaluation with other settings."""


def _feed(digest: Any, value: Any) -> None:
    """Feeds ``value`` (tensors, numbers, strings, lists, dicts) in a canonical byte form."""
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu().contiguous()
        digest.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    elif isinstance(value, Mapping):
        digest.update(f"D{len(value)}".encode())
        for k in sorted(value, key=str):
            digest.update(f"K{len(str(k))}:{k}".encode())
            _feed(digest, value[k])
    elif isinstance(value, (list, tuple)):
        digest.update(f"L{len(value)}".encode())
        for v in value:
            _feed(digest, v)
    else:
        text = json.dumps(value, sort_keys=True, default=str)
        digest.update(f"V{len(text)}:{text}".encode())


def unit_digest(fingerprint: str, key: str, value: Mapping[str, Any], mac: bytes | None) -> str:
    """The digest a unit file carries: SHA-256, or HMAC-SHA256 under ``mac``, of the evaluation's
    fingerprint, the unit's key and its content."""
    digest: Any = hmac.new(mac, digestmod=hashlib.sha256) if mac else hashlib.sha256()
    digest.update(f"{fingerprint}\0{key}\0".encode())
    _feed(digest, value)
    return str(digest.hexdigest())


class UnitStore:
    """Per-unit results of one evaluation, kept on disk.

    Args:
        root: The state folder (created if needed).
        fingerprint: Hash of everything the results depend on.
        settings: The settings behind the fingerprint (stored, to explain a mismatch).
        resume: Reuse matching state; ``False`` deletes any existing state first.
        mac: Key of the units' HMAC (``None``: a plain SHA-256 digest).

    Attributes:
        reused: Units read back and verified.
        computed: Units computed and written.
        rejected: Unit files found whose digest did not match (discarded and recomputed).

    Raises:
        StateMismatchError: If ``root`` holds state of other settings and ``resume`` is true.
    """

    def __init__(
        self,
        root: Path,
        fingerprint: str,
        settings: Mapping[str, Any],
        resume: bool = True,
        mac: bytes | None = None,
    ) -> None:
        self.root = Path(root)
        self.fingerprint = fingerprint
        self.mac = mac
        self.reused = 0
        self.computed = 0
        self.rejected = 0
        manifest = self.root / MANIFEST
        if self.root.exists() and not resume:
            shutil.rmtree(self.root)
        elif manifest.is_file():
            old = json.loads(manifest.read_text())
            if old.get("fingerprint") != fingerprint:
                before = old.get("settings") or {}
                changed = sorted(
                    k for k in set(before) | set(settings) if before.get(k) != settings.get(k)
                )
                raise StateMismatchError(
                    f"{self.root} holds the partial results of an evaluation with other settings "
                    f"(changed: {', '.join(changed) or 'code version or inputs'}); use another "
                    "output_dir, or pass resume=false to discard that state"
                )
        self.root.mkdir(parents=True, exist_ok=True)
        manifest.write_text(
            json.dumps({"fingerprint": fingerprint, "settings": settings}, indent=1, default=str)
        )

    def path(self, key: str) -> Path:
        """The file of unit ``key`` (``/`` separates folders)."""
        parts = [_UNSAFE.sub("_", p) for p in key.split("/") if p]
        return self.root.joinpath(*parts).with_suffix(".pt")

    def get(self, key: str) -> dict[str, Any] | None:
        """The stored result of unit ``key``, or ``None`` if it has not finished."""
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            stored = torch.load(path, map_location="cpu", weights_only=True)
            value, recorded = stored["value"], str(stored["digest"])
            ok = hmac.compare_digest(recorded, unit_digest(self.fingerprint, key, value, self.mac))
        except Exception:  # unreadable, or written before units carried a digest
            ok = False
        if not ok:  # edited, copied from elsewhere, or damaged: recompute it
            path.unlink(missing_ok=True)
            self.rejected += 1
            return None
        self.reused += 1
        return value  # type: ignore[no-any-return]

    def put(self, key: str, value: Mapping[str, Any]) -> None:
        """Stores unit ``key``'s result atomically."""
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        stored = {
            "value": dict(value),
            "digest": unit_digest(self.fingerprint, key, value, self.mac),
        }
        torch.save(stored, tmp)
        os.replace(tmp, path)
        self.computed += 1


__all__ = ["MANIFEST", "StateMismatchError", "UnitStore", "unit_digest"]

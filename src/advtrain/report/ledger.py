"""An append-only, hash-chained ledger of evaluations (``ledger.jsonl``) and its verification.

Every ``advtrain-eval`` run appends one JSON line. Each entry records the SHA-256 of the files
it names (``report.json``, ``report.md``, ``report.html``, the checkpoint, the resolved config),
a short summary of the numbers, and ``prev_sha256``, the hash of the entry before it; its own hash
``sha256`` covers all of that. Changing one byte of a named file, or of any entry, or removing or
reordering entries, breaks a hash that :func:`verify_ledger` recomputes, and it names the entry
and the file. (Removing the *last* entries leaves a valid shorter chain: keep the head hash that
``advtrain-eval verify`` prints, e.g. in a paper or a signed commit, to detect that.)

Entry format (one JSON object per line, UTF-8)::

    {"ledger_version": 1, "index": 0, "time": "2025-01-01T12:00:00Z",
     "prev_sha256": "000…0" (64 zeros for the first entry),
     "kind": "advtrain-eval",
     "files": {"report": {"path": "run/report.json", "sha256": "…"}, "checkpoint": {…}, …},
     "summary": {…},
     "sha256": "…"}

``sha256`` is the SHA-256 of the entry without its ``sha256`` key, serialised as canonical JSON
(sorted keys, separators ``(",", ":")``, UTF-8, no NaN). File paths are stored relative to the
ledger's folder (so a project folder can be moved as a whole) and resolved against it.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from advtrain.report.writer import sha256_file, sha256_text

LEDGER_VERSION = 1
GENESIS = "0" * 64


def canonical_json(obj: Any) -> str:
    """Sorted keys, no whitespace, UTF-8 text, NaN refused: the form that is hashed."""
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )


def entry_hash(entry: Mapping[str, Any]) -> str:
    """SHA-256 of an entry's canonical JSON without its ``sha256`` key."""
    return sha256_text(canonical_json({k: v for k, v in entry.items() if k != "sha256"}))


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[Any]:
    with open(path, "a+", encoding="utf-8") as fh:
        try:
            import fcntl

            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        except (ImportError, OSError):  # pragma: no cover - no POSIX locks (Windows)
            pass
        yield fh


def _relative(path: Path, base: Path) -> str:
    try:
        return os.path.relpath(path.resolve(), base.resolve())
    except ValueError:  # pragma: no cover - another drive on Windows
        return str(path.resolve())


def append_entry(
    ledger: str | os.PathLike[str],
    files: Mapping[str, str | os.PathLike[str]],
    summary: Mapping[str, Any] | None = None,
    kind: str = "advtrain-eval",
) -> dict[str, Any]:
    """Appends one entry naming ``files`` (label → path) to ``ledger``; returns the entry.

    The ledger (and its folder) is created if needed; appends hold an exclusive lock on the file
    so concurrent evaluations do not interleave.

    Raises:
        ValueError: If the ledger's last line is not a valid entry (fix or move the ledger first;
            run ``advtrain-eval verify``), or a named file does not exist.
    """
    path = Path(ledger)
    path.parent.mkdir(parents=True, exist_ok=True)
    base = path.parent
    records = {}
    for label, fpath in files.items():
        p = Path(fpath)
        if not p.is_file():
            raise ValueError(f"cannot record {label} in the ledger: {str(p)!r} is not a file")
        records[str(label)] = {"path": _relative(p, base), "sha256": sha256_file(p)}
    with _locked(path) as fh:
        fh.seek(0)
        lines = [ln for ln in fh.read().splitlines() if ln.strip()]
        prev, index = GENESIS, 0
        if lines:
            try:
                last = json.loads(lines[-1])
                prev, index = str(last["sha256"]), int(last["index"]) + 1
            except (ValueError, KeyError, TypeError) as exc:
                raise ValueError(
                    f"the last line of the ledger {str(path)!r} is not a valid entry ({exc}); "
                    "run `advtrain-eval verify` on it and repair or move it before appending"
                ) from exc
        entry: dict[str, Any] = {
            "ledger_version": LEDGER_VERSION,
            "index": index,
            "time": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "prev_sha256": prev,
            "kind": kind,
            "files": records,
            "summary": dict(summary or {}),
        }
        entry["sha256"] = entry_hash(entry)
        fh.seek(0, os.SEEK_END)
        fh.write(canonical_json(entry) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    return entry


@dataclass
class LedgerCheck:
    """The outcome of :func:`verify_ledger`.

    Attributes:
        entries: Entries read.
        files_checked: Files re-hashed.
        problems: One message per altered entry or file (empty: everything verifies).
        head: Hash of the last entry (publish it to detect truncation later).
    """

    entries: int = 0
    files_checked: int = 0
    problems: list[str] = field(default_factory=list)
    head: str | None = None

    @property
    def ok(self) -> bool:
        """``True`` when nothing was altered."""
        return not self.problems

    def format(self, ledger: str) -> str:
        """Human-readable result, one line per problem."""
        if self.ok:
            return (
                f"OK: {ledger}: {self.entries} entries, chain intact, {self.files_checked} files "
                f"match their recorded SHA-256. Head: {self.head}"
            )
        lines = [f"FAILED: {ledger}: {len(self.problems)} problem(s)"]
        lines += [f"  - {p}" for p in self.problems]
        return "\n".join(lines)


def verify_ledger(ledger: str | os.PathLike[str], check_files: bool = True) -> LedgerCheck:
    """Re-hashes every entry, the chain and (optionally) every file the entries name.

    Reports, by entry index and line: an entry whose content no longer matches its ``sha256``
    (edited), a ``prev_sha256`` that is not the previous entry's hash (entries removed, inserted or
    reordered), lines that are not JSON, and files that are missing or whose SHA-256 changed.
    """
    path = Path(ledger)
    result = LedgerCheck()
    if not path.is_file():
        result.problems.append(f"ledger {str(path)!r} does not exist")
        return result
    base = path.parent
    prev = GENESIS
    with open(path, encoding="utf-8") as fh:
        lines = fh.read().splitlines()
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"line {lineno}"
        try:
            entry = json.loads(line)
            if not isinstance(entry, dict):
                raise ValueError("not a JSON object")
        except ValueError as exc:
            result.problems.append(f"{where}: not a valid JSON entry ({exc}); the line was altered")
            prev = None  # type: ignore[assignment]
            continue
        result.entries += 1
        label = f"entry {entry.get('index', '?')} ({where})"
        recorded = entry.get("sha256")
        actual = entry_hash(entry)
        if recorded != actual:
            result.problems.append(
                f"{label}: content altered: its sha256 {str(recorded)[:16]}… does not match its "
                f"content ({actual[:16]}…)"
            )
        if prev is not None and entry.get("prev_sha256") != prev:
            result.problems.append(
                f"{label}: chain broken: prev_sha256 does not match the previous entry's hash "
                "(an entry before it was altered, removed, inserted or reordered)"
            )
        if entry.get("index") != result.entries - 1:
            result.problems.append(
                f"{label}: index {entry.get('index')!r} where {result.entries - 1} was expected "
                "(entries removed or reordered)"
            )
        prev = recorded if isinstance(recorded, str) else actual
        result.head = prev
        if not check_files:
            continue
        for name, rec in (entry.get("files") or {}).items():
            if not isinstance(rec, Mapping) or "path" not in rec or "sha256" not in rec:
                result.problems.append(f"{label}: file record {name!r} is malformed")
                continue
            fpath = Path(rec["path"])
            if not fpath.is_absolute():
                fpath = base / fpath
            if not fpath.is_file():
                result.problems.append(f"{label}: file {name} ({fpath}) is missing")
                continue
            result.files_checked += 1
            digest = sha256_file(fpath)
            if digest != rec["sha256"]:
                result.problems.append(
                    f"{label}: file {name} ({fpath}) was altered: sha256 {digest[:16]}… differs "
                    f"from the recorded {str(rec['sha256'])[:16]}…"
                )
    if result.entries == 0 and not result.problems:
        result.problems.append(f"ledger {str(path)!r} holds no entries")
    return result


__all__ = [
    "GENESIS",
    "LEDGER_VERSION",
    "LedgerCheck",
    "append_entry",
    "canonical_json",
    "entry_hash",
    "verify_ledger",
]

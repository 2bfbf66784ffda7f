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

``sha256`` is the SHA-256 of the entry without its ``sha256`` and ``signature`` keys, serialised
as canonical JSON (sorted keys, separators ``(",", ":")``, UTF-8, no NaN). File paths are stored
relative to the ledger's folder (so a project folder can be moved as a whole) and resolved against
it; verification reads only files under that folder (and folders it is told).

A chain alone proves consistency, not authorship: whoever can rewrite the ledger can edit an entry
and recompute every hash after it. A signed ledger (``ledger_key=``, an Ed25519 private key from
``advtrain-eval keygen``; :mod:`advtrain.report.signing`) adds ``"signature": {"key_id": …,
"ed25519": …}`` (the entry's ``sha256`` signed) to each entry, which no one without the private
key can produce; ``verify --public-key`` checks them, and ``verify --head HASH`` checks that a
head hash kept elsewhere is still in the chain (removed last entries).
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
    """SHA-256 of an entry's canonical JSON without its ``sha256`` and ``signature`` keys."""
    return sha256_text(
        canonical_json({k: v for k, v in entry.items() if k not in ("sha256", "signature")})
    )


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
    signing_key: Any = None,
) -> dict[str, Any]:
    """Appends one entry naming ``files`` (label → path) to ``ledger``; returns the entry.

    The ledger (and its folder) is created if needed; appends hold an exclusive lock on the file
    so concurrent evaluations do not interleave. With ``signing_key`` (an Ed25519 private key,
    :mod:`advtrain.report.signing`) the entry carries ``signature``: its ``sha256`` signed.

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
        if signing_key is not None:
            from advtrain.report.signing import key_id, sign

            entry["signature"] = {
                "key_id": key_id(signing_key.public_key()),
                "ed25519": sign(signing_key, entry["sha256"].encode()),
            }
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
        head: Hash of the last entry (keep it elsewhere to detect truncation later).
        signed: Entries whose signature was verified against the public key.
        outside: Files named outside the ledger's folder (and the allowed roots): not checked.
        proof: ``"chain"`` (no key, no head: consistency only), ``"head"``, ``"signatures"`` or
            ``"signatures+head"``: what the verification rests on.
    """

    entries: int = 0
    files_checked: int = 0
    problems: list[str] = field(default_factory=list)
    head: str | None = None
    signed: int = 0
    outside: int = 0
    proof: str = "chain"

    @property
    def ok(self) -> bool:
        """``True`` when nothing was altered."""
        return not self.problems

    def format(self, ledger: str) -> str:
        """Human-readable result, one line per problem, and what the result proves."""
        if not self.ok:
            lines = [f"FAILED: {ledger}: {len(self.problems)} problem(s)"]
            return "\n".join(lines + [f"  - {p}" for p in self.problems])
        lines = [
            f"OK: {ledger}: {self.entries} entries, chain intact, {self.files_checked} files "
            f"match their recorded SHA-256. Head: {self.head}"
        ]
        if self.outside:
            lines.append(
                f"  {self.outside} file(s) named outside the ledger's folder were not checked "
                "(allow their folder with --files-root DIR)"
            )
        if self.proof.startswith("signatures"):
            lines.append(f"  all {self.signed} entries carry valid signatures of the given key")
        if self.proof == "chain":
            lines.append(
                "  unsigned and no kept head given: this shows the entries and files are "
                "consistent with each other, not who wrote them; anyone who can rewrite the "
                "ledger can rebuild the chain or drop its last entries. Verify signed entries "
                "with --public-key KEY.pub (advtrain-eval keygen; ledger_key=) and keep the head "
                "hash elsewhere (--head HASH)"
            )
        elif "head" not in self.proof:
            lines.append(
                "  keep the head hash elsewhere and pass --head: signatures alone do "
                "not reveal removed last entries"
            )
        return "\n".join(lines)


def _parse(line: str) -> dict[str, Any]:
    """One ledger line as an entry dict (NaN and Infinity refused)."""

    def refuse(name: str) -> Any:
        raise ValueError(f"{name} is not valid in a ledger")

    entry = json.loads(line, parse_constant=refuse)
    if not isinstance(entry, dict):
        raise ValueError("not a JSON object")
    if not isinstance(entry.get("files", {}), Mapping):
        raise ValueError("'files' is not an object")
    if not isinstance(entry.get("summary", {}), Mapping):
        raise ValueError("'summary' is not an object")
    return entry


def _inside(path: Path, roots: list[Path]) -> bool:
    resolved = path.resolve()
    return any(resolved == root or root in resolved.parents for root in roots)


def _check_files(
    entry: Mapping[str, Any], label: str, base: Path, roots: list[Path], result: LedgerCheck
) -> None:
    for name, rec in (entry.get("files") or {}).items():
        if not isinstance(rec, Mapping) or not isinstance(rec.get("path"), str):
            result.problems.append(f"{label}: file record {name!r} is malformed")
            continue
        fpath = Path(rec["path"])
        if not fpath.is_absolute():
            fpath = base / fpath
        if not _inside(fpath, roots):  # nothing is said about files it was not asked to check
            result.outside += 1
            continue
        if not fpath.is_file():
            result.problems.append(f"{label}: file {name} ({fpath}) is missing")
            continue
        result.files_checked += 1
        digest = sha256_file(fpath)
        if digest != rec.get("sha256"):
            result.problems.append(
                f"{label}: file {name} ({fpath}) was altered: sha256 {digest[:16]}… differs "
                f"from the recorded {str(rec.get('sha256'))[:16]}…"
            )


def _check_signature(
    entry: Mapping[str, Any],
    actual: str,
    label: str,
    public_key: Any,
    expected_id: str,
    result: LedgerCheck,
) -> None:
    """Checks ``entry``'s signature (``actual``: its recomputed hash; ``expected_id``: the
    public key's id)."""
    from advtrain.report.signing import verify_signature

    sig = entry.get("signature")
    if not isinstance(sig, Mapping) or not isinstance(sig.get("ed25519"), str):
        result.problems.append(f"{label}: not signed (the given key requires every entry signed)")
        return
    if sig.get("key_id") != expected_id:
        result.problems.append(f"{label}: signed by another key ({str(sig.get('key_id'))[:16]}…)")
        return
    if actual != entry.get("sha256") or not verify_signature(
        public_key, actual.encode(), sig["ed25519"]
    ):
        result.problems.append(f"{label}: invalid signature: the entry was forged or altered")
        return
    result.signed += 1


def _check_links(
    entry: Mapping[str, Any], actual: str, prev: str | None, label: str, result: LedgerCheck
) -> None:
    """The entry's own hash, its link to the previous entry, and its index."""
    recorded = entry.get("sha256")
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


def verify_ledger(
    ledger: str | os.PathLike[str],
    check_files: bool = True,
    public_key: Any = None,
    head: str | None = None,
    files_roots: list[str | os.PathLike[str]] | None = None,
) -> LedgerCheck:
    """Re-hashes every entry, the chain and (optionally) the files the entries name.

    Reports, by entry index and line: an entry whose content no longer matches its ``sha256``
    (edited), a ``prev_sha256`` that is not the previous entry's hash (entries removed, inserted or
    reordered), lines that are not valid entries, files that are missing or whose SHA-256 changed;
    with ``public_key`` (an Ed25519 public key), entries without a valid signature of it; with
    ``head``, a chain that does not contain the kept head (truncated or rebuilt). Only files under
    the ledger's folder (and ``files_roots``) are read: a path outside is counted, never opened.
    """
    path = Path(ledger)
    result = LedgerCheck()
    if not path.is_file():
        result.problems.append(f"ledger {str(path)!r} does not exist")
        return result
    base = path.parent
    roots = [base.resolve(), *[Path(r).resolve() for r in files_roots or []]]
    expected_id = ""
    if public_key is not None:
        from advtrain.report.signing import key_id

        expected_id = key_id(public_key)
    prev: str | None = GENESIS
    hashes: list[str] = []
    with open(path, encoding="utf-8") as fh:
        lines = fh.read().splitlines()
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            entry = _parse(line)
            actual = entry_hash(entry)
        except (ValueError, TypeError) as exc:
            result.problems.append(
                f"line {lineno}: not a valid entry ({exc}); the line was altered"
            )
            prev = None
            continue
        result.entries += 1
        label = f"entry {entry.get('index', '?')} (line {lineno})"
        recorded = entry.get("sha256")
        _check_links(entry, actual, prev, label, result)
        prev = recorded if isinstance(recorded, str) else actual
        hashes.append(prev)
        result.head = prev
        if public_key is not None:
            _check_signature(entry, actual, label, public_key, expected_id, result)
        if check_files:
            _check_files(entry, label, base, roots, result)
    if result.entries == 0 and not result.problems:
        result.problems.append(f"ledger {str(path)!r} holds no entries")
    if head is not None and head not in hashes:
        result.problems.append(
            f"the kept head {head[:16]}… is not in this ledger (head now: "
            f"{str(result.head)[:16]}…): its last entries were removed or the chain was rebuilt"
        )
    result.proof = (
        "+".join(
            p
            for p, on in (("signatures", public_key is not None), ("head", head is not None))
            if on
        )
        or "chain"
    )
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

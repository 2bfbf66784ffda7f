"""Ed25519 keys for the evaluation ledger: entries a forger cannot rebuild.

A hash chain proves that a ledger and the files it names agree with each other; it does not prove
who wrote them: anyone who can rewrite the file can edit an entry and recompute every hash after
it. Signing each entry with a private key that only the evaluator holds closes that gap: a reviewer
verifies the signatures against the evaluator's *public* key (``advtrain-eval verify LEDGER
--public-key KEY.pub``), and no edit, insertion or rebuilt chain carries valid signatures without
the private key. (Truncating the tail of a signed ledger still leaves valid signatures: keep the
head hash ``verify`` prints and check it with ``--head``.)

Ed25519 (Bernstein et al., "High-speed high-security signatures", 2012; RFC 8032) through the
``cryptography`` package. Keys are stored as PEM files: the private key PKCS#8 (created with mode
0600), the public key SubjectPublicKeyInfo. The key id is the SHA-256 of the raw 32-byte public
key. The same private key also derives the MAC key that binds a resumable evaluation's stored
units to their owner (:func:`mac_key`).
"""

from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

PRIVATE_NAME = "ledger_ed25519.pem"
PUBLIC_NAME = "ledger_ed25519.pub.pem"


class LedgerKeyError(ValueError):
    """A key file that is missing, unreadable or of the wrong kind."""


def generate_keypair(folder: str | os.PathLike[str]) -> tuple[Path, Path]:
    """Creates a new Ed25519 key pair in ``folder``; returns ``(private, public)`` paths.

    Raises:
        LedgerKeyError: If a private key already exists there (never overwritten).
    """
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    private_path, public_path = out / PRIVATE_NAME, out / PUBLIC_NAME
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    try:
        fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise LedgerKeyError(
            f"{private_path} already exists; keys are never overwritten (choose another folder)"
        ) from None
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    public_path.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return private_path, public_path


def load_private_key(path: str | os.PathLike[str]) -> Ed25519PrivateKey:
    """Reads a PEM private key written by :func:`generate_keypair`.

    Raises:
        LedgerKeyError: Missing file, not a PEM key, or not an Ed25519 key.
    """
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except FileNotFoundError:
        raise LedgerKeyError(
            f"ledger key {str(path)!r} does not exist (advtrain-eval keygen DIR)"
        ) from None
    except (ValueError, TypeError) as err:
        raise LedgerKeyError(f"ledger key {str(path)!r} is not a PEM private key ({err})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise LedgerKeyError(f"ledger key {str(path)!r} is not an Ed25519 key")
    return key


def load_public_key(path: str | os.PathLike[str]) -> Ed25519PublicKey:
    """Reads a PEM public key (or derives it from a private key file).

    Raises:
        LedgerKeyError: Missing file, or not an Ed25519 key.
    """
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise LedgerKeyError(f"public key {str(path)!r} does not exist") from None
    if b"PRIVATE KEY" in data:
        return load_private_key(path).public_key()
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as err:
        raise LedgerKeyError(f"public key {str(path)!r} is not a PEM public key ({err})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise LedgerKeyError(f"public key {str(path)!r} is not an Ed25519 key")
    return key


def key_id(public: Ed25519PublicKey) -> str:
    """SHA-256 (hex) of the raw public key: names the key in entries and messages."""
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()


def sign(private: Ed25519PrivateKey, message: bytes) -> str:
    """The Ed25519 signature of ``message``, base64."""
    return base64.b64encode(private.sign(message)).decode("ascii")


def verify_signature(public: Ed25519PublicKey, message: bytes, signature: str) -> bool:
    """Whether ``signature`` (base64) is ``public``'s signature of ``message``."""
    try:
        public.verify(base64.b64decode(signature, validate=True), message)
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


def mac_key(private: Ed25519PrivateKey) -> bytes:
    """A 32-byte MAC key derived from the private key (for the evaluation state's units)."""
    raw = private.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    return hashlib.sha256(b"advtrain eval-state MAC v1\0" + raw).digest()


__all__ = [
    "PRIVATE_NAME",
    "PUBLIC_NAME",
    "LedgerKeyError",
    "generate_keypair",
    "key_id",
    "load_private_key",
    "load_public_key",
    "mac_key",
    "sign",
    "verify_signature",
]

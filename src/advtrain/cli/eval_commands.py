"""``advtrain-eval``'s subcommands: ``verify``, ``keygen``, ``compare`` and ``schema``.

Hydra owns ``advtrain-eval``'s command line, so :func:`advtrain.cli.evaluate.main` dispatches
these (recognised as the first argument) before Hydra sees it; each returns the exit code.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from advtrain.report.ledger import verify_ledger
from advtrain.report.schema import REPORT_SCHEMA, ReportSchemaError


def verify_main(argv: Sequence[str]) -> int:
    """``advtrain-eval verify LEDGER [--public-key KEY.pub] [--head HASH] [--files-root DIR]
    [--no-files]``: 0 if nothing was altered, 1 otherwise, 2 for an unusable key."""
    from advtrain.report.signing import LedgerKeyError, load_public_key

    parser = argparse.ArgumentParser(
        prog="advtrain-eval verify",
        description="Re-hash a ledger's chain and the files its entries name; with a public key, "
        "check every entry's signature; with a kept head hash, detect removed last entries.",
    )
    parser.add_argument("ledger", help="the ledger.jsonl to verify")
    parser.add_argument("--no-files", action="store_true", help="check only the hash chain")
    parser.add_argument("--public-key", help="the evaluator's Ed25519 public key (PEM)")
    parser.add_argument("--head", help="a head hash kept from an earlier verify")
    parser.add_argument(
        "--files-root",
        action="append",
        default=[],
        help="another folder whose files may be re-hashed (default: the ledger's folder only)",
    )
    args = parser.parse_args(list(argv))
    try:
        public = load_public_key(args.public_key) if args.public_key else None
    except LedgerKeyError as exc:
        print(f"advtrain-eval verify: error: {exc}", file=sys.stderr)
        return 2
    result = verify_ledger(
        args.ledger,
        check_files=not args.no_files,
        public_key=public,
        head=args.head,
        files_roots=args.files_root,
    )
    print(result.format(args.ledger), file=sys.stdout if result.ok else sys.stderr)
    return 0 if result.ok else 1


def keygen_main(argv: Sequence[str]) -> int:
    """``advtrain-eval keygen DIR``: a new Ed25519 key pair for signing ledger entries."""
    from advtrain.report.signing import LedgerKeyError, generate_keypair, key_id, load_public_key

    parser = argparse.ArgumentParser(
        prog="advtrain-eval keygen",
        description="Create an Ed25519 key pair: sign ledger entries with ledger_key=PRIVATE; "
        "reviewers verify with --public-key PUBLIC.",
    )
    parser.add_argument("folder", help="where to write the key pair (never overwritten)")
    args = parser.parse_args(list(argv))
    try:
        private, public = generate_keypair(args.folder)
    except LedgerKeyError as exc:
        print(f"advtrain-eval keygen: error: {exc}", file=sys.stderr)
        return 2
    print(f"private key: {private} (keep it secret; sign with ledger_key={private})")
    print(f"public key:  {public} (give it to reviewers: verify --public-key {public})")
    print(f"key id:      {key_id(load_public_key(public))}")
    return 0


def compare_main(argv: Sequence[str]) -> int:
    """``advtrain-eval compare A B [--out DIR]``: 0 on success, 2 for unusable reports."""
    from advtrain.report.compare import compare_files

    parser = argparse.ArgumentParser(
        prog="advtrain-eval compare",
        description="Side-by-side table of two report.json files (Markdown and CSV).",
    )
    parser.add_argument("a", help="first report.json (or its folder)")
    parser.add_argument("b", help="second report.json (or its folder)")
    parser.add_argument(
        "--out", default=".", help="folder for compare.md and compare.csv (default: .)"
    )
    args = parser.parse_args(list(argv))
    try:
        comp = compare_files(args.a, args.b, args.out)
    except (ReportSchemaError, FileNotFoundError) as exc:
        print(f"advtrain-eval compare: error: {exc}", file=sys.stderr)
        return 2
    for w in comp.warnings:
        print(f"WARNING: {w}", file=sys.stderr)
    print(comp.markdown())
    print(f"written: {Path(args.out) / 'compare.md'}, {Path(args.out) / 'compare.csv'}")
    return 0


def schema_main(argv: Sequence[str]) -> int:
    """``advtrain-eval schema``: prints the JSON schema of ``report.json``."""
    argparse.ArgumentParser(
        prog="advtrain-eval schema", description="Print the JSON schema of report.json."
    ).parse_args(list(argv))
    print(json.dumps(REPORT_SCHEMA, indent=2))
    return 0


__all__ = ["compare_main", "keygen_main", "schema_main", "verify_main"]

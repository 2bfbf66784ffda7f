"""``advtrain-eval verify-data MANIFEST [overrides]``: is this the data a model was trained on?

Recomputes the manifest of the training split of the data the overrides describe (``data=digits``,
``data.module._target_=my_pkg.MyDataModule``, ... as for ``advtrain-eval``), compares it with a
manifest a training run wrote (``checkpoints/data_manifest.json``) and lists the examples added,
removed or changed, by index and hash. Exit status: 0 identical, 1 different, 2 unusable input.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from advtrain.provenance import Difference, Manifest, ManifestError, diff, manifest_of

#: Examples listed per kind of change (the counts are always complete).
MAX_LISTED = 20


def training_split(overrides: Sequence[str]) -> tuple[Any, str]:
    """The training dataset of the data config the overrides compose, and its name."""
    from hydra.utils import instantiate

    from advtrain.cli.config import compose, register_resolvers

    register_resolvers()
    cfg = compose("eval", list(overrides), output_dir="unused")
    datamodule = instantiate(cfg.data.module, _convert_="all")
    datamodule.setup("fit")
    return datamodule.train_dataloader().dataset, str(cfg.data.get("name", ""))


def describe(change: Difference, limit: int = MAX_LISTED) -> list[str]:
    """Readable lines: the counts, then up to ``limit`` examples of each kind."""
    lines = [
        f"{change.count} examples differ: {len(change.changed)} changed, "
        f"{len(change.removed)} removed, {len(change.added)} added"
    ]
    for i, old, new in change.changed[:limit]:
        lines.append(f"  changed  #{i}: {old[:16]}… -> {new[:16]}…")
    for i, old in change.removed[:limit]:
        lines.append(f"  removed  #{i} of the manifest: {old[:16]}…")
    for i, new in change.added[:limit]:
        lines.append(f"  added    #{i} of the data: {new[:16]}…")
    longest = max(len(change.changed), len(change.removed), len(change.added))
    if longest > limit:
        lines.append(f"  (at most {limit} of each kind listed)")
    return lines


def verify_data_main(argv: Sequence[str]) -> int:
    """The subcommand; see the module docstring."""
    parser = argparse.ArgumentParser(
        prog="advtrain-eval verify-data",
        description="Recompute the training data's manifest and compare it with a run's "
        "data_manifest.json.",
    )
    parser.add_argument("manifest", help="the data_manifest.json a training run wrote")
    parser.add_argument("overrides", nargs="*", help="the data config, e.g. data=digits")
    args = parser.parse_args(list(argv))
    try:
        recorded = Manifest.load(args.manifest)
        dataset, name = training_split(args.overrides)
        current = manifest_of(dataset, name)
    except (ManifestError, TypeError, ValueError) as exc:
        print(f"advtrain-eval verify-data: error: {exc}", file=sys.stderr)
        return 2
    change = diff(recorded, current)
    if current.root == recorded.root:
        print(f"identical: {current.size} examples, Merkle root {current.root}")
        return 0
    if change.identical:  # the same examples in another order
        print(
            f"the same {current.size} examples in another order (Merkle root {current.root}, "
            f"the manifest's {recorded.root})",
            file=sys.stderr,
        )
        return 1
    print("\n".join(describe(change)), file=sys.stderr)
    return 1


__all__ = ["MAX_LISTED", "describe", "training_split", "verify_data_main"]

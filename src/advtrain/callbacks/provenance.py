"""``DataProvenance``: which data trained this model, recorded where the model goes.

At the start of training the callback hashes the training dataset (the training data loader's
``dataset``, one example at a time: :func:`advtrain.provenance.manifest_of`), writes the manifest
next to the checkpoints (``data_manifest.json``) and keeps the per-example hashes and the Merkle
root in its checkpoint state. A run resumed from a checkpoint on data whose root differs is
refused, with how many examples were added, removed or changed.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from advtrain.lit.adapter import Callback, MisconfigurationException
from advtrain.provenance import Manifest, diff, manifest_of

if TYPE_CHECKING:
    from lightning.pytorch import LightningModule, Trainer

MANIFEST_NAME = "data_manifest.json"


def train_dataset(trainer: Trainer) -> Any:
    """The dataset of the Trainer's (first) training data loader."""
    loader: Any = trainer.train_dataloader
    if isinstance(loader, (list, tuple)):
        loader = loader[0] if loader else None
    elif isinstance(loader, dict):
        loader = next(iter(loader.values()), None)
    dataset = getattr(loader, "dataset", None)
    if dataset is None:
        raise MisconfigurationException(
            "DataProvenance needs a training DataLoader over a map-style dataset (len and "
            f"dataset[i]); got {type(loader).__name__}"
        )
    return dataset


def _first(dataset: Any) -> list[Any]:
    """The dataset's first example, read now, as a one-example dataset."""
    return [dataset[0]]


def _check_ranks_agree(trainer: Trainer, root: str) -> None:
    """Under DDP every rank hashes the whole dataset: their roots must agree (a rank that reads
    other files, or another split, would train on data the manifest does not name)."""
    if trainer.world_size <= 1:
        return
    mine = torch.tensor([int(root[i : i + 8], 16) for i in range(0, 64, 8)], dtype=torch.int64)
    roots = trainer.strategy.all_gather(mine.to(trainer.strategy.root_device))
    if not bool((roots == roots[0]).all()):
        raise MisconfigurationException(
            "DataProvenance: the ranks of this run see different training data (their manifests' "
            "Merkle roots differ); make every rank build the same dataset"
        )


def _packed(hashes: list[str]) -> torch.Tensor:
    """The hex digests as an ``(n, 32)`` uint8 tensor (what the checkpoint stores)."""
    raw = b"".join(bytes.fromhex(h) for h in hashes)
    return torch.frombuffer(bytearray(raw), dtype=torch.uint8).view(-1, 32).clone()


def _unpacked(table: torch.Tensor) -> list[str]:
    return [bytes(row.tolist()).hex() for row in table]


class DataProvenance(Callback):
    """Hashes the training data at the start of ``fit``; see the module docstring.

    The examples are hashed as the dataset returns them (after its transforms). Random
    augmentations would give other hashes on every read: the callback checks that the first
    example reads the same twice and otherwise asks for ``dataset=`` (the same data without the
    random transforms).

    Args:
        manifest_path: Where to write the manifest; ``None``: ``data_manifest.json`` in the
            first ``ModelCheckpoint``'s folder, else in the Trainer's ``default_root_dir``
            (nothing is written under ``fast_dev_run``, as Lightning writes no checkpoint).
        name: What the data is (e.g. the data config's name), recorded in the manifest.
        dataset: The dataset to hash instead of the training data loader's (e.g. the training
            split without its random augmentations).

    Attributes:
        manifest: The training data's manifest (after ``on_train_start``).
        path: Where it was written.
    """

    def __init__(
        self, manifest_path: str | None = None, name: str = "", dataset: Any = None
    ) -> None:
        super().__init__()
        self.manifest_path = manifest_path
        self.dataset = dataset
        self.name = str(name)
        self.manifest: Manifest | None = None
        self.path: Path | None = None
        self._restored: Manifest | None = None

    def _target(self, trainer: Trainer) -> Path:
        if self.manifest_path is not None:
            return Path(self.manifest_path)
        for cb in trainer.callbacks:  # type: ignore[attr-defined]
            dirpath = getattr(cb, "dirpath", None)
            if type(cb).__name__ == "ModelCheckpoint" and dirpath:
                return Path(dirpath) / MANIFEST_NAME
        return Path(trainer.default_root_dir) / MANIFEST_NAME

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        dataset = self.dataset if self.dataset is not None else train_dataset(trainer)
        if len(dataset) and manifest_of(_first(dataset)).root != manifest_of(_first(dataset)).root:
            raise MisconfigurationException(
                "DataProvenance: the training dataset returns another tensor each time its "
                "first example is read (random augmentations), so its hashes could not identify "
                "the data; pass DataProvenance(dataset=...) the same split without the random "
                "transforms"
            )
        manifest = manifest_of(dataset, self.name)
        _check_ranks_agree(trainer, manifest.root)
        restored = self._restored
        if restored is not None and restored.root != manifest.root:
            change = diff(restored, manifest)
            raise MisconfigurationException(
                f"DataProvenance: this run resumes a checkpoint trained on other data: "
                f"{change.count} examples differ ({len(change.changed)} changed, "
                f"{len(change.removed)} removed, {len(change.added)} added; the checkpoint's data "
                f"had {restored.size} examples, root {restored.root[:16]}…, this data "
                f"{manifest.size}, root {manifest.root[:16]}…). Resume on the data it was "
                "trained on, or start a new run."
            )
        self.manifest = manifest
        # fast_dev_run writes no checkpoint: no manifest next to them either
        self.path = None if trainer.fast_dev_run else self._target(trainer)
        if self.path is not None and trainer.is_global_zero:
            manifest.save(self.path)

    def summary(self) -> dict[str, Any] | None:
        """The manifest's summary and file (what a report records), or ``None`` before fit."""
        if self.manifest is None:
            return None
        path = None if self.path is None else str(self.path)
        return {**self.manifest.summary(), "manifest": path}

    def state_dict(self) -> dict[str, Any]:
        manifest = self.manifest or self._restored
        if manifest is None:
            return {}
        return {
            "merkle_root": manifest.root,
            "size": manifest.size,
            "class_counts": dict(manifest.class_counts),
            "name": manifest.name,
            "hashes": _packed(manifest.hashes),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not state_dict or "hashes" not in state_dict:
            return
        hashes = _unpacked(state_dict["hashes"])
        counts = {int(k): int(v) for k, v in dict(state_dict.get("class_counts", {})).items()}
        self._restored = Manifest(hashes, counts, str(state_dict.get("name", "")))


__all__ = ["MANIFEST_NAME", "DataProvenance", "train_dataset"]

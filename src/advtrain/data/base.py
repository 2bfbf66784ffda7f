"""Shared plumbing for advtrain's data modules: seeded resumable shuffling and data hashing.

The data modules are the Lightning edge of :mod:`advtrain.data`; the tensors and datasets they
wrap are plain PyTorch and can be used without Lightning.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sized

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from advtrain.attacks.base import check_positive_int
from advtrain.data.resumable import ResumableDataLoader
from advtrain.lit.adapter import LightningDataModule


class EpochSeededSampler(Sampler[int]):
    """A random permutation per epoch drawn from ``seed + epoch``.

    Lightning calls :meth:`set_epoch` at the start of every epoch, so the order of epoch ``e`` is
    the same whether the run is uninterrupted or resumed from a checkpoint (torch's global RNG,
    which a plain ``shuffle=True`` loader uses, is not restored on resume).
    """

    def __init__(self, data_source: Sized, seed: int = 0) -> None:
        self.data_source = data_source
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Selects the permutation of ``epoch``."""
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[int]:
        gen = torch.Generator()
        gen.manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(len(self.data_source), generator=gen).tolist())

    def __len__(self) -> int:
        return len(self.data_source)


def dataset_tensors(dataset: Dataset, limit: int | None = None) -> tuple[Tensor, Tensor]:
    """Stacks a map-style dataset of ``(x, y)`` pairs into two tensors, in index order."""
    n = len(dataset)  # type: ignore[arg-type]
    if limit is not None:
        n = min(n, int(limit))
    xs, ys = zip(*(dataset[i] for i in range(n)), strict=True)
    x = torch.stack([torch.as_tensor(v) for v in xs])
    y = torch.as_tensor([int(v) for v in ys], dtype=torch.long)
    return x, y


def tensors_sha256(*tensors: Tensor) -> str:
    """SHA-256 of tensors in a canonical form.

    Canonical form: for each tensor in order, its dtype name, its shape, then its values as
    contiguous little-endian bytes on the CPU. The same data in the same order gives the same
    hash on any machine.
    """
    digest = hashlib.sha256()
    for t in tensors:
        t = t.detach().cpu().contiguous()
        digest.update(str(t.dtype).encode())
        digest.update(str(tuple(t.shape)).encode())
        digest.update(t.numpy().astype(t.numpy().dtype.newbyteorder("<")).tobytes())
    return digest.hexdigest()


class ClassificationDataModule(LightningDataModule):
    """A LightningDataModule of ``(x, y)`` image-classification data with train/val/test sets.

    Subclasses fill :attr:`train_set`, :attr:`val_set` and :attr:`test_set` in :meth:`setup` and
    declare :attr:`input_shape`, :attr:`num_classes`, :attr:`bounds` and :attr:`name`.
    """

    input_shape: tuple[int, int, int] = (1, 8, 8)
    num_classes: int = 10
    bounds: tuple[float, float] = (0.0, 1.0)
    name: str = "data"

    def __init__(
        self,
        batch_size: int = 64,
        eval_batch_size: int | None = None,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        self.batch_size = check_positive_int(batch_size, "batch_size")
        self.eval_batch_size = check_positive_int(
            eval_batch_size if eval_batch_size is not None else 4 * self.batch_size,
            "eval_batch_size",
        )
        self.seed = int(seed)
        self.num_workers = check_positive_int(num_workers, "num_workers", minimum=0)
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.test_set: Dataset | None = None

    def _ensure_setup(self) -> None:
        if self.train_set is None or self.test_set is None:
            self.setup(None)

    def _train_sampler(self) -> Sampler:
        """The training sampler (subclasses that augment draw their random transforms here)."""
        return EpochSeededSampler(self.train_set, self.seed)  # type: ignore[arg-type]

    def train_dataloader(self) -> DataLoader:
        self._ensure_setup()
        return ResumableDataLoader(
            self.train_set,  # type: ignore[arg-type]
            batch_size=self.batch_size,
            sampler=self._train_sampler(),
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            batches_done=self._train_batches_done,
        )

    def _train_batches_done(self) -> int:
        """Batches of the current epoch that training has processed (Lightning's counter)."""
        trainer = self.trainer
        if trainer is None:
            return 0
        return int(trainer.fit_loop.epoch_loop.batch_progress.current.processed)

    def _eval_loader(self, dataset: Dataset | None) -> DataLoader:
        return DataLoader(
            dataset,  # type: ignore[arg-type]
            batch_size=self.eval_batch_size,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def val_dataloader(self) -> DataLoader:
        self._ensure_setup()
        return self._eval_loader(self.val_set)

    def test_dataloader(self) -> DataLoader:
        self._ensure_setup()
        return self._eval_loader(self.test_set)

    def test_tensors(self, limit: int | None = None) -> tuple[Tensor, Tensor]:
        """The test split as ``(x, y)`` tensors, in index order (the canonical order hashed)."""
        self._ensure_setup()
        return dataset_tensors(self.test_set, limit)  # type: ignore[arg-type]

"""Plain-PyTorch data plumbing: seeded resumable shuffling and data hashing.

The Lightning data modules built on these (:mod:`advtrain.data.datamodules`) are the edge of
:mod:`advtrain.data`; everything here works without Lightning.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sized
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset, Sampler

from advtrain.lazy import lazy_attribute


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


def __getattr__(name: str) -> Any:
    # The Lightning data module, importable from here as before (imported on first use).
    return lazy_attribute(__name__, name, {"ClassificationDataModule": "advtrain.data.datamodules"})


__all__ = ["EpochSeededSampler", "dataset_tensors", "tensors_sha256"]

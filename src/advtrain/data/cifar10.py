"""CIFAR-10 (Krizhevsky 2009) through torchvision: 32×32 colour images in [0, 1], 10 classes.

50,000 training and 10,000 test images. ``val_size`` training images (1,000 in the packaged
config, as Rice, Wong & Kolter 2020 use to pick the best robust checkpoint) are held out,
stratified and seeded; the test split is the official one. With ``augment`` the training images
(only) get the standard augmentation of the robustness literature: a random 32×32 crop of the
image zero-padded by 4 pixels and a random horizontal flip (Madry et al. 2018; Zhang et al. 2019;
Rice et al. 2020), drawn reproducibly per epoch (:class:`advtrain.data.vision.AugmentingSampler`).
See :mod:`advtrain.data.vision` for the shared conventions.

Files: torchvision's layout, ``<root>/cifar-10-batches-py/`` holding ``data_batch_1`` …
``data_batch_5``, ``test_batch`` and ``batches.meta`` (the extracted ``cifar-10-python.tar.gz``).
torchvision checks each against its published MD5 on every load.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from advtrain.data.vision import import_torchvision
from advtrain.data.vision_datamodule import TorchvisionDataModule

#: Zero padding of the random crop (Madry et al. 2018, Rice et al. 2020).
CROP_PADDING = 4


class CIFAR10DataModule(TorchvisionDataModule):
    """CIFAR-10 as float32 ``(3, 32, 32)`` images in [0, 1], optionally augmented for training.

    Args:
        root: Folder holding ``cifar-10-batches-py/`` (created by ``download``).
        download: Download and extract ``cifar-10-python.tar.gz`` into ``root`` when missing.
        val_size: Training images held out for validation (stratified; 0 for none).
        augment: Random crop (4-pixel zero padding) and horizontal flip on training images.
        batch_size: Training batch size.
        eval_batch_size: Validation/test batch size (default ``4 × batch_size``).
        split_seed: Seed of the validation hold-out (independent of ``seed``).
        seed: Seed of the training shuffle and augmentation (epoch ``e`` uses ``seed + e``).
        num_workers: DataLoader workers.

    Raises:
        ImportError: torchvision is not installed (``pip install "advtrain[vision]"``).
        DatasetNotFoundError: ``download`` is false and the files are missing; the message
            lists the seven expected paths.
        ValueError: ``val_size`` is negative, or (at :meth:`setup`) too large to hold out.

    Example:
        >>> dm = CIFAR10DataModule(root="data", download=True, val_size=1000)  # doctest: +SKIP
        >>> dm.setup(); len(dm.train_set), len(dm.val_set), len(dm.test_set)  # doctest: +SKIP
        (49000, 1000, 10000)
    """

    input_shape = (3, 32, 32)
    num_classes = 10
    bounds = (0.0, 1.0)
    name = "cifar10"
    torchvision_name = "CIFAR10"

    def __init__(
        self,
        root: str | os.PathLike[str] = "data",
        download: bool = False,
        val_size: int = 1000,
        augment: bool = True,
        batch_size: int = 128,
        eval_batch_size: int | None = None,
        split_seed: int = 0,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__(
            root=root,
            download=download,
            val_size=val_size,
            batch_size=batch_size,
            eval_batch_size=eval_batch_size,
            split_seed=split_seed,
            seed=seed,
            num_workers=num_workers,
        )
        if not isinstance(augment, bool):
            raise TypeError(f"augment must be true or false, got {augment!r}")
        self.augment = augment
        self._augment_padding = CROP_PADDING if augment else 0

    def _source(self) -> str:
        return f"{self.dataset_class().url} (extract it into root)"

    def _file_list(self) -> list[tuple[str, str | None]]:
        cls = self.dataset_class()
        files = [(str(n), md5) for n, md5 in [*cls.train_list, *cls.test_list]]
        return [*files, (str(cls.meta["filename"]), cls.meta.get("md5"))]

    def expected_files(self) -> list[Path]:
        """``<root>/cifar-10-batches-py/`` and the five training batches, test batch and meta."""
        folder = self.root / self.dataset_class().base_folder
        return [folder / name for name, _ in self._file_list()]

    def _failing_checksums(self) -> list[Path]:
        check = import_torchvision().datasets.utils.check_integrity
        folder = self.root / self.dataset_class().base_folder
        return [
            folder / name
            for name, md5 in self._file_list()
            if (folder / name).is_file() and not check(str(folder / name), md5)
        ]

    def _to_tensors(self, dataset: Any) -> tuple[Tensor, Tensor]:
        # torchvision keeps the images as uint8 numpy (N, H, W, C).
        x = torch.from_numpy(dataset.data).permute(0, 3, 1, 2).contiguous()
        return x, torch.as_tensor(dataset.targets, dtype=torch.long)


__all__ = ["CROP_PADDING", "CIFAR10DataModule"]

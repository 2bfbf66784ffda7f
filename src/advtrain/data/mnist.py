"""MNIST (LeCun, Bottou, Bengio & Haffner 1998) through torchvision: 28×28 grey digits in [0, 1].

60,000 training and 10,000 test images. ``val_size`` training images (5,000 in the packaged
config) are held out, stratified and seeded, for robust validation and best-checkpoint selection;
the test split is the official one. No augmentation (none is used for MNIST in the robustness
literature: Madry et al. 2018, Zhang et al. 2019, Gowal et al. 2018). See
:mod:`advtrain.data.vision` for the shared conventions.

Files: torchvision's layout, ``<root>/MNIST/raw/`` holding the four uncompressed idx files
``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte`` and
``t10k-labels-idx1-ubyte`` (the ``.gz`` files of the mirrors, gunzipped). ``download=True``
fetches and extracts them; with the ``.gz`` files already in that folder it extracts them without
network (torchvision checks their MD5 first).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from torch import Tensor

from advtrain.data.vision_datamodule import TorchvisionDataModule


class MNISTDataModule(TorchvisionDataModule):
    """MNIST as float32 ``(1, 28, 28)`` images in [0, 1] with a stratified validation hold-out.

    Args:
        root: Folder holding ``MNIST/raw/`` (created by ``download``).
        download: Download the files into ``root`` when they are missing.
        val_size: Training images held out for validation (stratified; 0 for none).
        batch_size: Training batch size.
        eval_batch_size: Validation/test batch size (default ``4 × batch_size``).
        split_seed: Seed of the validation hold-out (independent of ``seed``).
        seed: Seed of the training shuffle (epoch ``e`` uses ``seed + e``; resumable).
        num_workers: DataLoader workers.

    Raises:
        ImportError: torchvision is not installed (``pip install "advtrain[vision]"``).
        DatasetNotFoundError: ``download`` is false and the files are missing; the message
            lists the four expected paths.
        ValueError: ``val_size`` is negative, or (at :meth:`setup`) too large to hold out.

    Example:
        >>> dm = MNISTDataModule(root="data", download=True, val_size=5000)  # doctest: +SKIP
        >>> dm.setup(); len(dm.train_set), len(dm.val_set), len(dm.test_set)  # doctest: +SKIP
        (55000, 5000, 10000)
    """

    input_shape = (1, 28, 28)
    num_classes = 10
    bounds = (0.0, 1.0)
    name = "mnist"
    torchvision_name = "MNIST"

    def __init__(
        self,
        root: str | os.PathLike[str] = "data",
        download: bool = False,
        val_size: int = 5000,
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

    def _source(self) -> str:
        cls = self.dataset_class()
        return " or ".join(cls.mirrors) + " (gunzip the .gz files)"

    def _folder(self) -> Path:
        # torchvision reads <root>/<class name>/raw.
        return self.root / self.dataset_class().__name__

    def expected_files(self) -> list[Path]:
        """``<root>/MNIST/raw/`` and the four uncompressed idx files torchvision reads."""
        raw = self._folder() / "raw"
        names = (os.path.basename(url) for url, _ in self.dataset_class().resources)
        return [raw / (n[: -len(".gz")] if n.endswith(".gz") else n) for n in names]

    def _has_files(self) -> bool:
        # torchvision also reads the processed files that versions before 0.9 wrote.
        processed = self._folder() / "processed"
        legacy = all((processed / f).is_file() for f in ("training.pt", "test.pt"))
        return legacy or super()._has_files()

    def _to_tensors(self, dataset: Any) -> tuple[Tensor, Tensor]:
        return dataset.data.unsqueeze(1), dataset.targets


__all__ = ["MNISTDataModule"]

"""The Lightning edge of the torchvision data sets: :class:`TorchvisionDataModule`.

The base of :class:`~advtrain.data.MNISTDataModule` and :class:`~advtrain.data.CIFAR10DataModule`:
it finds, downloads and checks the files, then serves the plain-PyTorch data sets of
:mod:`advtrain.data.vision` (whose docstring states the conventions: hold-out, shuffling,
augmentation, data hash) through :class:`~advtrain.data.datamodules.ClassificationDataModule`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Sampler

from advtrain.data.datamodules import ClassificationDataModule
from advtrain.data.vision import (
    AugmentingSampler,
    DatasetNotFoundError,
    ImageTensorDataset,
    import_torchvision,
    stratified_holdout,
)
from advtrain.validation import check_positive_int


class TorchvisionDataModule(ClassificationDataModule):
    """Base of the torchvision data modules (:class:`~advtrain.data.MNISTDataModule`, CIFAR-10).

    Subclasses name the torchvision class (:attr:`torchvision_name`), list the files it reads
    (:meth:`expected_files`) and turn a loaded torchvision data set into ``uint8`` tensors
    (:meth:`_to_tensors`). See the module docstring for the conventions.

    Args:
        root: Folder holding the data set (torchvision's layout; see :meth:`expected_files`).
        download: Download the files into ``root`` when they are missing (in
            :meth:`prepare_data`, on one process per node).
        val_size: Training images held out for validation (stratified, seeded by ``split_seed``).
        batch_size: Training batch size.
        eval_batch_size: Validation/test batch size (default ``4 × batch_size``).
        split_seed: Seed of the validation hold-out.
        seed: Seed of the training shuffle (and augmentation): epoch ``e`` uses ``seed + e``.
        num_workers: DataLoader workers.

    Raises:
        ImportError: torchvision is not installed (names the ``pip install`` to run).
        DatasetNotFoundError: ``download`` is false and files are missing (names each one).
        ValueError: ``val_size`` is negative (or, at :meth:`setup`, too large).
    """

    torchvision_name: str = ""
    #: Zero padding of the random crop when augmenting (0: no augmentation).
    _augment_padding: int = 0

    def __init__(
        self,
        root: str | os.PathLike[str] = "data",
        download: bool = False,
        val_size: int = 0,
        batch_size: int = 128,
        eval_batch_size: int | None = None,
        split_seed: int = 0,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__(
            batch_size=batch_size,
            eval_batch_size=eval_batch_size,
            seed=seed,
            num_workers=num_workers,
        )
        import_torchvision(type(self).__name__)
        if isinstance(root, bytes) or not isinstance(root, (str, os.PathLike)) or not str(root):
            raise TypeError(f"root must be a folder path (str), got {root!r}")
        self.root = Path(root).expanduser()
        if not isinstance(download, bool):
            raise TypeError(f"download must be true or false, got {download!r}")
        self.download = download
        self.val_size = check_positive_int(val_size, "val_size", minimum=0)
        self.split_seed = int(split_seed)
        self.classes: list[str] = []
        if not self.download:
            self._check_files()

    # --- what a subclass provides -------------------------------------------------------------

    def dataset_class(self) -> type:
        """The torchvision data set class that reads (and downloads) the files."""
        return getattr(import_torchvision(type(self).__name__).datasets, self.torchvision_name)

    def expected_files(self) -> list[Path]:
        """Every file the data set is read from, by its full path under :attr:`root`."""
        raise NotImplementedError

    def _to_tensors(self, dataset: Any) -> tuple[Tensor, Tensor]:
        """A loaded torchvision data set as ``uint8`` images ``(N, C, H, W)`` and labels."""
        raise NotImplementedError

    def _source(self) -> str:
        """Where the files come from, for the error messages."""
        raise NotImplementedError

    def _has_files(self) -> bool:
        return all(p.is_file() for p in self.expected_files())

    # --- checks and messages ------------------------------------------------------------------

    def _files_message(self, problem: str, cause: str = "") -> str:
        files = "\n".join(f"  {p}" for p in self.expected_files())
        get = (
            "Without network access here, download them on another machine from "
            f"{self._source()} and put them at exactly these paths."
            if self.download
            else f"Get them from {self._source()} and put them at exactly these paths, or set "
            "download=True (data.module.download=true) to fetch them."
        )
        return (
            f"{self.torchvision_name} {problem}. Expected these files under "
            f"root={str(self.root.resolve())!r}:\n{files}\n{get} The folder is the data "
            "module's `root` (data.module.root=..., or the ADVTRAIN_DATA environment variable "
            "in the packaged configs)." + (f"\nCause: {cause}" if cause else "")
        )

    def _check_files(self) -> None:
        missing = [p for p in self.expected_files() if not p.is_file()]
        if missing and not self._has_files():
            raise DatasetNotFoundError(
                self._files_message(
                    f"not found ({len(missing)} of {len(self.expected_files())} files missing: "
                    f"{', '.join(p.name for p in missing)}), and download=False"
                )
            )

    def _failing_checksums(self) -> list[Path]:
        """The present files whose checksum torchvision rejects (none checked by default)."""
        return []

    def _load(self, train: bool) -> Any:
        cls = self.dataset_class()
        try:
            return cls(root=str(self.root), train=train, download=False)
        except Exception as err:  # "Dataset not found or corrupted", or a malformed file
            bad = self._failing_checksums()
            problem = (
                f"files fail torchvision's MD5 check: {', '.join(p.name for p in bad)} (truncated "
                "or not the published files; delete them and download again)"
                if bad
                else f"files are missing or unreadable (torchvision: {type(err).__name__}: {err})"
            )
            raise DatasetNotFoundError(self._files_message(problem)) from err

    # --- Lightning hooks ----------------------------------------------------------------------

    def prepare_data(self) -> None:
        """Downloads the files into :attr:`root` if they are missing and ``download`` is set.

        Raises:
            DatasetNotFoundError: The files are missing and ``download`` is false, or the download
                failed (no network, a checksum mismatch...): the message says where to put them.
        """
        if self._has_files():
            return
        if not self.download:
            self._check_files()
            return
        cls = self.dataset_class()
        try:
            cls(root=str(self.root), train=True, download=True)
        except Exception as err:
            raise DatasetNotFoundError(
                self._files_message(
                    "is missing and could not be downloaded", f"{type(err).__name__}: {err}".strip()
                )
            ) from err

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        if not self._has_files():
            self.prepare_data()  # plain use without a Trainer; a no-op after Lightning's call
        train = self._load(train=True)
        test = self._load(train=False)
        self.classes = [str(c) for c in getattr(train, "classes", [])]
        x_train, y_train = self._checked(*self._to_tensors(train), "training")
        x_test, y_test = self._checked(*self._to_tensors(test), "test")
        tr, va = stratified_holdout(y_train, self.val_size, self.split_seed)
        pad = self._augment_padding
        self.train_set = ImageTensorDataset(x_train[tr], y_train[tr], padding=pad)
        self.val_set = ImageTensorDataset(x_train[va], y_train[va])
        self.test_set = ImageTensorDataset(x_test, y_test)

    def _checked(self, x: Tensor, y: Tensor, split: str) -> tuple[Tensor, Tensor]:
        if tuple(x.shape[1:]) != tuple(self.input_shape) or len(y) != len(x):
            raise DatasetNotFoundError(
                self._files_message(
                    f"{split} files hold images of shape {tuple(x.shape)} with {len(y)} labels, "
                    f"expected (N, {', '.join(map(str, self.input_shape))}) with N labels"
                )
            )
        if len(y) and not (int(y.min()) >= 0 and int(y.max()) < self.num_classes):
            raise DatasetNotFoundError(
                self._files_message(
                    f"{split} labels must be in [0, {self.num_classes}), found "
                    f"[{int(y.min())}, {int(y.max())}]"
                )
            )
        return x, y.to(torch.long)

    def _train_sampler(self) -> Sampler:
        if not self._augment_padding:
            return super()._train_sampler()
        return AugmentingSampler(self.train_set, self.seed, self._augment_padding)

    def test_tensors(self, limit: int | None = None) -> tuple[Tensor, Tensor]:
        """The official test set as new ``(x, y)`` tensors in file order (the first ``limit``)."""
        self._ensure_setup()
        return self.test_set.tensors(limit)  # type: ignore[union-attr]


__all__ = ["TorchvisionDataModule"]

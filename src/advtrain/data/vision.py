"""Plumbing shared by the torchvision data modules (MNIST, CIFAR-10): loading, hold-out, augmenting.

torchvision (the ``vision`` extra) reads the files in their published formats and downloads them;
everything after that is plain tensors. Both data sets are small, so the whole of each split is
read once into a ``uint8`` tensor (47 MB for MNIST's training images, 147 MB for CIFAR-10's) and
converted to float32 in ``[0, 1]`` per example; no PIL image is ever built.

* **Validation hold-out**: ``val_size`` training images, stratified by class and seeded by
  ``split_seed`` (independent of the run's ``seed``, so every seed of a sweep selects its
  checkpoint on the same images; Rice, Wong & Kolter, "Overfitting in adversarially robust deep
  learning", ICML 2020, hold out 1,000 CIFAR-10 training images this way). The test split is the
  official test set, in file order.
* **Shuffling**: epoch ``e`` is the permutation of ``seed + e``
  (:class:`~advtrain.data.base.EpochSeededSampler`), so a resumed run sees the same order.
* **Augmentation** (CIFAR-10's ``augment``): the standard random crop of the image zero-padded by
  4 pixels and a horizontal flip with probability 1/2 (He et al. 2016; Madry et al. 2018; Rice et
  al. 2020), on training images only. The crop offsets and flips are drawn by the sampler from the
  same per-epoch generator as the permutation (:class:`AugmentingSampler`), not inside the
  DataLoader workers, so they are the same for any ``num_workers`` and after a resume.
* **Data hash**: the report's ``data_sha256`` is :func:`~advtrain.data.base.tensors_sha256` of the
  evaluated test examples (:meth:`TorchvisionDataModule.test_tensors`), at most 10,000 images;
  the training images are never hashed per run. Their integrity is torchvision's: CIFAR-10's
  batches are checked against their published MD5 on every load, MNIST's archives on download
  (torchvision does not check the extracted MNIST files).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any, NamedTuple

import torch
from torch import Tensor
from torch.utils.data import Dataset, Sampler

from advtrain.attacks.base import check_positive_int
from advtrain.data.base import ClassificationDataModule, EpochSeededSampler

#: The torch/torchvision pair the ``vision`` extra is tested with (a torchvision wheel requires
#: the exact torch it was built for; installing another one replaces your torch).
TORCH_PIN = "2.14.1"
TORCHVISION_PIN = "0.29.1"


def import_torchvision(user: str = "this data module") -> ModuleType:
    """``import torchvision``, or an :class:`ImportError` saying how to install it.

    Args:
        user: What needs torchvision, for the message.
    """
    try:
        import torchvision
        import torchvision.datasets
    except ImportError as err:
        raise ImportError(
            f"{user} needs torchvision, which is not installed (no module {err.name or err}). "
            "Install the vision extra: "
            f'pip install "advtrain[vision]" — or the tested pair directly: '
            f"pip install torch=={TORCH_PIN} torchvision=={TORCHVISION_PIN}"
        ) from err
    except (RuntimeError, OSError) as err:  # a torchvision built for another torch
        raise ImportError(
            f"{user} needs torchvision, but it fails to import ({err}); its torch probably does "
            f"not match. Install the tested pair: pip install torch=={TORCH_PIN} "
            f"torchvision=={TORCHVISION_PIN}"
        ) from err
    return torchvision


class DatasetNotFoundError(FileNotFoundError):
    """The data set's files are missing or unusable and could not be downloaded.

    The message names every expected file by its full path.
    """

    def __repr__(self) -> str:
        # Hydra's instantiate reports ``repr(err)``: keep the message readable (real line
        # breaks, no escaped quotes) when a data module fails inside ``instantiate``.
        return f"{type(self).__name__}: {self}"


class AugmentDraw(NamedTuple):
    """One training draw: the example ``index``, its crop offsets and whether it is flipped."""

    index: int
    dy: int
    dx: int
    flip: bool


class AugmentingSampler(EpochSeededSampler):
    """:class:`EpochSeededSampler` that also draws each example's random crop and flip.

    Epoch ``e`` seeds one generator with ``seed + e`` and draws, in this order, the permutation
    (the same one :class:`EpochSeededSampler` yields), the crop offsets ``dy, dx`` uniform in
    ``{0, ..., 2·padding}`` and the flips (probability 1/2). It yields :class:`AugmentDraw`
    tuples, which :class:`ImageTensorDataset` turns into augmented images.

    Args:
        data_source: The training set.
        seed: The run's seed.
        padding: Zero padding on each side before the crop (4 for CIFAR-10).
    """

    def __init__(self, data_source: Any, seed: int = 0, padding: int = 4) -> None:
        super().__init__(data_source, seed)
        self.padding = check_positive_int(padding, "padding", minimum=0)

    def __iter__(self) -> Iterator[AugmentDraw]:  # type: ignore[override]
        n = len(self.data_source)
        gen = torch.Generator()
        gen.manual_seed(self.seed + self.epoch)
        order = torch.randperm(n, generator=gen).tolist()
        shifts = torch.randint(0, 2 * self.padding + 1, (n, 2), generator=gen).tolist()
        flips = (torch.rand(n, generator=gen) < 0.5).tolist()
        return iter(
            AugmentDraw(i, s[0], s[1], f) for i, s, f in zip(order, shifts, flips, strict=True)
        )


class ImageTensorDataset(Dataset):
    """Images stored as ``uint8`` ``(N, C, H, W)``, served as float32 in ``[0, 1]`` with labels.

    ``dataset[i]`` is the plain image ``i``; ``dataset[AugmentDraw(i, dy, dx, flip)]`` (what
    :class:`AugmentingSampler` yields) is image ``i`` zero-padded by ``padding`` pixels, cropped
    back to ``H × W`` at offset ``(dy, dx)`` and flipped left-right if ``flip``.

    Args:
        images: ``uint8`` tensor ``(N, C, H, W)`` (not copied; never modified).
        labels: Integer tensor ``(N,)``.
        padding: The padding the crop offsets refer to.
    """

    def __init__(self, images: Tensor, labels: Tensor, padding: int = 0) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(
                f"images must be a uint8 tensor (N, C, H, W), got {images.dtype} "
                f"{tuple(images.shape)}"
            )
        if labels.shape != (images.shape[0],):
            raise ValueError(
                f"labels must have shape ({images.shape[0]},), got {tuple(labels.shape)}"
            )
        self.images = images
        self.labels = labels.to(torch.long)
        self.padding = check_positive_int(padding, "padding", minimum=0)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, key: int | AugmentDraw) -> tuple[Tensor, Tensor]:
        if isinstance(key, AugmentDraw):
            index = key.index
            x = self.images[index].to(torch.float32).div_(255.0)
            p = self.padding
            if not (0 <= key.dy <= 2 * p and 0 <= key.dx <= 2 * p):
                raise ValueError(f"crop offsets must be in [0, {2 * p}], got {key}")
            _, h, w = x.shape
            canvas = x.new_zeros(x.shape[0], h + 2 * p, w + 2 * p)
            canvas[:, p : p + h, p : p + w] = x
            x = canvas[:, key.dy : key.dy + h, key.dx : key.dx + w]
            if key.flip:
                x = x.flip(-1)
            return x.contiguous(), self.labels[index]
        return self.images[key].to(torch.float32).div_(255.0), self.labels[key]

    def tensors(self, limit: int | None = None) -> tuple[Tensor, Tensor]:
        """The first ``limit`` (default all) examples as new ``(x, y)`` tensors, un-augmented."""
        n = len(self) if limit is None else min(len(self), int(limit))
        return self.images[:n].to(torch.float32).div_(255.0), self.labels[:n].clone()


def stratified_holdout(y: Tensor, val_size: int, seed: int) -> tuple[Tensor, Tensor]:
    """Seeded stratified split of ``range(len(y))`` into (train, held-out) index tensors.

    Both are sorted (the examples keep their file order). ``val_size`` 0 holds out nothing.

    Raises:
        ValueError: If ``val_size`` cannot be split off stratified: it must be 0, or at least the
            number of classes and at most ``len(y)`` minus the number of classes.
    """
    n = len(y)
    if val_size == 0:
        return torch.arange(n), torch.arange(0)
    n_classes = int(torch.unique(y).numel())
    if not n_classes <= val_size <= n - n_classes:
        raise ValueError(
            f"val_size={val_size} is out of range for {n} training images of {n_classes} "
            f"classes: use 0 (no validation set) or a value in [{n_classes}, {n - n_classes}] "
            "(data.module.val_size=...)"
        )
    from sklearn.model_selection import train_test_split

    train, val = train_test_split(
        torch.arange(n).numpy(), test_size=val_size, stratify=y.numpy(), random_state=seed
    )
    return torch.as_tensor(train).sort().values, torch.as_tensor(val).sort().values


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


__all__ = [
    "TORCHVISION_PIN",
    "TORCH_PIN",
    "AugmentDraw",
    "AugmentingSampler",
    "DatasetNotFoundError",
    "ImageTensorDataset",
    "TorchvisionDataModule",
    "import_torchvision",
    "stratified_holdout",
]

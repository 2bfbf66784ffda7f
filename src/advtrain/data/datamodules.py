"""The Lightning edge of :mod:`advtrain.data`: data modules over the plain-PyTorch data sets.

:class:`ClassificationDataModule` turns train/val/test data sets into Lightning's loaders, with the
seeded, resumable shuffling of :class:`~advtrain.data.base.EpochSeededSampler` and
:class:`~advtrain.data.resumable.ResumableDataLoader`; :class:`DigitsDataModule` and
:class:`SyntheticDataModule` fill it with :mod:`advtrain.data.digits` and
:mod:`advtrain.data.synthetic` tensors. The torchvision modules (MNIST, CIFAR-10) build on
:class:`~advtrain.data.vision_datamodule.TorchvisionDataModule`.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler, TensorDataset

from advtrain.data.base import EpochSeededSampler, dataset_tensors
from advtrain.data.digits import load_digits_tensors, stratified_split
from advtrain.data.resumable import ResumableDataLoader
from advtrain.data.synthetic import check_input_shape, make_synthetic
from advtrain.lit.adapter import LightningDataModule
from advtrain.validation import check_positive_int


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


class DigitsDataModule(ClassificationDataModule):
    """scikit-learn's handwritten digits, scaled to [0, 1], split stratified and seeded.

    With the default 0.7/0.1/0.2 split: 1,257 training, 180 validation and 360 test images.

    Args:
        batch_size: Training batch size.
        eval_batch_size: Batch size for validation and test (defaults to ``batch_size``·4).
        split: Fractions ``(train, val, test)``.
        split_seed: Seed of the stratified split (independent of the run's seed).
        seed: Seed of the training shuffle (epoch ``e`` uses ``seed + e``; resumable).
        num_workers: DataLoader workers.
    """

    input_shape = (1, 8, 8)
    num_classes = 10
    bounds = (0.0, 1.0)
    name = "digits"

    def __init__(
        self,
        batch_size: int = 64,
        eval_batch_size: int | None = None,
        split: tuple[float, float, float] = (0.7, 0.1, 0.2),
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
        self.split = tuple(float(f) for f in split)
        self.split_seed = int(split_seed)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        x, y = load_digits_tensors()
        tr, va, te = stratified_split(y, self.split, self.split_seed)  # type: ignore[arg-type]
        self.train_set = TensorDataset(x[tr], y[tr])
        self.val_set = TensorDataset(x[va], y[va])
        self.test_set = TensorDataset(x[te], y[te])


class SyntheticDataModule(ClassificationDataModule):
    """Seeded synthetic images of a chosen shape and number of classes (see module docstring).

    The examples are drawn once from ``data_seed`` and split in order into train, validation and
    test sets of ``split`` fractions of ``size``; the training shuffle follows ``seed`` (epoch
    ``e`` uses ``seed + e``, as every advtrain data module).

    Args:
        input_shape: ``(channels, height, width)``, e.g. ``(3, 32, 32)`` to stand in for CIFAR-10.
        num_classes: Number of classes.
        size: Total number of examples (train + val + test).
        split: Fractions ``(train, val, test)``, summing to 1, train and test > 0.
        noise: Per-pixel noise standard deviation around the class prototypes.
        data_seed: Seed of the data itself (independent of the run's ``seed``).
        batch_size: Training batch size.
        eval_batch_size: Validation/test batch size (default ``4 × batch_size``).
        seed: Seed of the training shuffle.
        num_workers: DataLoader workers.
    """

    name = "synthetic"

    def __init__(
        self,
        input_shape: Sequence[int] = (1, 8, 8),
        num_classes: int = 10,
        size: int = 1024,
        split: Sequence[float] = (0.7, 0.1, 0.2),
        noise: float = 0.3,
        data_seed: int = 0,
        batch_size: int = 64,
        eval_batch_size: int | None = None,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__(
            batch_size=batch_size,
            eval_batch_size=eval_batch_size,
            seed=seed,
            num_workers=num_workers,
        )
        self.input_shape = check_input_shape(input_shape)
        self.num_classes = check_positive_int(num_classes, "num_classes", minimum=2)
        self.size = check_positive_int(size, "size")
        fractions = tuple(float(f) for f in split)
        if (
            len(fractions) != 3
            or min(fractions) < 0
            or abs(sum(fractions) - 1.0) > 1e-6
            or fractions[0] <= 0
            or fractions[2] <= 0
        ):
            raise ValueError(
                f"split must be three fractions (train, val, test) >= 0 summing to 1, with "
                f"train and test > 0; got {list(split)}"
            )
        self.split = fractions
        n_train = round(fractions[0] * self.size)
        n_val = round(fractions[1] * self.size)
        if n_train < 1 or self.size - n_train - n_val < 1:
            raise ValueError(
                f"size={self.size} with split={list(fractions)} leaves an empty train or test "
                "set; increase size"
            )
        self._sizes = (n_train, n_val, self.size - n_train - n_val)
        self.noise = float(noise)
        self.data_seed = int(data_seed)
        if self.noise < 0:
            raise ValueError(f"noise must be >= 0, got {noise!r}")

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        x, y = make_synthetic(
            self.size, self.input_shape, self.num_classes, self.noise, self.data_seed
        )
        n_train, n_val, _ = self._sizes
        self.train_set = TensorDataset(x[:n_train], y[:n_train])
        self.val_set = TensorDataset(x[n_train : n_train + n_val], y[n_train : n_train + n_val])
        self.test_set = TensorDataset(x[n_train + n_val :], y[n_train + n_val :])


__all__ = ["ClassificationDataModule", "DigitsDataModule", "SyntheticDataModule"]

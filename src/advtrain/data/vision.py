"""Plumbing shared by the torchvision data sets (MNIST, CIFAR-10): loading, hold-out, augmenting.

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
  evaluated test examples (:meth:`ImageTensorDataset.tensors`), at most 10,000 images;
  the training images are never hashed per run. Their integrity is torchvision's: CIFAR-10's
  batches are checked against their published MD5 on every load, MNIST's archives on download
  (torchvision does not check the extracted MNIST files).

Everything here is plain PyTorch (torchvision imported on first use); the Lightning data modules
are :class:`~advtrain.data.vision_datamodule.TorchvisionDataModule` and its subclasses.
"""

from __future__ import annotations

from collections.abc import Iterator
from types import ModuleType
from typing import Any, NamedTuple

import torch
from torch import Tensor
from torch.utils.data import Dataset

from advtrain.data.base import EpochSeededSampler
from advtrain.lazy import lazy_attribute
from advtrain.validation import check_positive_int

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


def __getattr__(name: str) -> Any:
    # The Lightning data module, importable from here as before (imported on first use).
    return lazy_attribute(
        __name__, name, {"TorchvisionDataModule": "advtrain.data.vision_datamodule"}
    )


__all__ = [
    "TORCHVISION_PIN",
    "TORCH_PIN",
    "AugmentDraw",
    "AugmentingSampler",
    "DatasetNotFoundError",
    "ImageTensorDataset",
    "import_torchvision",
    "stratified_holdout",
]

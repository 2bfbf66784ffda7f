"""Synthetic image classification data of any shape: seeded, learnable, no download.

Every class ``c`` has a smooth prototype image ``m_c`` (a random low-resolution pattern in
``[0.2, 0.8]``, upsampled bilinearly to the full resolution); an example of class ``c`` is
``clip(m_c + noise·N(0, I), 0, 1)``. Classes are balanced and the whole set is a function of
``data_seed`` only, so a recipe written for MNIST (``1×28×28``) or CIFAR-10 (``3×32×32``) can be
smoke-tested end to end with ``data=synthetic data.input_shape=[3,32,32]`` — the model, the
training method and the evaluation see tensors of the recipe's shape, and a short run already
learns something (a linear classifier separates the prototypes; ``noise`` sets how hard it is).

It is not a benchmark: figures measured on it say nothing about MNIST or CIFAR-10.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import TensorDataset

from advtrain.attacks.base import check_positive_int
from advtrain.data.base import ClassificationDataModule

#: Side of the low-resolution grid each prototype is drawn on (upsampled to the image size).
PROTOTYPE_GRID = 4


def _check_shape(input_shape: Sequence[int]) -> tuple[int, int, int]:
    if isinstance(input_shape, (str, bytes)) or not isinstance(input_shape, Sequence):
        raise TypeError(f"input_shape must be (channels, height, width), got {input_shape!r}")
    if len(input_shape) != 3:
        raise ValueError(
            f"input_shape must be (channels, height, width), e.g. [3, 32, 32], got "
            f"{list(input_shape)}"
        )
    c, h, w = (check_positive_int(s, "input_shape entries") for s in input_shape)
    return c, h, w


def make_synthetic(
    n: int,
    input_shape: Sequence[int] = (1, 8, 8),
    num_classes: int = 10,
    noise: float = 0.3,
    seed: int = 0,
) -> tuple[Tensor, Tensor]:
    """Draws ``n`` balanced examples of the synthetic task (see the module docstring).

    Args:
        n: Number of examples.
        input_shape: ``(channels, height, width)``.
        num_classes: Number of classes (``>= 2``).
        noise: Standard deviation of the per-pixel Gaussian noise (``>= 0``).
        seed: Seed of the prototypes, the labels and the noise.

    Returns:
        ``(x, y)``: ``x`` float32 ``(n, C, H, W)`` in ``[0, 1]``, ``y`` int64 ``(n,)`` with every
        class ``n // num_classes`` or ``n // num_classes + 1`` times, in a seeded random order.
    """
    n = check_positive_int(n, "n")
    c, h, w = _check_shape(input_shape)
    num_classes = check_positive_int(num_classes, "num_classes", minimum=2)
    if isinstance(noise, bool) or not isinstance(noise, (int, float)) or not noise >= 0:
        raise ValueError(f"noise must be a number >= 0 (e.g. 0.3), got {noise!r}")
    gen = torch.Generator().manual_seed(int(seed))
    grid = torch.rand(num_classes, c, min(h, PROTOTYPE_GRID), min(w, PROTOTYPE_GRID), generator=gen)
    prototypes = 0.2 + 0.6 * F.interpolate(grid, size=(h, w), mode="bilinear", align_corners=False)
    y = (torch.arange(n) % num_classes)[torch.randperm(n, generator=gen)]
    x = prototypes[y] + float(noise) * torch.randn(n, c, h, w, generator=gen)
    return x.clamp_(0.0, 1.0).contiguous(), y


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
        self.input_shape = _check_shape(input_shape)
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


__all__ = ["SyntheticDataModule", "make_synthetic"]

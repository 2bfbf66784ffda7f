"""The embedded default data set: scikit-learn's bundled handwritten digits (no download ever).

1,797 grey 8×8 images of the digits 0–9 (UCI "Optical Recognition of Handwritten Digits"),
shipped inside scikit-learn. Pixels (0–16) are scaled to [0, 1]; the split into train,
validation and test is stratified and seeded, so every run sees the same examples.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.data import TensorDataset

from advtrain.data.base import ClassificationDataModule


def load_digits_tensors() -> tuple[Tensor, Tensor]:
    """All 1,797 digits as ``(x, y)``: ``x`` float32 ``(N, 1, 8, 8)`` in [0, 1], ``y`` int64."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.as_tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.as_tensor(bunch.target, dtype=torch.long)
    return x, y


def stratified_split(
    y: Tensor, fractions: tuple[float, float, float], seed: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Seeded stratified split of indices into train/val/test by ``fractions`` (summing to 1)."""
    from sklearn.model_selection import train_test_split

    train_f, val_f, test_f = fractions
    if min(fractions) < 0 or abs(sum(fractions) - 1.0) > 1e-6 or test_f <= 0 or train_f <= 0:
        raise ValueError(
            f"split fractions must be >= 0, sum to 1, with train and test > 0: {fractions}"
        )
    idx = torch.arange(len(y)).numpy()
    labels = y.numpy()
    rest, test = train_test_split(idx, test_size=test_f, stratify=labels, random_state=seed)
    if val_f > 0:
        train, val = train_test_split(
            rest, test_size=val_f / (train_f + val_f), stratify=labels[rest], random_state=seed
        )
    else:
        train, val = rest, rest[:0]
    return (torch.as_tensor(train), torch.as_tensor(val), torch.as_tensor(test))


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


__all__ = ["DigitsDataModule", "load_digits_tensors", "stratified_split"]

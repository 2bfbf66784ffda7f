"""The embedded default data set: scikit-learn's bundled handwritten digits (no download ever).

1,797 grey 8×8 images of the digits 0–9 (UCI "Optical Recognition of Handwritten Digits"),
shipped inside scikit-learn. Pixels (0–16) are scaled to [0, 1]; the split into train,
validation and test is stratified and seeded, so every run sees the same examples. The tensors
here are plain PyTorch; :class:`~advtrain.data.datamodules.DigitsDataModule` is their Lightning
edge.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from advtrain.lazy import lazy_attribute


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


def __getattr__(name: str) -> Any:
    # The Lightning data module, importable from here as before (imported on first use).
    return lazy_attribute(__name__, name, {"DigitsDataModule": "advtrain.data.datamodules"})


__all__ = ["load_digits_tensors", "stratified_split"]

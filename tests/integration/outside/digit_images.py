"""A torchvision-style image dataset of scikit-learn's 8x8 digits (no download).

Served like ``torchvision.datasets.MNIST``: ``dataset[i]`` is ``(transform(PIL image),
int label)``, images stored as uint8 grey levels.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

#: Mean and standard deviation of the digits' pixels in [0, 1] (as MNIST's 0.1307, 0.3081).
DIGITS_MEAN = 0.3053
DIGITS_STD = 0.3759


def load_images() -> tuple[np.ndarray, np.ndarray]:
    """All 1,797 digits as uint8 images ``(N, 8, 8)`` in 0..255 and int64 labels."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.round(bunch.images * 255.0 / 16.0).astype(np.uint8)
    return images, bunch.target.astype(np.int64)


class DigitImages(Dataset):
    """The digits, one split of them (``train`` = the first 1,500, else the rest)."""

    def __init__(self, train: bool = True, transform: Callable[[Any], Any] | None = None) -> None:
        images, labels = load_images()
        cut = slice(0, 1500) if train else slice(1500, None)
        self.data, self.targets = images[cut], labels[cut]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        img = Image.fromarray(self.data[index], mode="L")
        if self.transform is not None:
            img = self.transform(img)
        return img, int(self.targets[index])

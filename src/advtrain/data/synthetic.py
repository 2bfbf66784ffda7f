"""Synthetic image classification data of any shape: seeded, learnable, no download.

Every class ``c`` has a smooth prototype image ``m_c`` (a random low-resolution pattern in
``[0.2, 0.8]``, upsampled bilinearly to the full resolution); an example of class ``c`` is
``clip(m_c + noise·N(0, I), 0, 1)``. Classes are balanced and the whole set is a function of
``data_seed`` only, so a recipe written for MNIST (``1×28×28``) or CIFAR-10 (``3×32×32``) can be
smoke-tested end to end with ``data=synthetic data.input_shape=[3,32,32]`` — the model, the
training method and the evaluation see tensors of the recipe's shape, and a short run already
learns something (a linear classifier separates the prototypes; ``noise`` sets how hard it is).

It is not a benchmark: figures measured on it say nothing about MNIST or CIFAR-10. The tensors
here are plain PyTorch; :class:`~advtrain.data.datamodules.SyntheticDataModule` is their
Lightning edge.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from advtrain.lazy import lazy_attribute
from advtrain.validation import check_positive_int

#: Side of the low-resolution grid each prototype is drawn on (upsampled to the image size).
PROTOTYPE_GRID = 4


def check_input_shape(input_shape: Sequence[int]) -> tuple[int, int, int]:
    """Validates ``(channels, height, width)`` (three integers >= 1).

    Raises:
        TypeError: If ``input_shape`` is not a sequence of integers.
        ValueError: If it does not have three entries, or one is below 1.
    """
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
    c, h, w = check_input_shape(input_shape)
    num_classes = check_positive_int(num_classes, "num_classes", minimum=2)
    if isinstance(noise, bool) or not isinstance(noise, (int, float)) or not noise >= 0:
        raise ValueError(f"noise must be a number >= 0 (e.g. 0.3), got {noise!r}")
    gen = torch.Generator().manual_seed(int(seed))
    grid = torch.rand(num_classes, c, min(h, PROTOTYPE_GRID), min(w, PROTOTYPE_GRID), generator=gen)
    prototypes = 0.2 + 0.6 * F.interpolate(grid, size=(h, w), mode="bilinear", align_corners=False)
    y = (torch.arange(n) % num_classes)[torch.randperm(n, generator=gen)]
    x = prototypes[y] + float(noise) * torch.randn(n, c, h, w, generator=gen)
    return x.clamp_(0.0, 1.0).contiguous(), y


def __getattr__(name: str) -> Any:
    # The Lightning data module, importable from here as before (imported on first use).
    return lazy_attribute(__name__, name, {"SyntheticDataModule": "advtrain.data.datamodules"})


__all__ = ["check_input_shape", "make_synthetic"]

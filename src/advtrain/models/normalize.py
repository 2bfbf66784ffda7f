"""Input normalisation as the model's first layer, so epsilon stays in input (pixel) units."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel, as a layer of the model.

    Attacks and certificates work in the input domain declared by ``bounds`` (e.g. [0, 1]); putting
    the normalisation inside the model keeps ``eps=8/255`` meaning eight grey levels. It is an
    affine map, so interval and linear bound propagation pass through it exactly.

    Args:
        mean: Per-channel means (one value for grey images).
        std: Per-channel standard deviations, all ``> 0``.
    """

    def __init__(self, mean: Sequence[float] | float, std: Sequence[float] | float) -> None:
        super().__init__()
        mean_t = torch.as_tensor(mean, dtype=torch.float32).flatten()
        std_t = torch.as_tensor(std, dtype=torch.float32).flatten()
        if mean_t.numel() != std_t.numel():
            raise ValueError(f"mean and std must have the same length, got {mean_t} and {std_t}")
        if not bool((std_t > 0).all()):
            raise ValueError(f"std must be > 0, got {std_t.tolist()}")
        self.register_buffer("mean", mean_t.view(1, -1, 1, 1))
        self.register_buffer("std", std_t.view(1, -1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        mean, std = self.mean, self.std
        if x.dim() != 4:  # flat inputs (MLP: (batch, features)) or sequences (batch, channels, L)
            shape = (1, -1, *([1] * (x.dim() - 2)))
            mean, std = mean.view(shape), std.view(shape)
        return (x - mean) / std

    def extra_repr(self) -> str:
        return f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}"
